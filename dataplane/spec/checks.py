"""Checks: what a scenario says should happen, written once for every way of running it.

A check names a client (a pod, node or outside host), a destination (a pod, node, host, service
or lab IP) and port, and expects one outcome per request:
  reachable   a server answered (optionally: only these backends; the server saw this source)
  refused     TCP RST or ICMP port unreachable
  dropped     no answer (time-out), or a router's ICMP network/host unreachable
The parse step resolves names to addresses, so a runner only sends and compares; `evaluate` is the
one judge of results, whichever lab (live or, later, simulated) produced them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from ipaddress import IPv4Address

from .topology import TopologySpec
from .table import PROTOCOLS, ServiceTable
from .yamldoc import Doc

OUTCOMES = ("reachable", "refused", "dropped")
CLIENT_KINDS = ("pod", "node", "host")
TARGET_KINDS = ("pod", "node", "host", "service")


@dataclass(frozen=True)
class CheckSpec:
    name: str
    client: str                     # the pod, node or host that sends
    target: str                     # as written: "pod/web-1", "service/web", "10.0.1.5"
    ip: IPv4Address                 # where the client sends
    port: int
    protocol: str
    expect: str
    backends: tuple[str, ...] | None = None   # names allowed to answer (None: any)
    source: IPv4Address | None = None         # the source the server must see (None: any)
    source_label: str = ""
    requests: int = 1
    timeout: float = 2.0
    interval: float = 0.0                     # seconds between requests
    source_port: int | None = None            # every request from this port (one UDP flow, ...)
    same_backend: bool = False                # all requests answered by one backend (affinity)
    every_backend: bool = False               # every listed backend answered at least once
    min_backends: int | None = None           # at least this many backends answered
    max_share: float | None = None            # no backend answered more than this fraction
    capture: bool = False                     # verify the translation on the wire (judge/capture.py)
    http_get: str | None = None               # one GET of this path per request, instead of netexec's
    status: int | None = None                 # with http_get: the HTTP status every answer must have
    body_contains: str | None = None          # with http_get: text every answer's body must contain
    half_close: bool = False                  # TCP: shut the sending side before reading the answers
    delay: float = 0.0                        # seconds the server waits before its first answer
    size: int = 0                             # requests and answers padded to this many bytes
    hold: "HoldSpec | None" = None            # a connection held open across the check
    where: str = ""


@dataclass(frozen=True)
class HoldSpec:
    """A TCP connection opened before a check's requests, held while they run, then used once: it
    must still be answered by its own server (a node process's connection that a NAT flow must
    never take over, say)."""
    client: str                     # pod, node or host that holds it
    target: str                     # as written
    ip: IPv4Address
    port: int
    source_port: int | None
    server: str | None              # the object that must answer, when the target is one



def _ref(doc: Doc, key: str, kinds, topology: TopologySpec, services: ServiceTable):
    value = doc.take_str(key, expect=f"a reference such as pod/NAME ({', '.join(k + '/NAME' for k in kinds)})")
    return lookup(value, lambda message: doc.fail(key, message), kinds, topology, services)


def lookup(value: str, fail, kinds, topology: TopologySpec, services: ServiceTable):
    """A reference (pod/NAME, ..., or an IP where services are allowed) -> (kind, name, object);
    `fail(message)` raises the error where the reference was written."""
    kind, sep, name = value.partition("/")
    if not sep:
        if "service" in kinds:
            try:
                ip = IPv4Address(value)
            except ValueError:
                fail(f"expected KIND/NAME ({', '.join(k + '/NAME' for k in kinds)}) or an IPv4 "
                     f"address, got {value!r}")
            return "ip", value, ip
        fail(f"expected KIND/NAME ({', '.join(k + '/NAME' for k in kinds)}), got {value!r}")
    if kind not in kinds:
        fail(f"unknown kind {kind!r} in {value!r}; expected one of: {', '.join(kinds)}")
    if kind == "service":
        svc = services.get(name)
        if svc is None:
            fail(f"no service named {name!r}" +
                 (f" (services: {', '.join(s.key for s in services)})" if len(services) else ""))
        return kind, svc.key, svc
    groups = {"pod": topology.pods, "node": topology.nodes, "host": topology.hosts}
    obj = next((o for o in groups[kind] if o.name == name), None)
    if obj is None:
        names = ", ".join(o.name for o in groups[kind]) or "none"
        fail(f"no {kind} named {name!r} ({kind}s: {names})")
    return kind, name, obj


def _lab_address(topology: TopologySpec, ip: IPv4Address, services: ServiceTable) -> bool:
    return any(ip in net for net in (topology.cluster_cidr, topology.service_cidr,
                                     topology.node_cidr, topology.outside_cidr)) or any(
        ip in (*s.load_balancer_ips, *s.external_ips) for s in services)


def parse_check(item: Doc, topology: TopologySpec, services: ServiceTable, names: set) -> CheckSpec:
    """One check, resolved against the topology and the services as they are at that step."""
    ckind, cname, cobj = _ref(item, "from", CLIENT_KINDS, topology, services)
    target = item.value.get("to")
    ip, port, protocol = _destination(item, topology, services)
    expect = item.take_str("expect", "reachable", choices=OUTCOMES)
    # read in this order, so that a check's first error is the one it always was
    fields = dict(expect=expect, backends=_backends(item, topology), **_source(item, cobj, cname, topology, services),
                  **_pacing(item))
    fields.update(_answers(item))
    _check_applies(item, fields)
    fields.update(_shape(item, protocol, fields["timeout"]))
    hold = _hold(item.sub("holdConnection"), topology, services) if item.has("holdConnection") else None
    name = item.take_str("name", f"{ckind}/{cname} -> {target}:{port}/{protocol} {expect}")
    if name in names:
        item.fail("name", f"duplicate check name {name!r}")
    names.add(name)
    item.done()
    return CheckSpec(name=name, client=cname, target=target, ip=ip, port=port, protocol=protocol, hold=hold,
                     where=item.where(), **fields)


def _destination(item: Doc, topology: TopologySpec, services: ServiceTable) -> tuple[IPv4Address, int, str]:
    """Where the client sends: (address, port, protocol). A service's port defaults to its only
    one, and a port it does not serve is an error unless the check expects it unanswered."""
    tkind, tname, tobj = _ref(item, "to", TARGET_KINDS, topology, services)
    protocol = item.take_str("protocol", None, choices=PROTOCOLS)
    if tkind != "service":
        ip = tobj if tkind == "ip" else tobj.ip
        if tkind == "ip" and not _lab_address(topology, ip, services):
            item.fail("to", f"{ip} is not a lab address (cluster, service, node or outside "
                            f"network, or a LoadBalancer/external IP): checks never send outside the lab")
        port = item.take_int("port", lo=1, hi=65535, expect="a port number from 1 to 65535")
        return ip, port, protocol or "TCP"
    if not item.has("port"):
        if len(tobj.ports) != 1:
            item.fail(None, f"missing field 'port': service {tname} has several ports")
        return tobj.cluster_ip, tobj.ports[0].port, protocol or tobj.ports[0].protocol
    port = item.take_int("port", lo=1, hi=65535)
    sp = next((p for p in tobj.ports if p.port == port and (protocol in (None, p.protocol))), None)
    if sp is None and item.value.get("expect", "reachable") == "reachable":
        item.fail("port", f"service {tname} serves no port {port}" + (f"/{protocol}" if protocol else "") +
                  f" (ports: {', '.join(f'{p.port}/{p.protocol}' for p in tobj.ports)})")
    return tobj.cluster_ip, port, protocol or (sp.protocol if sp else "TCP")


def _backends(item: Doc, topology: TopologySpec) -> tuple[str, ...] | None:
    if not item.has("backends"):
        return None
    out = []
    for b in item.items("backends"):
        bname = b.value if not isinstance(b, Doc) else None
        if not isinstance(bname, str) or topology.find(bname) is None:
            b.fail(f"expected the name of a pod, node or host in the topology, got {bname!r}")
        out.append(bname)
    return tuple(out)


def _source(item: Doc, client, client_name: str, topology: TopologySpec, services: ServiceTable) -> dict:
    """The source the server must see: the client's own address, an object's or an address."""
    if not item.has("source"):
        return {"source": None, "source_label": ""}
    text = item.take_str("source", expect="client, KIND/NAME or an IPv4 address")
    if text == "client":
        return {"source": client.ip, "source_label": f"client {client_name}"}
    if "/" in text:
        _, _, obj = _ref(item, "source", CLIENT_KINDS, topology, services)
        return {"source": obj.ip, "source_label": text}
    try:
        return {"source": IPv4Address(text), "source_label": text}
    except ValueError:
        item.fail("source", f"expected client, KIND/NAME or an IPv4 address, got {text!r}")


def _answers(item: Doc) -> dict:
    """What the answers must show: which backends, how spread, what HTTP."""
    out = dict(same_backend=item.take_bool("sameBackend", False), every_backend=item.take_bool("everyBackend", False),
               min_backends=item.take_int("minBackends", None, lo=1, hi=1000))
    share = item.take("maxShare", (int, float), None, "a fraction such as 0.45")
    if share is not None and not 0 < share <= 1:
        item.fail("maxShare", f"expected a fraction from 0 to 1, got {share}")
    return dict(out, max_share=share, capture=item.take_bool("capture", False),
                http_get=item.take_str("httpGet", None, expect="a path such as /healthz"),
                status=item.take_int("status", None, lo=100, hi=599, expect="an HTTP status such as 200"),
                body_contains=item.take_str("bodyContains", None))


def _seconds(item: Doc, key: str, default, hi: float, expect: str, lo_open: bool = False) -> float:
    value = item.take(key, (int, float), default, expect)
    if not (0 < value if lo_open else 0 <= value) or value > hi:
        item.fail(key, f"expected seconds from 0 to {hi:g}, got {value}")
    return float(value)


def _pacing(item: Doc) -> dict:
    """How the client sends: how many requests, how fast, from which port."""
    return dict(requests=item.take_int("requests", 1, lo=1, hi=100000),
                timeout=_seconds(item, "timeout", 2.0, 60, "seconds, such as 2 or 0.5", lo_open=True),
                interval=_seconds(item, "interval", 0, 600, "seconds between requests, such as 1.5"),
                source_port=item.take_int("sourcePort", None, lo=1024, hi=65535, expect="a port from 1024 to 65535"))


def _shape(item: Doc, protocol: str, timeout: float) -> dict:
    """What each exchange looks like: half-closed, answered late, padded."""
    half_close = item.take_bool("halfClose", False)
    delay = _seconds(item, "delay", 0, 600, "seconds the server waits before answering, such as 12")
    if delay and delay >= timeout:
        item.fail("delay", f"the server answers after {delay:g} s, so `timeout` ({timeout:g} s) must be longer")
    size = item.take_int("size", 0, lo=0, hi=60000, expect="bytes from 0 to 60000")
    if half_close and protocol != "TCP":
        item.fail("halfClose", "only applies to TCP")
    if item.has("httpGet"):
        for key in ("halfClose", "delay", "size"):
            if item.has(key):
                item.fail(key, "does not apply with httpGet (one plain GET)")
    return dict(half_close=half_close, delay=delay, size=size)


def _check_applies(item: Doc, f: dict) -> None:
    """Fields that only make sense together."""
    if (f["status"] is not None or f["body_contains"] is not None) and f["http_get"] is None:
        item.fail("status" if f["status"] is not None else "bodyContains", "only applies with httpGet")
    if f["http_get"] is not None and (f["backends"] or item.has("source") or f["capture"]):
        item.fail("httpGet", "httpGet checks an HTTP answer: backends, source and capture do not apply")
    if f["expect"] != "reachable":
        for key in ("backends", "source", "sameBackend", "everyBackend", "minBackends", "maxShare", "capture"):
            if item.has(key):
                item.fail(key, f"{key} only applies when expect is reachable (not {f['expect']})")
    if f["every_backend"] and f["backends"] is None:
        item.fail("everyBackend", "everyBackend needs the list of backends")
    _check_chance(item, f)


# A check that asks for several backends can fail by chance alone when each request picks its
# backend at random (kube-proxy's iptables mode does; so do the others, by hash of a random source
# port). Such a check is refused unless that chance is below one run in CHANCE_RUNS.
CHANCE_RUNS = 100_000


def chance_of_too_few(backends: int, wanted: int, requests: int) -> float:
    """An upper bound on the chance that `requests` uniform random picks among `backends` show fewer
    than `wanted` distinct ones: every pick falls in some set of wanted-1 backends (union bound;
    exact for wanted == backends == 2)."""
    if wanted <= 1:
        return 0.0
    return math.comb(backends, wanted - 1) * ((wanted - 1) / backends) ** requests


def _check_chance(item: Doc, f: dict) -> None:
    if not f["backends"] or not (f["every_backend"] or f["min_backends"]):
        return
    k = len(f["backends"])
    key = "everyBackend" if f["every_backend"] else "minBackends"
    wanted = k if f["every_backend"] else f["min_backends"]
    if wanted > k:
        item.fail("minBackends", f"{wanted} backends cannot answer when `backends` lists {k}")
    chance = chance_of_too_few(k, wanted, f["requests"])
    if chance * CHANCE_RUNS > 1:
        needed = next(n for n in range(f["requests"], 100_001) if chance_of_too_few(k, wanted, n) * CHANCE_RUNS <= 1)
        item.fail(key, f"with {f['requests']} requests picked at random among {k} backends, {wanted} of them "
                       f"answer only by luck: the check would fail in about 1 run of {round(1 / chance):,}; "
                       f"ask for at least {needed} requests (1 failure in {CHANCE_RUNS:,} runs)")


def _hold(doc: Doc, topology: TopologySpec, services: ServiceTable) -> HoldSpec:
    kind, name, obj = _ref(doc, "from", CLIENT_KINDS, topology, services)
    tkind, tname, tobj = _ref(doc, "to", TARGET_KINDS, topology, services)
    port = doc.take_int("port", lo=1, hi=65535, expect="a port number from 1 to 65535")
    sport = doc.take_int("sourcePort", None, lo=1024, hi=65535, expect="a port from 1024 to 65535")
    if tkind == "service" and not any(p.port == port and p.protocol == "TCP" for p in tobj.ports):
        doc.fail("port", f"service {tname} serves no TCP port {port}")
    doc.done()
    if tkind == "service":      # any of its endpoints may answer
        return HoldSpec(client=name, target=f"service/{tname}", ip=tobj.cluster_ip, port=port,
                        source_port=sport, server=None)
    return HoldSpec(client=name, target=f"{tkind}/{tname}", ip=tobj.ip, port=port, source_port=sport,
                    server=tname)




