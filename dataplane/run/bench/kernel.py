"""What one packet costs in the BPF programs, path by path, against the number of services
installed: `dataplane bench kernel`.

Method. One node's programs (bpf/dataplane.c, the same build as a lab's) are loaded without a lab
and run with BPF_PROG_TEST_RUN, one packet per call (`repeat` 1: with repeat > 1 the kernel runs
the program again on the packet it already rewrote, which times a different path), from inside a
namespace of the bench's own that holds the node's address (the programs' socket lookups see
only it). Each call's time is the kernel's own measurement around the program run
(`duration`, ns), so the syscall is not counted; the timer's own cost is in every figure, and a
trivial TC program (`return TC_ACT_OK`) run the same way is reported as the floor. For each map
fill (N ClusterIP services of two endpoints each; the first is also a NodePort, with 100), each path runs CALLS
times, frames prepared beforehand:

  not-service      a pod's packet to another pod: no frontend, no translation
  new-flow         a pod's SYN to a random service's cluster IP, a new source port each call
  established      a pod's ACK on a connection the program has seen both ways
  reply            the backend's ACK back to that pod (reverse NAT)
  nodeport-new     an outside host's SYN to the node port, a new source port each call
  masquerade-new   a pod's SYN to an outside host (200 of them), leaving through the uplink, a new
                   port each call
  masquerade-est   a pod's ACK on a masqueraded connection the program has seen both ways

Then four of them three more ways, timed in alternation (chunks of DRAIN_EVERY calls, one variant
after the other) so that the machine's drift falls on all three: PATH-detached (the same build,
no trace attached), PATH+trace (a trace attached: the trace flag set, every decision's event
written to the ring buffer, which the bench drains after each chunk, untimed, as a reader keeping
up would, counting the events) and PATH-notrace (a second build of the programs without any trace
code, DP_TRACE_COMPILED_OUT). detached − notrace is what the trace notes cost while nobody traces;
+trace − detached what a trace attached costs. Each variant runs on a program instance of its own
that nothing else runs on (two instances of the build, one of the build without trace code), its
maps filled alike: a flow table's history (what ran on it before) changes how fast it takes new
entries, by hundreds of ns on the new-flow path.

Percentiles (p50, p90, p99) are of the CALLS single runs; conntrack is emptied between fills, and
before each traced path (which then sets its own connection up again).
"""
from __future__ import annotations

import os
import random
import statistics
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from ...lab.workload.load import percentile

PATHS = ("floor", "not-service", "new-flow", "established", "reply", "nodeport-new", "masquerade-new",
         "masquerade-est")
NODE_IP = IPv4Address("10.240.0.1")
CLIENT, OTHER_POD, OUTSIDE = "10.0.1.2", "10.0.2.2", "10.128.1.1"
POD_MAC, NODE_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:01"
FIRST_BACKEND = IPv4Address("10.0.3.2")
NODE_PORT = 30080
NODE_PORT_ENDPOINTS = 100
OUTSIDE_HOSTS = 200         # masquerade-new spreads over these, so its ports never run out
NEW_FLOW_PORTS = 20000      # new flows' source ports start here (so at most 45,535 calls per path)
SETUP_PORT = 19000          # the connections the established paths use: below every new flow's
MAX_CALLS = 65535 - NEW_FLOW_PORTS
TRACED = ("not-service", "new-flow", "established", "reply")     # timed again as PATH+trace
DRAIN_EVERY = 1000          # calls between two drains of the trace ring buffer (1 MiB: ~11,000 events)
FILLS = (1, 1000, 10000, 65536)
QUICK_FILLS = (1, 1000, 10000)


@dataclass
class PathResult:
    path: str
    services: int
    calls: int
    p50: float
    p90: float
    p99: float
    mean: float
    verdict: str
    counters: dict            # the programs' counters that grew during the path's calls


def table(n: int):
    """n ClusterIP services (port 80 -> 8080/TCP), two endpoints each; service 0 is also a
    NodePort. Endpoints spread over 10.0.3.0/24 and up, none of them the client."""
    from ...spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable
    t = ServiceTable()
    port = (EndpointPort("", 8080, "TCP"),)
    for i in range(n):
        # the node port's service has 100 endpoints: each new node-port flow is masqueraded, and
        # 100 (backend, port) pairs give the masquerade ports room for every call
        count = NODE_PORT_ENDPOINTS if i == 0 else 2
        eps = tuple(Endpoint(FIRST_BACKEND + (2 * i + j) % 60000, port, "node1", None) for j in range(count))
        sp = ServicePort("", 80, "TCP", 8080, NODE_PORT if i == 0 else None)
        t.add(Service("default", f"svc-{i:05d}", "NodePort" if i == 0 else "ClusterIP",
                      IPv4Address("10.96.0.1") + i, (sp,), endpoints=eps))
    return t


def _frame(src, dst, l4, pod_side: bool = True):
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    macs = (POD_MAC, NODE_MAC) if pod_side else (NODE_MAC, POD_MAC)
    return bytes(Ether(src=macs[0], dst=macs[1]) / IP(src=src, dst=dst, id=1) / l4)


def _tcp(sport, dport, flags, seq=1000, ack=0):
    from scapy.layers.inet import TCP
    return TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)


class Bench:
    """The programs of one node, loaded in a namespace of the bench's own, and the floor.
    `origins`: build without #line markers, and fill in where each line came from (profile.py)."""

    def __init__(self, progress=lambda m: None, origins: list | None = None):
        from ...backends.ebpf.program import NodeProgram
        from ...contract.render import Ids, NodeConfig, NodeMaps
        from ...lab import netns
        self.progress = progress
        self.bare = self.traced = self.plain = None
        self.ns = f"dp-bench{os.getpid()}.node1"
        netns.remove(self.ns)
        netns.create(self.ns)
        self.prog = self.floor_bpf = None
        try:
            with netns.ipr(self.ns) as ipr:
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.link("set", index=lo, state="up")
                ipr.addr("add", index=lo, address=str(NODE_IP), prefixlen=32)
            progress("compiling bpf/dataplane.c")
            self.prog = NodeProgram("node1", self.ns, NODE_IP)
            self.prog.load(seed=1, origins=origins)
            # for the tracing comparison, three instances used by nothing else (an instance's maps
            # carry the history of every path timed on it, and a flow table's history changes how
            # fast it takes new entries): this build twice (detached, attached), and the build
            # without trace code
            self.plain = NodeProgram("node1", self.ns, NODE_IP)
            self.plain.load(seed=1)
            self.traced = NodeProgram("node1", self.ns, NODE_IP)
            self.traced.load(seed=1)
            self.bare = NodeProgram("node1", self.ns, NODE_IP)
            self.bare.load(seed=1, without_tracing=True)
            for prog in (self.prog, self.plain, self.traced, self.bare):
                prog.set_node_config(NodeConfig(NODE_IP, IPv4Network("10.0.0.0/16"), masquerade=True,
                                                non_masquerade=(IPv4Network("10.0.0.0/16"),)))
            from bcc import BPF
            self.floor_bpf = BPF(text=b"int pass(struct __sk_buff *skb) { return 0; }", cflags=["-w"])
            self.floor_fd = self.floor_bpf.load_func(b"pass", BPF.SCHED_CLS).fd
        except BaseException:
            self.close()
            raise
        self.ids, self.current = Ids(), NodeMaps()
        self.others = {id(p): (Ids(), NodeMaps()) for p in (self.plain, self.traced, self.bare)}

    def close(self) -> None:
        from ...lab import netns
        try:
            for prog in (self.prog, self.plain, self.traced, self.bare):
                if prog is not None:
                    prog.close()
            if self.floor_bpf is not None:
                self.floor_bpf.cleanup()
        finally:
            netns.remove(self.ns)

    def fill(self, n: int) -> None:
        from ...backends.ebpf.maps import apply
        from ...contract.render import render_node
        t = table(n)
        desired = render_node(t, "node1", self.ids, NODE_IP)
        apply(self.prog, self.current, desired)
        self.current = desired
        self.prog.table("conntrack").clear()
        for prog in (self.plain, self.traced, self.bare):
            ids, current = self.others[id(prog)]
            desired = render_node(t, "node1", ids, NODE_IP)
            apply(prog, current, desired)
            self.others[id(prog)] = (ids, desired)
            prog.table("conntrack").clear()

    def _run(self, fn: str | int, data: bytes, prog=None):
        from ...backends.ebpf.testrun import run
        from ...lab import netns
        fd = fn if isinstance(fn, int) else (prog or self.prog).fns[fn].fd
        with netns.inside(self.ns):
            return run(fd, data)

    def _times(self, fn, frames: list, prog=None) -> tuple[list, str]:
        from ...backends.ebpf.testrun import run
        from ...lab import netns
        fd = fn if isinstance(fn, int) else (prog or self.prog).fns[fn].fd
        out, verdicts = [], set()
        with netns.inside(self.ns):
            for data in frames:
                r = run(fd, data)
                out.append(r.duration_ns)
                verdicts.add(r.verdict)
        return out, "/".join(sorted(verdicts))

    def measure(self, n: int, calls: int, rng: random.Random) -> list[PathResult]:
        """Every path at fill n. A path that needs a connection sets it up just before it is timed
        (from source ports below the new-flow ones), so no earlier path's entries can have pushed
        it out of the conntrack table."""
        self.fill(n)
        results = []
        for path in PATHS:
            fn, batch = self.path_frames(path, n, calls, rng)
            before = self.prog.metrics()
            times, verdict = self._times(self.floor_fd if fn == "floor" else fn, batch)
            after = self.prog.metrics()
            grew = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
            results.append(_summary(path, n, times, verdict, grew))
        for path in TRACED:
            results += self._with_and_without_tracing(path, n, calls, rng)
        return results

    def _with_and_without_tracing(self, path: str, n: int, calls: int, rng: random.Random) -> list[PathResult]:
        """PATH-detached (this build, no trace attached), PATH+trace (another instance of this
        build, a trace attached: its ring buffer drained after each chunk, untimed) and
        PATH-notrace (the build without trace code), timed in alternating chunks of DRAIN_EVERY
        calls, so that the machine's drift falls on all three; each on an instance of its own
        that only these comparisons use, maps filled alike, its connection set up in them."""
        for prog in (self.plain, self.traced, self.bare):
            prog.table("conntrack").clear()
            prog.table("affinity").clear()
        seed = rng.random()          # the same frames for every variant (new-flow's services drawn alike)
        variants = (("-detached", self.plain, False), ("+trace", self.traced, True), ("-notrace", self.bare, False))
        frames = {name: self.path_frames(path, n, calls, random.Random(seed), prog=prog)
                  for name, prog, _ in variants}
        times = {name: [] for name, *_ in variants}
        verdicts = {name: set() for name, *_ in variants}
        events = self._count_events(self.traced)
        before = {name: prog.metrics() for name, prog, *_ in variants}
        grew = {}
        for i in range(0, calls, DRAIN_EVERY):
            for name, prog, traced in variants:
                fn, batch = frames[name]
                if traced:
                    prog.trace_flag(True)
                try:
                    t, v = self._times(fn, batch[i:i + DRAIN_EVERY], prog=prog)
                finally:
                    if traced:
                        prog.trace_flag(False)
                        prog.bpf.ring_buffer_consume()
                times[name] += t
                verdicts[name].add(v)
        out = []
        for name, prog, _ in variants:
            after = prog.metrics()
            grew[name] = {k: v - before[name].get(k, 0) for k, v in after.items() if v != before[name].get(k, 0)}
        for name, *_ in variants:
            counters = grew.get(name, {})
            if name == "+trace":
                counters["trace events"] = events()
            out.append(_summary(f"{path}{name}", n, times[name], "/".join(sorted(verdicts[name])), counters))
        return out

    def _count_events(self, prog):
        """A counter of the trace events `prog` sends from now on (its ring buffer read here)."""
        count = [0]
        if not getattr(self, "_ring_open", False):
            prog.table("trace_events").open_ring_buffer(lambda ctx, data, size: self._on_event())
            self._ring_open = True
        self._on_event = lambda: count.__setitem__(0, count[0] + 1)
        prog.bpf.ring_buffer_consume()
        count[0] = 0
        return lambda: count[0]

    def path_frames(self, path: str, n: int, calls: int, rng: random.Random, prog=None) -> tuple[str, list]:
        """(entry point, CALLS frames) of one path at fill n (installed by fill), with the
        connection it needs set up first (in `prog`'s maps: the bench's first instance by default)."""
        vip = lambda i: str(IPv4Address("10.96.0.1") + i)     # noqa: E731
        sports = list(range(NEW_FLOW_PORTS, NEW_FLOW_PORTS + calls))
        frames = {
            "floor": lambda: ("floor", [_frame(CLIENT, OTHER_POD, _tcp(40000, 8080, "A"))] * calls),
            "not-service": lambda: ("from_pod", [_frame(CLIENT, OTHER_POD, _tcp(40000, 8080, "A"))] * calls),
            "new-flow": lambda: ("from_pod", [_frame(CLIENT, vip(rng.randrange(n)), _tcp(s, 80, "S")) for s in sports]),
            "established": lambda: self._established(vip(n - 1), calls, SETUP_PORT, prog)[0],
            "reply": lambda: self._established(vip(n - 1), calls, SETUP_PORT + 2, prog)[1],
            "nodeport-new": lambda: ("from_netdev", [_frame(OUTSIDE, str(NODE_IP), _tcp(s, NODE_PORT, "S"),
                                                            pod_side=False) for s in sports]),
            "masquerade-new": lambda: ("to_netdev", [_frame(CLIENT, str(IPv4Address(OUTSIDE) + i % OUTSIDE_HOSTS),
                                                            _tcp(s, 8080, "S")) for i, s in enumerate(sports)]),
            "masquerade-est": lambda: self._masqueraded(calls),
        }
        return frames[path]()

    def _established(self, target: str, calls: int, sport: int, prog=None):
        """A connection through a service, seen both ways: (its client's ACKs, its backend's)."""
        from scapy.layers.l2 import Ether
        syn = self._run("from_pod", _frame(CLIENT, target, _tcp(sport, 80, "S")), prog)
        backend = Ether(syn.data)["IP"].dst
        self._run("to_pod", _frame(backend, CLIENT, _tcp(8080, sport, "SA", 5000, 1001), pod_side=False), prog)
        return (("from_pod", [_frame(CLIENT, target, _tcp(sport, 80, "A", 1001, 5001))] * calls),
                ("to_pod", [_frame(backend, CLIENT, _tcp(8080, sport, "A", 5001, 1001), pod_side=False)] * calls))

    def _masqueraded(self, calls: int):
        """A pod's connection to an outside host, masqueraded and seen both ways: its ACKs."""
        from scapy.layers.l2 import Ether
        out = self._run("to_netdev", _frame(CLIENT, OUTSIDE, _tcp(SETUP_PORT + 1, 8080, "S")))
        mport = Ether(out.data)["TCP"].sport
        self._run("from_netdev", _frame(OUTSIDE, str(NODE_IP), _tcp(8080, mport, "SA", 5000, 1001), pod_side=False))
        return "to_netdev", [_frame(CLIENT, OUTSIDE, _tcp(SETUP_PORT + 1, 8080, "A", 1001, 5001))] * calls


def _summary(path: str, n: int, times: list, verdict: str, counters: dict) -> PathResult:
    s = sorted(times)
    pct = lambda q: float(percentile(s, q))       # noqa: E731
    return PathResult(path, n, len(s), pct(0.5), pct(0.9), pct(0.99), round(statistics.fmean(s), 1), verdict,
                      counters)


def run_kernel(fills=FILLS, calls: int = 20000, seed: int = 1, progress=lambda m: None) -> list[PathResult]:
    bench = Bench(progress)
    try:
        rng = random.Random(seed)
        out = []
        for n in fills:
            progress(f"kernel: {n:,} services installed, {len(PATHS) + 3 * len(TRACED)} paths x {calls:,} calls")
            out += bench.measure(n, calls, rng)
        return out
    finally:
        bench.close()
