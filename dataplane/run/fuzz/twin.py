"""The BPF programs and the oracle side by side: one frame through both, one state compared.

The BPF side is a loaded NodeProgram run with BPF_PROG_TEST_RUN (no device, the kernel builds an
skb from the bytes); the oracle side is a Datapath on a NodeState derived from the same service
table. They share nothing but the table: the BPF maps are written by the eBPF renderer, the
oracle derives its frontends itself. The BPF state is read back in the oracle's terms (ids
translated to the backends and frontends they stand for) before it is compared.

Used by the packet fuzzer (`dataplane fuzz packets`) and the BPF fixtures (tests/bpf).
"""
from __future__ import annotations

import time
from dataclasses import replace

from ...backends.ebpf import sync_node
from ...backends.ebpf.maps import apply, grow_addresses
from ...backends.ebpf.program import NodeProgram, be16, from_be32
from ...backends.ebpf.testrun import run
from ...contract.consts import (CT_F_EGRESS, CT_F_FIN_ORIG, CT_F_FIN_REPLY, CT_F_HAIRPIN, CT_F_RST,
                                CT_F_SEEN_REPLY, SCOPE_POD)
from ...contract.limits import CtTimeouts
from ...contract.render import Ids, NodeMaps, render_node
from ...oracle.datapath import CtKey, Datapath, NodeState
from ...oracle.frontends import EVERYONE, PODS, Backend, frontends
from ...spec.policy import flow_keep

HOOKS = ("from_pod", "to_pod", "from_netdev", "to_netdev")
STATE_MAPS = ("services", "backends", "conntrack", "affinity", "affinity_match", "lb_sources", "nosnat", "frags",
              "addresses")
EXPIRY_SLACK_NS = 1_000_000_000     # both clocks are read within the same second


def _clear(table) -> None:
    for k in list(table.keys()):
        table.pop(k, None)


def _ct_key(k) -> CtKey:
    return CtKey(from_be32(k.saddr), from_be32(k.daddr), be16(k.sport), be16(k.dport), k.proto, k.dir)


class Twin:
    """One node's BPF program and oracle, programmed from one service table. `node_sockets`: what
    the oracle is told of the node's own sockets (the BPF side looks them up in the namespace the
    frames run in, `netns`)."""

    def __init__(self, prog: NodeProgram, table, config, node: str = "node1", seed: int = 7,
                 timeouts: CtTimeouts | None = None, netns: str | None = None, node_sockets=None):
        self.prog, self.node, self.netns, self.config = prog, node, netns, config
        prog.timeouts = timeouts or CtTimeouts()
        for name in STATE_MAPS:
            _clear(prog.table(name))
        prog.address_filter = None      # rebuilt from the emptied addresses map on first use
        metrics = prog.table("metrics")
        for k in list(metrics.keys()):
            metrics[k] = metrics.Leaf(*([0] * len(metrics[k])))
        self.ids = Ids()
        self.rendered = NodeMaps()
        self.meaning = {"svc": {}, "backend": {0: None}}   # ids -> what they stand for (never reused)
        self.offset = 0
        prog.set_config(seed=seed, clock_offset=0)
        prog.set_node_config(config)
        self.program(table)
        self.oracle = Datapath(NodeState(frontends=frontends(table, node, config.node_ip), node_ip=config.node_ip,
                                         seed=seed, timeouts=CtTimeouts(**vars(prog.timeouts)), config=config,
                                         node_sockets=node_sockets))

    # -- programming ---------------------------------------------------------------------------------

    def program(self, table) -> NodeMaps:
        """Write `table` into the BPF maps only (no flush); the oracle is told separately."""
        rendered = render_node(table, self.node, self.ids, self.config.node_ip)
        held = dict(self.rendered.addresses)        # as a sync writes before its flush: no address removed
        grow_addresses(self.prog, held, rendered.addresses)
        apply(self.prog, self.rendered, rendered, addresses=False)
        self._learn(replace(rendered, addresses=held))
        return rendered

    def _learn(self, rendered: NodeMaps) -> None:
        """The maps now hold `rendered`: what its ids stand for."""
        self.rendered = rendered
        for k, v in rendered.services.items():
            if k.slot == 0 and v.svc_id:
                self.meaning["svc"][v.svc_id] = (k.vip, k.port, k.proto, PODS if k.scope == SCOPE_POD else EVERYONE)
        for bid, b in rendered.backends.items():
            self.meaning["backend"][bid] = Backend(b.addr, b.port)

    def sync(self, table) -> tuple:
        """A service update on both, as the ebpf backend's sync_node and the oracle's
        NodeState.sync do it: (entries the BPF side forgot, entries the oracle forgot)."""
        rendered = render_node(table, self.node, self.ids, self.config.node_ip)
        keep = flow_keep(table)
        _, flushed, held = sync_node(self.prog, self.rendered, rendered, keep)
        self._learn(held)
        return flushed, self.oracle.s.sync(frontends(table, self.node, self.config.node_ip), keep)

    # -- time ----------------------------------------------------------------------------------------

    def now(self) -> int:
        return time.monotonic_ns() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += int(seconds * 1e9)
        self.prog.set_config(clock_offset=self.offset)

    def collect(self) -> tuple:
        """Garbage collection on both sides: (bpf removed, oracle removed)."""
        return self.prog.collect(), self.oracle.s.collect(self.now())

    # -- frames --------------------------------------------------------------------------------------

    def run(self, hook: str, data: bytes) -> tuple:
        """`data` through `hook` on both: (BPF RunResult, oracle Result). The oracle's clock is
        read just before the BPF program runs (which reads its own a few microseconds later)."""
        now = self.now()
        if self.netns:
            from ...lab import netns
            with netns.inside(self.netns):
                got = run(self.prog.fns[hook].fd, data)
        else:
            got = run(self.prog.fns[hook].fd, data)
        return got, getattr(self.oracle, hook)(data, now)

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
            if hit(_ct_key(k)):
                del ct[k]
        return len(theirs)

    # -- state, in the oracle's terms ------------------------------------------------------------------

    def bpf_conntrack(self) -> dict:
        out = {}
        for k, v in self.prog.table("conntrack").items():
            f = v.flags
            out[_ct_key(k)] = (from_be32(v.nat_addr), be16(v.nat_port), bool(f & CT_F_HAIRPIN),
                               from_be32(v.snat_addr), be16(v.snat_port), self.meaning["backend"].get(v.backend_id),
                               self.meaning["svc"].get(v.svc_id, ()), bool(f & CT_F_SEEN_REPLY),
                               (bool(f & CT_F_FIN_ORIG), bool(f & CT_F_FIN_REPLY), bool(f & CT_F_RST)),
                               bool(f & CT_F_EGRESS))
        return out

    def model_conntrack(self) -> dict:
        return {k: (e.nat_addr, e.nat_port, e.hairpin, e.snat_addr, e.snat_port, e.backend, e.frontend,
                    e.seen_reply, (e.fin_orig, e.fin_reply, e.rst), e.egress)
                for k, e in self.oracle.s.conntrack.items()}

    def differences(self, expired: bool = True) -> list[str]:
        """Where the two states differ (empty: the same). expired=False: live entries only, an
        entry past its expiry being as good as absent (a lookup deletes it) whichever side still
        holds it; when each side deletes its dead entries is not part of the semantics."""
        now = self.now() if expired else self.now() + EXPIRY_SLACK_NS
        out = []
        bpf_ct, model_ct = self.bpf_conntrack(), self.model_conntrack()
        bpf_exp = {_ct_key(k): v.expires for k, v in self.prog.table("conntrack").items()}
        model_exp = {k: e.expires for k, e in self.oracle.s.conntrack.items()}
        live = lambda exp, k: expired or exp[k] > now  # noqa: E731 - clearly alive on both clocks
        for k in sorted(set(bpf_ct) | set(model_ct), key=str):
            b, m = bpf_ct.get(k), model_ct.get(k)
            if b is None and live(model_exp, k):
                out.append(f"conntrack {k}: only the oracle has it: {m}")
            elif m is None and live(bpf_exp, k):
                out.append(f"conntrack {k}: only BPF has it: {b}")
            elif b is not None and m is not None:
                if b != m:
                    out.append(f"conntrack {k}: bpf {b}, oracle {m}")
                elif abs(bpf_exp[k] - model_exp[k]) >= EXPIRY_SLACK_NS:
                    out.append(f"conntrack {k}: expiry bpf {bpf_exp[k]}, oracle {model_exp[k]}")
        out += self._affinity_differences()
        out += self._nosnat_differences(now, expired)
        bpf_metrics = {k: v for k, v in self.prog.metrics().items() if v}
        model_metrics = {k: v for k, v in self.oracle.s.metrics.items() if v}
        if bpf_metrics != model_metrics:
            out.append(f"counters: bpf {bpf_metrics}, oracle {model_metrics}")
        return out

    def _affinity_differences(self) -> list[str]:
        bpf = {}
        for k, v in self.prog.table("affinity").items():
            key = (from_be32(k.client), self.meaning["svc"].get(k.svc_id, ("id", k.svc_id)))
            bpf[key] = (v.last_used, self.meaning["backend"].get(v.backend_id))
        model = dict(self.oracle.s.affinity)
        out = []
        for k in sorted(set(bpf) | set(model), key=str):
            b, m = bpf.get(k), model.get(k)
            if b is None or m is None or b[1] != m[1] or abs(b[0] - m[0]) >= EXPIRY_SLACK_NS:
                out.append(f"affinity {k}: bpf {b}, oracle {m}")
        return out


    def _nosnat_differences(self, now: int, expired: bool) -> list[str]:
        """The answer markers of UDP datagrams that came in from outside (live ones, unless
        `expired`)."""
        bpf = {_ct_key(k): v.expires for k, v in self.prog.table("nosnat").items()}
        model = dict(self.oracle.s.nosnat)
        out = []
        for k in sorted(set(bpf) | set(model), key=str):
            b, m = bpf.get(k), model.get(k)
            if b is not None and m is not None and abs(b - m) < EXPIRY_SLACK_NS:
                continue
            if expired or max(b or 0, m or 0) > now:
                out.append(f"no-SNAT marker {k}: bpf expires {b}, oracle {m}")
        return out


def first_difference(a: bytes, b: bytes) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"byte {i}"
    return f"length {len(a)} vs {len(b)}"

