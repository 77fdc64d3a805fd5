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

from .checks import CLIENT_KINDS, _destination, _seconds, lookup
from .table import ServiceTable
from .topology import TopologySpec
from .yamldoc import Doc, Scalar

# requests per second per client: one generator keeps 500/s on this project's 2-vCPU VM (TCP and
# UDP to the lab's netexec over loopback, 5 s: none skipped, at most 4 ms late; 2026-11-30)
MAX_RATE = 500
MAX_IN_FLIGHT = 2000      # rate x timeout: the sockets one client may hold at once through an outage


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


class Loads:
    """The loads of a scenario as its steps are read: which are running, which names were used.
    A load step in error still counts as started once its name is read (None), so its endLoad is
    not a second error."""

    def __init__(self):
        self.running: dict = {}         # name -> LoadSpec, or None for a load step in error
        self.used: dict = {}            # every load name -> where it was started
        self.unnamed_errors = 0         # load steps in error before their name was read
        self.end_errors = 0             # endLoad steps in error

    def never_ended(self) -> list:
        """Loads still running at the end of the steps, unless an error elsewhere may be why."""
        if self.unnamed_errors or self.end_errors:
            return []
        return [spec for spec in self.running.values() if spec is not None]


def parse_load(doc: Doc, topology: TopologySpec, services: ServiceTable, loads: Loads) -> LoadSpec:
    loads.unnamed_errors += 1
    name = doc.take_str("name", expect="a name that endLoad refers to")
    loads.unnamed_errors -= 1
    if name in loads.used:
        loads.running.setdefault(name, None)    # its endLoad then ends this one, silently
        doc.fail("name", f"load names must be unique in a scenario: a load {name!r} was started at {loads.used[name]}")
    loads.used[name] = doc.where()
    loads.running[name] = None
    clients = []
    if isinstance(doc.value.get("from"), list):
        items = doc.items("from")
        if not items:
            doc.fail("from", "expected at least one client")
        for item in items:
            fail = item.fail if isinstance(item, Scalar) else (lambda m, item=item: item.fail(None, m))
            if not isinstance(item.value, str):
                fail(f"expected a reference such as pod/NAME, got {item.value!r}")
            clients.append(lookup(item.value, fail, CLIENT_KINDS, topology, services)[1])
    else:
        clients.append(lookup(doc.take_str("from", expect="a client such as pod/NAME, or a list of them"),
                              lambda m: doc.fail("from", m), CLIENT_KINDS, topology, services)[1])
    if len(set(clients)) != len(clients):
        doc.fail("from", "a client is listed twice")
    ip, port, protocol = _destination(doc, topology, services)
    rate = doc.take("rate", (int, float), expect=f"requests per second per client, from 1 to {MAX_RATE}")
    if not 1 <= rate <= MAX_RATE:
        doc.fail("rate", f"expected requests per second per client, from 1 to {MAX_RATE}, got {rate}")
    timeout = _seconds(doc, "timeout", 1.0, 10, "seconds a request may take, such as 1", lo_open=True)
    if rate * timeout > MAX_IN_FLIGHT:
        doc.fail("timeout", f"rate x timeout is {rate * timeout:g} requests in flight per client through an "
                            f"outage; at most {MAX_IN_FLIGHT} (lower the rate or the timeout)")
    doc.done()
    spec = LoadSpec(name=name, clients=tuple(clients), target=str(doc.value.get("to")), ip=ip, port=port,
                    protocol=protocol, rate=float(rate), timeout=timeout, where=doc.where(),
                    field=doc.field())
    loads.running[name] = spec
    return spec


def parse_end(doc: Doc, loads: Loads, names: set) -> EndLoad | None:
    """An endLoad step; None when the load it ends was itself in error (reported there)."""
    loads.end_errors += 1
    name = doc.take_str("name", expect="the name of a running load")
    if name not in loads.running:
        if loads.unnamed_errors:
            loads.end_errors -= 1
            return None             # maybe the load step in error above: that error stands alone
        running = sorted(loads.running)
        doc.fail("name", f"no running load named {name!r}" +
                 (f" (running: {', '.join(running)})" if running else " (no load is running here)"))
    load = loads.running.pop(name)  # ended, even if the rest of this step is in error
    loads.end_errors -= 1
    max_failed = doc.take_int("maxFailed", 0, lo=0, hi=1_000_000, expect="a number of requests, 0 or more")
    check = f"load {name}"
    if load is not None and check in names:
        doc.fail("name", f"duplicate check name {check!r} (a check of that name comes earlier)")
    names.add(check)
    doc.done()
    if load is None:
        return None
    return EndLoad(name=name, check=check, max_failed=max_failed, load=load, where=doc.where())
