"""Setup and comparison for BPF fixtures: the BPF program (BPF_PROG_TEST_RUN) and the oracle
run the same frame from the same state; every result must agree byte for byte."""
from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network

from dataplane.contract.consts import (CT_F_EGRESS, CT_F_FIN_ORIG, CT_F_FIN_REPLY, CT_F_HAIRPIN, CT_F_RST,
                                       CT_F_SEEN_REPLY, SCOPE_POD)
from dataplane.backends.ebpf.maps import apply
from dataplane.backends.ebpf.program import NodeProgram, be16, from_be32
from dataplane.contract.render import Ids, NodeConfig, NodeMaps, render_node
from dataplane.backends.ebpf.testrun import run
from dataplane.oracle.datapath import CtKey, Datapath, NodeState
from dataplane.oracle.frontends import EVERYONE, PODS, Backend, frontends

NODE_IP = IPv4Address("10.240.0.1")


def _clear(table) -> None:
    for k in list(table.keys()):
        table.pop(k, None)


class Pair:
    def __init__(self, prog: NodeProgram, table, node: str = "node1", seed: int = 7, timeouts=None,
                 config=None, netns: str | None = None):
        from dataplane.contract.limits import CtTimeouts
        self.prog = prog
        self.netns = netns
        t = timeouts or {}
        prog.timeouts = CtTimeouts(**t)
        for name in ("services", "backends", "conntrack", "affinity", "affinity_match", "lb_sources"):
            _clear(prog.table(name))
        metrics = prog.table("metrics")
        for k in list(metrics.keys()):
            metrics[k] = metrics.Leaf(*([0] * len(metrics[k])))
        self.ids = Ids()
        self.node = node
        self.rendered = NodeMaps()
        self.meaning = {"svc": {}, "backend": {0: None}}   # ids -> what they stand for (never reused)
        self.program(table)
        self.offset = 0
        self.sockets: list = []          # what open_socket opened, as the oracle sees it
        self._held: list = []
        self.config = config or NodeConfig(NODE_IP, IPv4Network("10.0.0.0/16"), masquerade=True,
                                           non_masquerade=(IPv4Network("10.0.0.0/16"),))
        prog.set_config(seed=seed, clock_offset=0)
        prog.set_node_config(self.config)
        self.oracle = Datapath(NodeState(frontends=frontends(table, node, NODE_IP), node_ip=NODE_IP, seed=seed,
                                        timeouts=CtTimeouts(**vars(prog.timeouts)),
                                        config=self.config, node_sockets=self._socket_holds))

    def program(self, table) -> NodeMaps:
        """Write `table` into the BPF maps (the oracle is told separately, from the table); the
        ids it uses are remembered, to read the BPF state back in the oracle's terms."""
        rendered = render_node(table, self.node, self.ids, NODE_IP)
        apply(self.prog, self.rendered, rendered)
        self.learn(rendered)
        return rendered

    def learn(self, rendered: NodeMaps) -> None:
        """The maps now hold `rendered`: what its ids stand for."""
        self.rendered = rendered
        for k, v in rendered.services.items():
            if k.slot == 0 and v.svc_id:
                self.meaning["svc"][v.svc_id] = (k.vip, k.port, k.proto, PODS if k.scope == SCOPE_POD else EVERYONE)
        for bid, b in rendered.backends.items():
            self.meaning["backend"][bid] = Backend(b.addr, b.port)

    def _socket_holds(self, proto: int, remote, rport: int, port: int) -> bool:
        """What the BPF side's socket lookup finds in the fixture namespace, for the oracle: the
        sockets the test opened there (`open_socket`)."""
        return any(s["proto"] == proto and s["port"] == port and s["remote"] in ((IPv4Address(remote), rport), None)
                   for s in self.sockets)

    def evict(self, direction: int, **match) -> int:
        """What a full LRU table does to entries: gone, silently, on both sides alike. Every entry
        of table `direction` whose key fields equal `match` (addresses and ports as text/ints)."""
        def hit(key) -> bool:
            return key.dir == direction and all(str(getattr(key, f)) == str(v) for f, v in match.items())
        theirs = [k for k in self.oracle.s.conntrack if hit(k)]
        for k in theirs:
            del self.oracle.s.conntrack[k]
        ct = self.prog.table("conntrack")
        for k in list(ct.keys()):
            key = CtKey(from_be32(k.saddr), from_be32(k.daddr), be16(k.sport), be16(k.dport), k.proto, k.dir)
            if hit(key):
                del ct[k]
        return len(theirs)

    def open_socket(self, proto: int, port: int, remote: tuple | None = None):
        """A socket of the node's own in the fixture namespace, on node IP:port: connected to
        remote (ip, port), or (remote None) listening. Kept until close_sockets()."""
        import socket as so
        from dataplane.lab import netns
        with netns.inside(self.netns):
            kind = so.SOCK_STREAM if proto == 6 else so.SOCK_DGRAM
            if remote is not None:
                # a connected socket needs a route to its peer: the peer's address, here too
                from pyroute2 import IPRoute
                with IPRoute() as ipr:
                    lo = ipr.link_lookup(ifname="lo")[0]
                    if not ipr.get_addr(address=str(remote[0])):
                        ipr.addr("add", index=lo, address=str(remote[0]), prefixlen=32)
            if remote is not None and proto == 6:
                # ... and, for TCP, a listener there
                server = so.socket(so.AF_INET, so.SOCK_STREAM)
                server.setsockopt(so.SOL_SOCKET, so.SO_REUSEADDR, 1)
                server.bind((str(remote[0]), remote[1]))
                server.listen(8)
                self._held.append(server)
            s = so.socket(so.AF_INET, kind)
            self._held.append(s)
            s.setsockopt(so.SOL_SOCKET, so.SO_REUSEADDR, 1)
            s.bind((str(NODE_IP), port))
            if remote is not None:
                s.connect((str(remote[0]), remote[1]))
            elif proto == 6:
                s.listen(8)
        self.sockets.append({"proto": proto, "port": port,
                             "remote": (IPv4Address(remote[0]), remote[1]) if remote else None})

    def close_sockets(self) -> None:
        for s in self._held:
            s.close()
        self._held.clear()
        self.sockets.clear()

    def collect(self) -> tuple:
        """Garbage collection on both sides: (bpf removed, oracle removed)."""
        return self.prog.collect(), self.oracle.s.collect(self.now())

    def now(self) -> int:
        return time.monotonic_ns() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += int(seconds * 1e9)
        self.prog.set_config(clock_offset=self.offset)

    def send(self, hook: str, frame) -> tuple:
        """Run `frame` at hook from_pod or to_pod on both; assert they agree; return both."""
        data = bytes(frame)
        if self.netns:
            from dataplane.lab import netns
            with netns.inside(self.netns):
                got = run(self.prog.fns[hook].fd, data)
        else:
            got = run(self.prog.fns[hook].fd, data)
        want = getattr(self.oracle, hook)(data, self.now())
        assert got.verdict == want.verdict, f"verdict: bpf {got.verdict}, oracle {want.verdict} ({want.why})"
        assert got.data == want.data, (f"bytes differ at {_first_diff(got.data, want.data)}:\n"
                                       f" bpf    {got.data.hex()}\n oracle {want.data.hex()}\n {want.why}")
        return got, want

    def bpf_conntrack(self) -> dict:
        out = {}
        for k, v in self.prog.table("conntrack").items():
            key = CtKey(from_be32(k.saddr), from_be32(k.daddr), be16(k.sport), be16(k.dport), k.proto, k.dir)
            out[key] = (from_be32(v.nat_addr), be16(v.nat_port), bool(v.flags & CT_F_HAIRPIN),
                        from_be32(v.snat_addr), be16(v.snat_port), self.meaning["backend"][v.backend_id],
                        self.meaning["svc"].get(v.svc_id, ()),
                        bool(v.flags & CT_F_SEEN_REPLY), _closing(v.flags), bool(v.flags & CT_F_EGRESS))
        return out

    def model_conntrack(self) -> dict:
        return {k: (e.nat_addr, e.nat_port, e.hairpin, e.snat_addr, e.snat_port, e.backend, e.frontend,
                    e.seen_reply, (e.fin_orig, e.fin_reply, e.rst), e.egress)
                for k, e in self.oracle.s.conntrack.items()}

    def assert_same_state(self) -> None:
        assert self.bpf_conntrack() == self.model_conntrack()
        # lifetimes: both clocks read within the same second
        bpf = {}
        for k, v in self.prog.table("conntrack").items():
            bpf[CtKey(from_be32(k.saddr), from_be32(k.daddr), be16(k.sport), be16(k.dport), k.proto, k.dir)] = v.expires
        for key, e in self.oracle.s.conntrack.items():
            assert abs(bpf[key] - e.expires) < 1_000_000_000, f"{key}: expiry bpf {bpf[key]} oracle {e.expires}"
        bpf_metrics = {k: v for k, v in self.prog.metrics().items() if v}
        assert bpf_metrics == {k: v for k, v in self.oracle.s.metrics.items() if v}


def _closing(flags: int) -> tuple:
    """(FIN from the original direction, FIN from the reply direction, RST) of a BPF entry."""
    return bool(flags & CT_F_FIN_ORIG), bool(flags & CT_F_FIN_REPLY), bool(flags & CT_F_RST)


def _first_diff(a: bytes, b: bytes) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"byte {i}"
    return f"length {len(a)} vs {len(b)}"


def sync(pair: "Pair", old_table, new_table, node: str = "node1") -> tuple:
    """Apply a service update to both sides as the backends do (the ebpf backend's sync_node, the
    oracle's NodeState.sync): (entries the BPF side forgot, entries the oracle forgot)."""
    from dataplane.backends.ebpf import sync_node
    from dataplane.spec.policy import flow_keep
    rendered = render_node(new_table, node, pair.ids, NODE_IP)
    keep = flow_keep(new_table)
    _, flushed = sync_node(pair.prog, pair.rendered, rendered, keep)
    pair.learn(rendered)
    return flushed, pair.oracle.s.sync(frontends(new_table, node, NODE_IP), keep)
