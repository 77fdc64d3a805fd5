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

import json
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from .lab.topology import TopologySpec
from .model import PROTOCOLS, ServiceTable
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
    capture: bool = False                     # verify the translation on the wire (see capture.py)
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


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    outcomes: dict = field(default_factory=dict)    # outcome -> count
    answered: dict = field(default_factory=dict)    # backend name -> count
    sources: dict = field(default_factory=dict)     # source seen (ip) -> count

    def to_json(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail,
                "outcomes": self.outcomes, "backends": self.answered, "sources": self.sources}


def _ref(doc: Doc, key: str, kinds, topology: TopologySpec, services: ServiceTable):
    value = doc.take_str(key, expect=f"a reference such as pod/NAME ({', '.join(k + '/NAME' for k in kinds)})")
    kind, sep, name = value.partition("/")
    if not sep:
        if "service" in kinds:
            try:
                ip = IPv4Address(value)
            except ValueError:
                doc.fail(key, f"expected KIND/NAME ({', '.join(k + '/NAME' for k in kinds)}) or an IPv4 "
                              f"address, got {value!r}")
            return "ip", value, ip
        doc.fail(key, f"expected KIND/NAME ({', '.join(k + '/NAME' for k in kinds)}), got {value!r}")
    if kind not in kinds:
        doc.fail(key, f"unknown kind {kind!r} in {value!r}; expected one of: {', '.join(kinds)}")
    if kind == "service":
        svc = services.get(name)
        if svc is None:
            doc.fail(key, f"no service named {name!r}" +
                     (f" (services: {', '.join(s.key for s in services)})" if len(services) else ""))
        return kind, svc.key, svc
    groups = {"pod": topology.pods, "node": topology.nodes, "host": topology.hosts}
    obj = next((o for o in groups[kind] if o.name == name), None)
    if obj is None:
        names = ", ".join(o.name for o in groups[kind]) or "none"
        doc.fail(key, f"no {kind} named {name!r} ({kind}s: {names})")
    return kind, name, obj


def _lab_address(topology: TopologySpec, ip: IPv4Address, services: ServiceTable) -> bool:
    return any(ip in net for net in (topology.cluster_cidr, topology.service_cidr,
                                     topology.node_cidr, topology.outside_cidr)) or any(
        ip in (*s.load_balancer_ips, *s.external_ips) for s in services)


def parse_check(item: Doc, topology: TopologySpec, services: ServiceTable, names: set) -> CheckSpec:
    """One check, resolved against the topology and the services as they are at that step."""
    ckind, cname, cobj = _ref(item, "from", CLIENT_KINDS, topology, services)
    tkind, tname, tobj = _ref(item, "to", TARGET_KINDS, topology, services)
    target = item.value["to"]
    protocol = item.take_str("protocol", None, choices=PROTOCOLS)
    if tkind == "service":
        ip = tobj.cluster_ip
        if item.has("port"):
            port = item.take_int("port", lo=1, hi=65535)
            sp = next((p for p in tobj.ports if p.port == port and (protocol in (None, p.protocol))), None)
            if sp is None and item.value.get("expect", "reachable") == "reachable":
                item.fail("port", f"service {tname} serves no port {port}" +
                          (f"/{protocol}" if protocol else "") +
                          f" (ports: {', '.join(f'{p.port}/{p.protocol}' for p in tobj.ports)})")
        else:
            if len(tobj.ports) != 1:
                item.fail(None, f"missing field 'port': service {tname} has several ports")
            sp = tobj.ports[0]
            port = sp.port
        protocol = protocol or (sp.protocol if sp else "TCP")
    else:
        ip = tobj if tkind == "ip" else tobj.ip
        if tkind == "ip" and not _lab_address(topology, ip, services):
            item.fail("to", f"{ip} is not a lab address (cluster, service, node or outside "
                            f"network, or a LoadBalancer/external IP): checks never send outside the lab")
        port = item.take_int("port", lo=1, hi=65535, expect="a port number from 1 to 65535")
        protocol = protocol or "TCP"
    expect = item.take_str("expect", "reachable", choices=OUTCOMES)
    backends = None
    if item.has("backends"):
        backends = []
        for b in item.items("backends"):
            bname = b.value if not isinstance(b, Doc) else None
            if not isinstance(bname, str) or topology.find(bname) is None:
                b.fail(f"expected the name of a pod, node or host in the topology, got {bname!r}")
            backends.append(bname)
        backends = tuple(backends)
    source, source_label = None, ""
    if item.has("source"):
        text = item.take_str("source", expect="client, KIND/NAME or an IPv4 address")
        if text == "client":
            source, source_label = cobj.ip, f"client {cname}"
        elif "/" in text:
            skind, sname, sobj = _ref(item, "source", CLIENT_KINDS, topology, services)
            source, source_label = sobj.ip, text
        else:
            try:
                source, source_label = IPv4Address(text), text
            except ValueError:
                item.fail("source", f"expected client, KIND/NAME or an IPv4 address, got {text!r}")
    requests = item.take_int("requests", 1, lo=1, hi=100000)
    timeout = item.take("timeout", (int, float), 2.0, "seconds, such as 2 or 0.5")
    if not 0 < timeout <= 60:
        item.fail("timeout", f"expected seconds from 0 to 60, got {timeout}")
    interval = item.take("interval", (int, float), 0, "seconds between requests, such as 1.5")
    if not 0 <= interval <= 600:
        item.fail("interval", f"expected seconds from 0 to 600, got {interval}")
    sport = item.take_int("sourcePort", None, lo=1024, hi=65535, expect="a port from 1024 to 65535")
    same = item.take_bool("sameBackend", False)
    every = item.take_bool("everyBackend", False)
    min_b = item.take_int("minBackends", None, lo=1, hi=1000)
    share = item.take("maxShare", (int, float), None, "a fraction such as 0.45")
    if share is not None and not 0 < share <= 1:
        item.fail("maxShare", f"expected a fraction from 0 to 1, got {share}")
    capture = item.take_bool("capture", False)
    http_get = item.take_str("httpGet", None, expect="a path such as /healthz")
    status = item.take_int("status", None, lo=100, hi=599, expect="an HTTP status such as 200")
    body_contains = item.take_str("bodyContains", None)
    if (status is not None or body_contains is not None) and http_get is None:
        item.fail("status" if status is not None else "bodyContains", "only applies with httpGet")
    if http_get is not None and (backends or item.has("source") or capture):
        item.fail("httpGet", "httpGet checks an HTTP answer: backends, source and capture do not apply")
    if expect != "reachable":
        for key in ("backends", "source", "sameBackend", "everyBackend", "minBackends", "maxShare", "capture"):
            if item.has(key):
                item.fail(key, f"{key} only applies when expect is reachable (not {expect})")
    if every and backends is None:
        item.fail("everyBackend", "everyBackend needs the list of backends")
    half_close = item.take_bool("halfClose", False)
    delay = item.take("delay", (int, float), 0, "seconds the server waits before answering, such as 12")
    if not 0 <= delay <= 600:
        item.fail("delay", f"expected seconds from 0 to 600, got {delay}")
    if delay and delay >= timeout:
        item.fail("delay", f"the server answers after {delay:g} s, so `timeout` ({timeout:g} s) must be longer")
    size = item.take_int("size", 0, lo=0, hi=60000, expect="bytes from 0 to 60000")
    if half_close and protocol != "TCP":
        item.fail("halfClose", "only applies to TCP")
    if http_get is not None:
        for key in ("halfClose", "delay", "size"):
            if item.has(key):
                item.fail(key, "does not apply with httpGet (one plain GET)")
    hold = _hold(item.sub("holdConnection"), topology, services) if item.has("holdConnection") else None
    name = item.take_str("name", f"{ckind}/{cname} -> {target}:{port}/{protocol} {expect}")
    if name in names:
        item.fail("name", f"duplicate check name {name!r}")
    names.add(name)
    item.done()
    return CheckSpec(name=name, client=cname, target=target, ip=ip, port=port, protocol=protocol,
                     expect=expect, backends=backends, source=source, source_label=source_label,
                     requests=requests, timeout=float(timeout), interval=float(interval),
                     source_port=sport, same_backend=same, every_backend=every, min_backends=min_b,
                     max_share=share, capture=capture, http_get=http_get, status=status,
                     body_contains=body_contains, half_close=half_close, delay=float(delay), size=size,
                     hold=hold, where=item.where())


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


def evaluate(spec: CheckSpec, results: list[dict], held: dict | None = None) -> CheckResult:
    """Judge a check from the client's per-request results (see dataplane.agent.client) and, with
    holdConnection, the result of the held connection's request after them."""
    outcomes = Counter(r["outcome"] for r in results)
    answered = Counter(r["hostname"] for r in results if r["outcome"] == "reachable" and r.get("hostname"))
    sources = Counter(r["clientip"].rsplit(":", 1)[0] for r in results
                      if r["outcome"] == "reachable" and r.get("clientip"))
    problems = []
    if len(results) != spec.requests:
        problems.append(f"{len(results)} results for {spec.requests} requests")
    wrong = {k: v for k, v in outcomes.items() if k != spec.expect}
    if wrong:
        errors = Counter(r["error"] for r in results if r["outcome"] != spec.expect and r.get("error"))
        problems.append(f"expected {spec.expect}, got " + ", ".join(f"{k} x{v}" for k, v in sorted(wrong.items()))
                        + (f" ({', '.join(f'{e} x{n}' for e, n in errors.items())})" if errors else ""))
    if spec.backends is not None:
        stray = {b: n for b, n in answered.items() if b not in spec.backends}
        if stray:
            problems.append(f"answered by {', '.join(sorted(stray))}, allowed: {', '.join(spec.backends)}")
    if spec.http_get is not None:
        answers = [r for r in results if r["outcome"] == "reachable"]
        if spec.status is not None:
            bad = Counter(r.get("status") for r in answers if r.get("status") != spec.status)
            if bad:
                problems.append(f"expected HTTP {spec.status}, got " + ", ".join(f"{s} x{n}" for s, n in bad.items()))
        if spec.body_contains is not None:
            missing = [r.get("body", "") for r in answers if spec.body_contains not in (r.get("body") or "")]
            if missing:
                problems.append(f"body without {spec.body_contains!r}: {missing[0][:120]}")
    if spec.same_backend and len(answered) > 1:
        problems.append(f"expected one backend for every request, got {_counts(answered)}")
    if spec.every_backend:
        silent = [b for b in spec.backends if b not in answered]
        if silent:
            problems.append(f"never answered: {', '.join(silent)}")
    if spec.min_backends is not None and len(answered) < spec.min_backends:
        problems.append(f"expected at least {spec.min_backends} backends, got {_counts(answered) or 'none'}")
    if spec.max_share is not None and results:
        top = max(answered.values(), default=0) / len(results)
        if top > spec.max_share:
            problems.append(f"one backend took {top:.0%} of requests (at most {spec.max_share:.0%}): "
                            f"{_counts(answered)}")
    if spec.source is not None:
        bad = {s: n for s, n in sources.items() if s != str(spec.source)}
        if bad:
            problems.append(f"server saw source {', '.join(sorted(bad))}, expected {spec.source} "
                            f"({spec.source_label})")
    if spec.hold is not None:
        h = spec.hold
        what = f"held connection {h.client} -> {h.target}:{h.port}"
        if held is None or held.get("outcome") != "reachable":
            error = (held or {}).get("error") or "no result"
            problems.append(f"{what} broke: {(held or {}).get('outcome', 'lost')} ({error})")
        elif h.server is not None and held.get("hostname") != h.server:
            problems.append(f"{what} answered by {held.get('hostname')}, not {h.server}")
    if problems:
        detail = "; ".join(problems)
    else:
        detail = f"{spec.expect} x{spec.requests}"
        errors = Counter(r["error"] for r in results if r.get("error"))
        if errors:
            detail += " (" + ", ".join(f"{e} x{n}" if n > 1 else e for e, n in sorted(errors.items())) + ")"
        if spec.http_get is not None:
            statuses = Counter(r.get("status") for r in results if r["outcome"] == "reachable")
            detail += ", HTTP " + ", ".join(f"{s} x{n}" if spec.requests > 1 else str(s) for s, n in statuses.items())
        if answered:
            detail += ", answered by " + ", ".join(f"{b} x{n}" if spec.requests > 1 else b
                                                   for b, n in sorted(answered.items()))
        if sources:
            detail += ", source seen " + ", ".join(sorted(sources))
        if spec.hold is not None:
            detail += f"; held connection from {spec.hold.client} still answered"
    return CheckResult(spec.name, not problems, detail, dict(outcomes), dict(answered), dict(sources))


def capture_targets(spec: CheckSpec, topology: TopologySpec) -> dict:
    """The objects a capture watches besides the client: name -> address of each possible server."""
    if spec.backends:
        names = spec.backends
    elif topology.find(spec.target.split("/", 1)[-1]) is not None and "/" in spec.target \
            and not spec.target.startswith("service/"):
        names = (spec.target.split("/", 1)[1],)
    else:
        names = tuple(p.name for p in topology.pods)
    return {n: topology.find(n).ip for n in names if n != spec.client}


def with_capture(result: CheckResult, spec: CheckSpec, topology: TopologySpec, frames: dict) -> CheckResult:
    """Add what the capture shows to a judged check."""
    from .capture import judge
    problems, summary = judge(spec, topology.find(spec.client).ip, capture_targets(spec, topology), frames)
    if problems:
        detail = "; ".join(problems) if result.passed else result.detail + "; " + "; ".join(problems)
        return CheckResult(result.name, False, detail, result.outcomes, result.answered, result.sources)
    return CheckResult(result.name, result.passed, f"{result.detail}; {summary}", result.outcomes,
                       result.answered, result.sources)


def _counts(answered: Counter | dict) -> str:
    return ", ".join(f"{b} x{n}" for b, n in sorted(answered.items()))


def client_argv(python: str, spec: CheckSpec) -> list[str]:
    argv = [python, "-m", "dataplane.agent.client", "--to", str(spec.ip), "--port", str(spec.port),
            "--protocol", spec.protocol, "--requests", str(spec.requests), "--timeout", str(spec.timeout)]
    if spec.interval:
        argv += ["--interval", str(spec.interval)]
    if spec.source_port:
        argv += ["--source-port", str(spec.source_port)]
    if spec.http_get:
        argv += ["--http-get", spec.http_get]
    if spec.half_close:
        argv.append("--half-close")
    if spec.delay:
        argv += ["--delay", f"{spec.delay:g}"]
    if spec.size:
        argv += ["--size", str(spec.size)]
    return argv


def hold_argv(python: str, spec: CheckSpec) -> list[str]:
    h = spec.hold
    argv = [python, "-m", "dataplane.agent.client", "--hold", "--to", str(h.ip), "--port", str(h.port),
            "--timeout", str(spec.timeout)]
    if h.source_port:
        argv += ["--source-port", str(h.source_port)]
    return argv


def parse_client_output(stdout: str) -> list[dict]:
    return json.loads(stdout)["results"]
