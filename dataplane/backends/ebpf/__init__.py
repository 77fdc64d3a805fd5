"""`ebpf`: the service dataplane as BPF programs on every node, loaded with bcc, attached with TC.

Per node: one compiled instance of bpf/pod.c (its own maps), from_pod/to_pod on every pod veth,
maps pinned under /sys/fs/bpf/dp-<lab>/<node>/. Programming is render (pure) -> diff -> batched
map updates. Endpoints that leave a service have their flows flushed: UDP entries (the stale-UDP
problem) and TCP entries alike, so a TCP flow to a removed backend is dropped from then on (its
next packet is not a SYN and has no entry: DROP_CT_LOST) rather than sent to another backend.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from ...policy import stale_targets
from .maps import apply
from .program import PIN_ROOT, CtTimeouts, MapSizes, NodeProgram, be16, be32
from .render import Ids, NodeMaps, render_config, render_node
from .consts import CT_REPLY, CT_SERVICE, CT_SNAT_IN, CT_SNAT_OUT


@dataclass
class EbpfBackend:
    name = "ebpf"
    description = "BPF programs on TC hooks: ClusterIP DNAT, conntrack, reverse NAT"
    needs = ("root", "netns", "headers", "bcc", "bcc-compile", "bpf")
    serves_health_checks = True      # kube-proxy's healthCheckNodePort servers run beside it

    seed: int | None = None
    sizes: MapSizes = field(default_factory=MapSizes)
    timeouts: CtTimeouts = field(default_factory=CtTimeouts)
    nodes: dict = field(default_factory=dict)      # node -> NodeProgram
    current: dict = field(default_factory=dict)    # node -> NodeMaps
    ids: dict = field(default_factory=dict)        # node -> Ids
    table: object = None

    def __post_init__(self):
        if self.seed is None:
            self.seed = random.SystemRandom().randrange(1 << 32)

    def setup(self, lab, table) -> None:
        pin_root = os.path.join(PIN_ROOT, f"dp-{lab.name}")
        lab.record.pinned.append(pin_root)   # recorded first: teardown unpins even after SIGKILL
        lab.record.save()
        for node in lab.spec.nodes:
            prog = NodeProgram(node.name, lab.record.objects[node.name], node.ip, self.sizes, self.timeouts)
            self.nodes[node.name] = prog
            prog.load(self.seed)
            prog.set_node_config(render_config(lab.spec, node.name))
            prog.pin(os.path.join(pin_root, node.name))
            for pod in lab.spec.pods:
                if pod.node == node.name:
                    prog.attach(f"v-{pod.name}")
            prog.attach("eth0", ingress="from_netdev", egress="to_netdev")
            self.current[node.name] = NodeMaps()
            self.ids[node.name] = Ids()
        self.sync(lab, table)

    def sync(self, lab, table) -> list[str]:
        report = []
        stale = stale_targets(self.table, table)
        for node, prog in self.nodes.items():
            desired = render_node(table, node, self.ids[node], prog.node_ip)
            change, flushed = sync_node(prog, self.current[node], desired, stale)
            self.current[node] = desired
            if change or flushed:
                report.append(f"{node}: {change.upserted} map entries written, {change.deleted} deleted, "
                              f"{flushed} conntrack/affinity entries of removed endpoints flushed")
        self.table = table
        return report

    def teardown(self, lab) -> None:
        for prog in self.nodes.values():
            prog.close()
        self.nodes.clear()
        pin_root = os.path.join(PIN_ROOT, f"dp-{lab.name}")
        if os.path.isdir(pin_root) and not os.listdir(pin_root):
            os.rmdir(pin_root)

    def metrics(self) -> dict:
        return {node: prog.metrics() for node, prog in self.nodes.items()}

    def collect(self) -> int:
        """Garbage-collect expired conntrack entries on every node."""
        return sum(prog.collect() for prog in self.nodes.values())


def sync_node(prog: NodeProgram, current: NodeMaps, desired: NodeMaps, stale: set):
    """One node's part of a sync: write the map difference, then flush the flows of endpoints
    that left and the affinities no longer eligible. (maps.Change, entries flushed)."""
    change = apply(prog, current, desired)
    flushed = flush_flows(prog, stale) if stale else 0
    flushed += forget_affinities(prog, change.unmatched) if change.unmatched else 0
    return change, flushed


def forget_affinities(prog: NodeProgram, unmatched: set) -> int:
    """Delete the affinity entries pointing at backends no longer eligible for their service port
    (or of service ports gone or without affinity now). The programs already ignore them; this
    frees their room and makes a later return of the backend start afresh, as kube-proxy's
    per-endpoint recent lists do."""
    aff = prog.table("affinity")
    doomed = [k for k, v in aff.items() if (k.svc_id, v.backend_id) in unmatched]
    for k in doomed:
        aff.pop(k, None)
    return len(doomed)


def flush_flows(prog: NodeProgram, stale: set) -> int:
    """Delete the conntrack entries (both directions) of stale endpoints."""
    wanted = {(be32(a), be16(p), proto) for a, p, proto in stale}
    ct = prog.table("conntrack")
    doomed = []
    for k, v in ct.items():
        if k.dir in (CT_REPLY, CT_SNAT_IN):        # keyed by what the endpoint sends
            hit = (k.saddr, k.sport, k.proto) in wanted
        elif k.dir == CT_SNAT_OUT:                 # keyed by what is sent to it
            hit = (k.daddr, k.dport, k.proto) in wanted
        elif k.dir == CT_SERVICE:
            hit = (v.nat_addr, v.nat_port, k.proto) in wanted
        else:
            hit = False
        if hit:
            doomed.append(k)
    for k in doomed:
        ct.pop(k, None)
    return len(doomed)
