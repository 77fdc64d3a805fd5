"""One `dataplane trace` session: the readers a lab's backend has (its eBPF programs' events, or
netfilter's trace; the kernel's drops with --drops), started together, merged by time, filtered
to the nodes, pods and services asked for, and all of them stopped however the session ends."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ...errors import LabError
from ...lab import state
from ...spec.table import frontend_names

KUBE_PROXY_MODES = ("iptables", "nftables")        # iptables-legacy: no netfilter trace (netfilter.py)


@dataclass
class Selection:
    """What to show: nodes by name (every node when empty); with `pods`, events that touch one of
    their addresses; with `services`, events of one of them (named by the event, or touching one
    of its frontends or endpoints). Both: events that satisfy both."""
    nodes: list[str]
    pod_addresses: set = field(default_factory=set)
    on_nodes: set = field(default_factory=set)            # the nodes and the pods they run (kernel drops)
    services: set = field(default_factory=set)            # "namespace/name"
    service_addresses: set = field(default_factory=set)

    @property
    def addresses(self) -> set:
        """Every address the selection names (for readers that filter in the kernel)."""
        return self.pod_addresses | self.service_addresses

    def wants(self, e: dict) -> bool:
        if self.nodes and e.get("node") not in (self.on_nodes or self.nodes):
            return False
        touched = _addresses_of(e)
        if self.pod_addresses and not self.pod_addresses & touched:
            return False
        if self.services:
            if e.get("service"):            # an event that names its service is judged by the name
                return e["service"].split(":", 1)[0] in self.services
            return bool(self.service_addresses & touched)
        return True


def _addresses_of(e: dict) -> set:
    out = {e.get("src"), e.get("dst")}
    for side in ("before", "after", "packet"):
        t = e.get(side) or {}
        out |= {t.get("src"), t.get("dst")}
    return out - {None}


def select(record, table, nodes=(), pods=(), services=(), topology=None) -> Selection:
    """A Selection from names, each checked against the lab (a wrong one is an error naming what
    there is). With the lab's `topology`, a node's events include those of its pods' namespaces
    (the kernel's drops happen there too)."""
    all_nodes = sorted(o for o, r in record.roles.items() if r == "node")
    for n in nodes:
        if n not in all_nodes:
            raise LabError(f"lab {record.name} has no node named {n!r}; its nodes: {', '.join(all_nodes)}")
    all_pods = sorted(o for o, r in record.roles.items() if r == "pod")
    for p in pods:
        if p not in all_pods:
            raise LabError(f"lab {record.name} has no pod named {p!r}; its pods: {', '.join(all_pods)}")
    sel = Selection(list(nodes), {record.addresses[p] for p in pods})
    if topology is not None and nodes:
        sel.on_nodes = set(nodes) | {p.name for p in topology.pods if p.node in nodes}
    for s in services:
        svc = table.get(s)
        if svc is None:
            raise LabError(f"lab {record.name} has no service {s!r}; its services: "
                           f"{', '.join(sv.key for sv in table) or '(none)'}")
        sel.services.add(svc.key)
        sel.service_addresses |= {str(a) for a in (svc.cluster_ip, *svc.external_ips, *svc.load_balancer_ips)
                                  if a is not None}
        sel.service_addresses |= {str(ep.address) for ep in svc.endpoints}
        if any(sp.node_port for sp in svc.ports):        # its node ports: every node's address
            sel.service_addresses |= {record.addresses[n] for n, r in record.roles.items() if r == "node"}
    return sel


class TraceSession:
    """The lab's readers, as one stream. `drops`: the kernel's drops too."""

    def __init__(self, record, table, selection: Selection, drops: bool = False):
        self.record, self.selection, self.drops = record, selection, drops
        self.readers: list = []
        self.lock_fd = None
        nodes = selection.nodes or sorted(o for o, r in record.roles.items() if r == "node")
        self.node_ns = {n: record.objects[n] for n in nodes}
        node_ips = [record.addresses[n] for n in record.roles if record.roles[n] == "node"]
        self.frontends = frontend_names(table, node_ips)

    LOCK_WAIT = 1.0      # seconds to wait for the lab's trace lock: the agent's probe holds it a moment

    def _lock(self) -> None:
        """The lab's trace lock (one trace per lab: two readers of a ring buffer would split its
        events, two netfilter tracers would share one table), and the marker that tells the agent
        to clear up after a reader that dies without doing so."""
        import fcntl
        import os
        self.lock_fd = os.open(state.trace_lock_path(self.record.name), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.LOCK_WAIT
        while True:
            try:
                fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
            os.close(self.lock_fd)
            self.lock_fd = None
            raise LabError(f"lab {self.record.name} is being traced already (`dataplane trace` in another "
                           f"terminal): one trace per lab at a time")
        with open(state.trace_marker_path(self.record.name), "w") as f:
            f.write(f"{os.getpid()}\n")

    def _unlock(self) -> None:
        import os
        if self.lock_fd is None:
            return
        try:
            os.unlink(state.trace_marker_path(self.record.name))
        except FileNotFoundError:
            pass
        os.close(self.lock_fd)
        self.lock_fd = None

    def start(self) -> list[str]:
        """Start every reader; lines saying what is traced (for the terminal)."""
        backend = self.record.backend
        said = []
        try:
            self._lock()
            if backend == "ebpf":
                from .bpf import BpfTrace
                r = BpfTrace(self.record.name, self.node_ns, self.frontends)
                r.start()
                self.readers.append(r)
                said.append(f"eBPF trace events of {', '.join(self.node_ns)}")
            elif backend == "iptables-legacy":
                from .netfilter import LEGACY_REASON
                if not self.drops:
                    raise LabError(f"lab {self.record.name}: {LEGACY_REASON}")
                said.append("no netfilter trace on iptables-legacy (see docs/debugging.md)")
            elif backend in KUBE_PROXY_MODES:
                from .netfilter import NetfilterTrace
                match = {"addresses": sorted(self.selection.addresses)} if self.selection.addresses else None
                for node, ns in self.node_ns.items():
                    r = NetfilterTrace(ns, node, backend, match)
                    r.start()
                    self.readers.append(r)
                said.append(f"netfilter trace (nft monitor trace) of {', '.join(self.node_ns)}")
            elif not self.drops:
                raise LabError(f"lab {self.record.name} runs backend {backend!r}, which makes no decisions to "
                               f"trace; --drops shows the kernel's drops of its packets")
            if self.drops:
                from .drops import KernelDrops
                r = KernelDrops(_namespace_inodes(self.record))
                self.readers.append(r)
                said.append("kernel drops (skb:kfree_skb) in every namespace of the lab")
        except BaseException:
            self.close()
            raise
        return said

    def poll(self, timeout: float = 0.2) -> list[dict]:
        """The events that arrived, oldest first, those selected only. With the eBPF programs'
        own events, the kernel's record of their drops (TC_INGRESS, TC_EGRESS: a program said
        TC_ACT_SHOT) is left out: their event names the reason already."""
        out = []
        share = max(timeout / max(len(self.readers), 1), 0.01)
        ebpf = self.record.backend == "ebpf"
        for r in self.readers:
            out += [e for e in _poll(r, share)
                    if not (ebpf and e.get("source") == "drop" and e.get("reason") in ("TC_INGRESS", "TC_EGRESS"))]
        return sorted((e for e in out if self.selection.wants(e)), key=lambda e: e.get("time", 0.0))

    def lost(self) -> int:
        """Events the eBPF programs had no ring buffer room for since this trace started."""
        from .bpf import BpfTrace
        return sum(r.lost_since_start() for r in self.readers if isinstance(r, BpfTrace))

    def close(self) -> None:
        try:
            while self.readers:
                r = self.readers.pop()
                try:
                    r.close()
                except Exception:
                    pass      # the others are still closed: nothing of ours stays attached
        finally:
            self._unlock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _poll(reader, seconds: float) -> list[dict]:
    from .bpf import BpfTrace
    if isinstance(reader, BpfTrace):
        return reader.poll(int(seconds * 1000))
    from .drops import KernelDrops
    if isinstance(reader, KernelDrops):
        return [_drop_event(e) for e in reader.poll(int(seconds * 1000))]
    return reader.poll(seconds)


def _drop_event(e: dict) -> dict:
    """A kernel drop as the other sources' events: the lab object it happened in, and a line."""
    from ...lab.names import lab_of_netns
    from .bpf import clock_text
    ns = e["netns"]
    lab = lab_of_netns(ns)
    e = dict(e, source="drop", node=ns[len(f"dp-{lab}."):] if lab else ns)
    proto = (e.get("proto") or "?").upper()
    if e.get("sport") is not None:
        what = f"{proto} {e['src']}:{e['sport']} -> {e['dst']}:{e['dport']}"
    elif e.get("src"):
        what = f"{proto} {e['src']} -> {e['dst']}"
    else:
        what = proto
    e["text"] = f"{clock_text(e['time'])} {e['node']} kernel drop {what}: {e['reason']} at {e['location']}"
    return e


def _namespace_inodes(record) -> dict:
    import os
    from ...lab import netns
    out = {}
    for ns in record.namespaces:
        try:
            out[os.stat(netns.path(ns)).st_ino] = ns
        except OSError:
            pass
    if not out:
        raise LabError(f"lab {record.name} has no namespace left to watch")
    return out


# How long an event is held back so that a later-arriving earlier one goes first: netfilter's
# trace completes a packet only after a pause in its lines, the other readers at once.
REORDER_WINDOW = 0.5


def run(record, table, selection: Selection, drops: bool, emit, seconds: float | None = None,
        count: int | None = None, started=lambda lines: None) -> tuple[int, int]:
    """Trace until Ctrl-C (or SIGTERM, SIGHUP: the caller makes them exceptions), `seconds` or
    `count` events; each event to `emit`, in time order (held back REORDER_WINDOW seconds). (The
    number shown, the events the eBPF programs had no ring buffer room for.)"""
    shown = 0
    held: list[dict] = []

    def release(upto: float) -> None:
        nonlocal shown, held
        held.sort(key=lambda e: e.get("time", 0.0))
        while held and held[0].get("time", 0.0) <= upto and (count is None or shown < count):
            emit(held.pop(0))
            shown += 1

    with TraceSession(record, table, selection, drops) as session:
        started(session.start())
        end = time.monotonic() + seconds if seconds else None
        try:
            while (end is None or time.monotonic() < end) and (count is None or shown < count):
                held += session.poll()
                release(time.monotonic() - REORDER_WINDOW)
            held += session.poll()
        finally:
            release(float("inf"))          # Ctrl-C too: what was read is shown
            lost = session.lost()
    return shown, lost


def lab_and_table(name: str):
    """The lab's record, its desired service table (what its agent serves) and its topology."""
    rec = state.load(name)
    if rec is None:
        raise LabError(f"no lab named {name!r} (see `dataplane status`)")
    from ..agent.desired import Desired
    desired = Desired(rec)
    return rec, desired.table(), desired.scenario.topology
