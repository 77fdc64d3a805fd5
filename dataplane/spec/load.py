"""Background load: scenario steps that keep requests flowing across later steps.

    - load: {name: web, from: [pod/client], to: service/web, port: 80, rate: 20}
    - update: ...            # the cluster changes while the load runs
    - sleep: 2
    - endLoad: {name: web, maxFailed: 0}

`load` starts, on each client, a stream of requests at a fixed rate, every one a new flow (a new
TCP connection, or a new UDP socket), addressed as a check's would be. `endLoad` stops it and is
judged like a check: it passes when no more than `maxFailed` requests failed (refused, dropped or
answered wrongly), and its result lists the failures with their times. A load must end before
the scenario does.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from .checks import CLIENT_KINDS, _destination, _ref, _seconds
from .table import ServiceTable
from .topology import TopologySpec
from .yamldoc import Doc

MAX_RATE = 500            # requests per second per client: the lab's Python generator keeps up to this


@dataclass(frozen=True)
class LoadSpec:
    """A background load: from each client, `rate` new requests per second to ip:port."""
    name: str
    clients: tuple[str, ...]
    target: str                     # as written
    ip: IPv4Address
    port: int
    protocol: str
    rate: float
    timeout: float
    where: str = ""                 # file:line
    field: str = ""                 # checks[N].load


@dataclass(frozen=True)
class EndLoad:
    """Stop a load and judge it."""
    name: str                       # the load's
    check: str                      # the result's name
    max_failed: int
    load: LoadSpec
    where: str = ""


def parse_load(doc: Doc, topology: TopologySpec, services: ServiceTable, running: dict) -> LoadSpec:
    """A load step; `running` (name -> LoadSpec) holds the loads started and not yet ended."""
    name = doc.take_str("name", expect="a name that endLoad refers to")
    if name in running:
        doc.fail("name", f"a load named {name!r} is already running (started at {running[name].where})")
    clients = []
    if isinstance(doc.value.get("from"), list):
        items = doc.items("from")
        if not items:
            doc.fail("from", "expected at least one client")
        for item in items:
            clients.append(_ref(item.as_doc("from") if not isinstance(item, Doc) else item, "from",
                                CLIENT_KINDS, topology, services)[1])
    else:
        clients.append(_ref(doc, "from", CLIENT_KINDS, topology, services)[1])
    if len(set(clients)) != len(clients):
        doc.fail("from", "a client is listed twice")
    ip, port, protocol = _destination(doc, topology, services)
    rate = doc.take("rate", (int, float), expect=f"requests per second per client, from 1 to {MAX_RATE}")
    if not 1 <= rate <= MAX_RATE:
        doc.fail("rate", f"expected requests per second per client, from 1 to {MAX_RATE}, got {rate}")
    timeout = _seconds(doc, "timeout", 1.0, 10, "seconds a request may take, such as 1", lo_open=True)
    doc.done()
    spec = LoadSpec(name=name, clients=tuple(clients), target=str(doc.value.get("to")), ip=ip, port=port,
                    protocol=protocol, rate=float(rate), timeout=timeout, where=doc.where(),
                    field=doc.field())
    running[name] = spec
    return spec


def parse_end(doc: Doc, running: dict, names: set) -> EndLoad:
    name = doc.take_str("name", expect="the name of a running load")
    if name not in running:
        doc.fail("name", f"no running load named {name!r}" +
                 (f" (running: {', '.join(sorted(running))})" if running else " (no load is running here)"))
    load = running.pop(name)        # ended, even if the rest of this step is in error
    max_failed = doc.take_int("maxFailed", 0, lo=0, hi=1_000_000, expect="a number of requests, 0 or more")
    check = f"load {name}"
    if check in names:
        doc.fail("name", f"duplicate check name {check!r}")
    names.add(check)
    doc.done()
    return EndLoad(name=name, check=check, max_failed=max_failed, load=load, where=doc.where())
