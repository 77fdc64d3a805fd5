"""`ebpf`: the service dataplane as BPF programs on every node, loaded with bcc, attached with TC.

Per node: one compiled instance of bpf/dataplane.c (its own maps), from_pod/to_pod on every pod
veth, from_netdev/to_netdev on the uplink, the socket hooks on the node's cgroup, maps pinned under
/sys/fs/bpf/dp-<lab>/<node>/. Programming is render (pure) -> diff -> batched
map updates. After each sync the flows the new table no longer lets live are flushed
(policy.FlowKeep): UDP flows per (frontend, endpoint), as kube-proxy's conntrack reconciliation,
and TCP flows whose endpoint left their service port, so such a TCP flow is dropped from then on
(its next packet is not a SYN and has no entry: DROP_CT_LOST) rather than sent to another backend.

Owns: loading and attaching (program), map writes (maps), BPF_PROG_TEST_RUN (testrun), the
`rules` dump of pinned maps (dump), assembling bpf/ for bcc (source).
May import: spec, lab, contract, errors, backends.base.
"""
from __future__ import annotations

import copy
import os
import random
import re
import shutil
import socket
from dataclasses import dataclass, field, replace

from ...lab import netns, state
from ...lab.names import pin_dir
from ..base import Backend, HealthCheckServing
from ...spec.policy import FlowKeep, flow_keep
from ...spec.table import ServiceTable
from .address_filter import filter_of
from .maps import apply, batch_items, delete_batch, grow_addresses, read_node_maps, settle_addresses
from ...contract.limits import CtTimeouts, MapSizes
from .program import NodeProgram, be16, from_be32
from ...contract.headers import numeric_defines
from ...contract.render import Ids, NodeMaps, NodeRendering, RenderError, render_config
from ...contract.consts import CT_F_EGRESS, CT_F_HAIRPIN, CT_REPLY, CT_SERVICE, CT_SNAT_IN, CT_SNAT_OUT


LB_SOURCES_MAP_SIZE = numeric_defines("map_sizes.h")["LB_SOURCES_MAP_SIZE"]


@dataclass
class EbpfBackend(HealthCheckServing, Backend):
    name = "ebpf"
    description = "BPF programs on TC and cgroup hooks: service DNAT with conntrack, node ports, masquerade"
    needs = ("root", "netns", "headers", "bcc", "bcc-compile", "bpf")
    options = ("seed", "sizes", "timeouts")
    has_counters = True

    seed: int | None = None
    sizes: MapSizes = field(default_factory=MapSizes)
    timeouts: CtTimeouts = field(default_factory=CtTimeouts)
    nodes: dict = field(default_factory=dict)      # node -> NodeProgram
    current: dict = field(default_factory=dict)    # node -> NodeMaps
    ids: dict = field(default_factory=dict)        # node -> Ids
    renderings: dict = field(default_factory=dict) # node -> NodeRendering (the last sync's, service by service)
    # node -> addresses the map holds beyond the rendering's: named by flows that outlived their
    # service (maps.settle_addresses), looked at again by every sync until they are gone
    lingering: dict = field(default_factory=dict)
    table: object = None
    synced: tuple = (None, {})                     # (version, services) of the table last synced whole

    def __post_init__(self):
        if self.seed is None:
            self.seed = random.SystemRandom().randrange(1 << 32)

    def setup(self, lab, table) -> None:
        self._program(lab, table, adopt=False)

    def adopt(self, lab, table) -> list[str]:
        """Take over the dataplane an earlier process programmed (`dataplane reload`, or an agent
        starting after one was killed): programs rebuilt over the pinned maps (their layout
        checked first), swapped into the same hooks, the maps' contents read back as the state the
        next diff starts from, then one sync to the desired table. Flows, affinities, SNAT
        mappings and counters carry on."""
        return self._program(lab, table, adopt=True)

    def _program(self, lab, table, adopt: bool) -> list[str]:
        pin_root = pin_dir(lab.name)
        if not adopt and os.path.isdir(pin_root):
            # a fresh lab starts from empty maps, never from what an earlier one left behind
            shutil.rmtree(pin_root)
        if pin_root not in lab.record.pinned:
            lab.record.pinned.append(pin_root)   # recorded first: teardown unpins even after SIGKILL
            lab.record.save()
        report = []
        progs = {}
        try:
            # every node built (and its pins checked) before any hook changes: a refused reload
            # leaves every node on its old programs
            for node in lab.spec.nodes:
                prog = NodeProgram(node.name, lab.record.objects[node.name], node.ip, self.sizes, self.timeouts)
                progs[node.name] = prog
                reused = prog.load(self.seed, pin_dir=os.path.join(pin_root, node.name), configure=False,
                                   layout_file=os.path.join(state.lab_files(lab.name), f"layout-{node.name}.json"))
                if adopt and not reused:
                    report.append(f"{node.name}: no pinned maps to adopt; started from empty maps")
        except BaseException:
            for prog in progs.values():
                prog.release()
            raise
        for node in lab.spec.nodes:
            prog = progs[node.name]
            self.nodes[node.name] = prog
            prog.set_config(seed=self.seed, clock_offset=0)     # only now: every node's build passed
            prog.set_node_config(render_config(lab.spec, node.name))
            for ifname in [f"v-{pod.name}" for pod in lab.spec.pods if pod.node == node.name] + [UPLINK]:
                attach_interface(prog, ifname)
            cgroup = lab.cgroup_of(node.name)
            if cgroup:
                prog.attach_cgroup(cgroup)
            current = read_node_maps(prog)
            self.current[node.name] = current
            self.renderings.pop(node.name, None)     # the next sync renders in full from what is there
            self.ids[node.name] = Ids.recovered(current, ((k.svc_id, v.backend_id)
                                                          for k, v in prog.table("affinity").items()))
        report += self.sync(lab, table)
        return report

    def reconcile(self, lab) -> list[str]:
        """Repair what changed behind our back: map entries deleted or rewritten (`bpftool map
        delete`), TC filters or cgroup hooks removed. The maps are read back and the difference to
        the last sync's rendering written again; a missing hook is attached again."""
        repaired = []
        for node, prog in self.nodes.items():
            missing = prog.filters_present()
            if missing:
                for ifname in missing:
                    prog.attached.remove(ifname)
                    try:
                        attach_interface(prog, ifname)
                    finally:
                        if ifname not in prog.attached:     # failed: checked again next time
                            prog.attached.append(ifname)
                repaired.append(f"{node}: TC programs attached again on {', '.join(missing)}")
            if prog.cgroup_fd is not None and not prog.cgroup_hooks_present():
                prog.attach_cgroup(None)
                repaired.append(f"{node}: socket hooks attached again on its cgroup")
            actual = read_node_maps(prog)
            desired = self.current[node]
            change = apply(prog, actual, desired)
            if change:
                repaired.append(f"{node}: {change.upserted} map entries restored, {change.deleted} foreign ones removed")
            if filter_of(prog).repair():
                repaired.append(f"{node}: the address filter restored")
            cfg = render_config(lab.spec, node)
            if prog.config_drift(cfg):
                prog.set_node_config(cfg)
                repaired.append(f"{node}: configuration restored")
            if prog.trace_flag() and not state.trace_reader_attached(lab.name):
                prog.trace_flag(False)
                repaired.append(f"{node}: trace events turned off (their reader is gone)")
        if state.trace_left_behind(lab.name):
            os.unlink(state.trace_marker_path(lab.name))     # the flags above were its only state
        return repaired

    def sync(self, lab, table) -> list[str]:
        """Write `table` into every node's maps. Only the services that changed since the last
        sync are rendered and written (the table's change tracking, else a comparison), unless
        their map entries are shared with another service's: then everything is rendered again."""
        if self.table is not None and set(self.renderings) == set(self.nodes):
            # against what was synced (a copy): the synced table itself may have changed since
            keys = table.changes_since(self.synced[0], self.synced[1])
            # a change of most of the table costs less rendered whole (no per-service bookkeeping)
            if len(keys) * 4 <= max(len(table), len(self.synced[1])):
                report = self._sync_changes(lab, table, keys)
                if report is not None:
                    return report
        return self._sync_full(lab, table)

    def _synced(self, table, keys=None) -> None:
        """`table` is what the maps hold now. The copy of its services the next sync compares
        against is made whole after a full sync, and brought up to date key by key after a sync
        of `keys` (every key that differed: the copy then equals the table again, without an
        O(services) copy per change)."""
        self.table = table
        if keys is None:
            self.synced = (table.version, dict(table.services))
            return
        services = self.synced[1]
        for k in keys:
            if k in table.services:
                services[k] = table.services[k]
            else:
                services.pop(k, None)
        self.synced = (table.version, services)

    def _sync_full(self, lab, table) -> list[str]:
        report = []
        keep = flow_keep(table)
        # every node rendered, on copies of its ids, before any map is written or any id kept: a
        # table that cannot be written (a RenderError) changes nothing anywhere
        ids = {node: copy.deepcopy(self.ids[node]) for node in self.nodes}
        renderings = {node: NodeRendering(node, prog.node_ip) for node, prog in self.nodes.items()}
        rendered = {node: renderings[node].full(table, ids[node]) for node in self.nodes}
        for node in self.nodes:
            check_room(node, self.current[node], rendered[node], self.sizes)
        self.ids.update(ids)
        self.renderings = {}            # until every node is written: a failure leaves the next sync full
        for node, prog in self.nodes.items():
            desired = rendered[node]
            change, flushed, held = sync_node(prog, self.current[node], desired, keep)
            if lab is not None and node in lab.record.objects:
                flushed += close_stale_sockets(prog, keep, lab.record.objects[node])
            self.current[node] = held
            self.lingering[node] = {a for a, f in held.addresses.items() if desired.addresses.get(a) != f}
            if change or flushed:
                report.append(f"{node}: {change.upserted} map entries written, {change.deleted} deleted, "
                              f"{flushed} conntrack/affinity entries flushed")
        self.sync_health_checks(lab, table)
        self.renderings = renderings
        self._synced(table)
        return report

    def _sync_changes(self, lab, table, keys) -> list[str] | None:
        """The services `keys` alone, on every node: rendered (ids given on a journal, taken back
        if any node refuses), room checked, their entries written, their flows judged. None when
        a node's change touches entries another service shares (the caller renders in full)."""
        plans = {}
        for ids in self.ids.values():
            ids.begin()
        try:
            for node in self.nodes:
                plan = self.renderings[node].prepare(table, keys, self.ids[node])
                if plan is None:
                    for ids in self.ids.values():
                        ids.rollback()
                    return None
                check_room_change(node, self.current[node], plan, self.sizes)
                plans[node] = plan
        except BaseException:
            for ids in self.ids.values():
                ids.rollback()
            raise
        for ids in self.ids.values():
            ids.commit()
        old_table = ServiceTable(self.synced[1])
        keep = flow_keep(table, only=keys, old=old_table)
        # nothing the change could doom (an endpoint added, a port renamed): the tables of flows,
        # affinities and sockets need no walk, unless an address is to leave the filter
        doom = not keep.keeps_all_that(flow_keep(old_table, only=keys, old=table, routed=True))
        report = []
        try:
            for node, prog in self.nodes.items():
                plan = plans[node]
                held = self.current[node].addresses         # what the kernel's map holds
                grow_addresses(prog, held, plan.after.addresses)
                change = apply(prog, plan.before, plan.after, addresses=False)
                self.renderings[node].commit(plan, self.ids[node])
                wanted = self.renderings[node].maps
                touched = plan.before.addresses.keys() | plan.after.addresses.keys()
                lingering = self.lingering.get(node, set())
                # a walk of conntrack tells which leaving addresses live flows still name; the
                # addresses earlier syncs left lingering are settled by the next walk or by
                # collect (settle_lingering; their bits are only maybes meanwhile), not a reason
                # for one
                walk = doom or any(held.get(a, 0) & ~wanted.addresses.get(a, 0) for a in touched)
                among = touched | lingering if walk else touched
                flushed, used = flush_flows(prog, keep) if walk else (0, set())
                settle_addresses(prog, held, wanted.addresses, used, among)
                settled = {a for a in among if held.get(a, 0) != wanted.addresses.get(a, 0)}
                self.lingering[node] = settled if walk else settled | (lingering - among)
                self.current[node] = replace(wanted, addresses=held)
                if plan.before.affinity_match - plan.after.affinity_match:
                    flushed += forget_affinities(prog, wanted.affinity_match)
                if doom and lab is not None and node in lab.record.objects:
                    flushed += close_stale_sockets(prog, keep, lab.record.objects[node])
                if change or flushed:
                    report.append(f"{node}: {change.upserted} map entries written, {change.deleted} deleted, "
                                  f"{flushed} conntrack/affinity entries flushed")
            old = self.synced[1]
            if any(svc is not None and svc.health_check_node_port
                   for k in keys for svc in (old.get(k), table.services.get(k))):
                self.sync_health_checks(lab, table)
        except BaseException:
            # some nodes wrote the change, others not: the next sync renders and diffs in full
            # from what each node holds (kube-proxy's needFullSync after a failed sync)
            self.renderings = {}
            raise
        self._synced(table, keys)
        return report

    def release(self) -> None:
        """Let go of the programs and maps without touching the dataplane: the hooks keep the
        programs, the pins keep the maps, the next agent adopts them."""
        for prog in self.nodes.values():
            prog.release()
        self.nodes.clear()

    def teardown(self, lab) -> None:
        for prog in self.nodes.values():
            prog.close()
        self.nodes.clear()
        pin_root = pin_dir(lab.name)
        if os.path.isdir(pin_root) and not os.listdir(pin_root):
            os.rmdir(pin_root)

    def forget_flows(self, lab) -> None:
        super().forget_flows(lab)
        for prog in self.nodes.values():
            for name in ("conntrack", "affinity", "nosnat", "sock_revnat"):
                table = prog.table(name)
                delete_batch(table, [k for k, _ in batch_items(table)])

    def metrics(self) -> dict:
        return {node: prog.metrics() for node, prog in self.nodes.items()}

    def collect(self) -> int:
        """Garbage-collect expired conntrack and affinity entries on every node, then the
        addresses change syncs left lingering that no live flow names any more."""
        n = sum(prog.collect() + collect_affinities(prog, self.current.get(node, NodeMaps()))
                for node, prog in self.nodes.items())
        return n + self.settle_lingering()

    def settle_lingering(self) -> int:
        """Addresses a flow still named when they left the table linger in the addresses map and
        filter (their bits are only maybes: packets to them take the full path). A change sync
        that walks no table leaves them for this: conntrack read once per node that has some,
        those no entry names any more let go. Returns the addresses let go."""
        gone = 0
        for node, prog in self.nodes.items():
            lingering, rendering = self.lingering.get(node), self.renderings.get(node)
            if not lingering or rendering is None:
                continue
            _, used = flush_flows(prog, KEEP_EVERY_FLOW)
            held = self.current[node].addresses          # the kernel's, updated in place
            before = len(held)
            settle_addresses(prog, held, rendering.maps.addresses, used, lingering)
            self.lingering[node] = {a for a in lingering if held.get(a, 0) != rendering.maps.addresses.get(a, 0)}
            gone += before - len(held)
        return gone

    def dump(self, record, node: str) -> str:
        """The pinned maps in service terms (frontend -> endpoints, flags), read with bpftool."""
        from .dump import ebpf_maps
        return ebpf_maps(record.name, node)


UPLINK = "eth0"      # a node's link to the underlay; every other hooked link is a pod's veth
# judges no frontend: a walk of conntrack that flushes nothing, for the addresses flows name
KEEP_EVERY_FLOW = FlowKeep({}, {}, {}, {}, (frozenset(), frozenset()))


def attach_interface(prog: NodeProgram, ifname: str) -> None:
    """Our programs on one of the node's links: the uplink gets the netdev pair, a pod veth the
    pod pair."""
    if ifname == UPLINK:
        prog.attach(ifname, ingress="from_netdev", egress="to_netdev")
    else:
        prog.attach(ifname)


class MapFull(RenderError):
    """A sync that does not fit a map: refused before anything is written."""


def check_room(node: str, current: NodeMaps, desired: NodeMaps, sizes: MapSizes) -> None:
    """Refuse a sync whose entries do not fit, before anything is written. What counts is the
    peak, not the end: a sync adds new entries before it removes old ones (so that no packet
    meets a half-written service), so a map holds both at once for a moment."""
    room = (("services", set(current.services), set(desired.services), sizes.services, "services"),
            ("backends", set(current.backends), set(desired.backends), sizes.backends, "backends"),
            ("affinity_match", current.affinity_match, desired.affinity_match, sizes.services, "services"),
            ("lb_sources", current.lb_sources, desired.lb_sources, LB_SOURCES_MAP_SIZE, None),
            ("addresses", set(current.addresses), set(desired.addresses), sizes.addresses, "backends"))
    for name, before, after, size, option in room:
        _refuse_over(node, name, len(before | after), len(after), size, option, sizes)


def check_room_change(node: str, current: NodeMaps, plan, sizes: MapSizes) -> None:
    """check_room for a change of a few services (contract/render.py Plan): the same peaks,
    counted from what the change adds and removes rather than from whole copies of the maps."""
    room = (("services", len(current.services), plan.before.services.keys(), plan.after.services.keys(),
             sizes.services, "services"),
            ("backends", len(current.backends), {b for b in plan.before.backends if b not in plan.after.backends},
             plan.after.backends.keys(), sizes.backends, "backends"),
            ("affinity_match", len(current.affinity_match), plan.before.affinity_match, plan.after.affinity_match,
             sizes.services, "services"),
            ("lb_sources", len(current.lb_sources), plan.before.lb_sources, plan.after.lb_sources,
             LB_SOURCES_MAP_SIZE, None),
            ("addresses", len(current.addresses), plan.before.addresses.keys(), plan.after.addresses.keys(),
             sizes.addresses, "backends"))
    for name, now, before, after, size, option in room:
        added = len(set(after) - set(before)) if name != "backends" else len(set(after) - current.backends.keys())
        removed = len(set(before) - set(after)) if name != "backends" else len(before)
        _refuse_over(node, name, now + added, now + added - removed, size, option, sizes)


def _refuse_over(node: str, name: str, peak: int, done: int, size: int, option, sizes: MapSizes) -> None:
    if peak <= size:
        return
    # the addresses map is sized services/2 + backends (map_sizes.h): more backends make its room
    need = peak - sizes.services // 2 if name == "addresses" else peak
    fix = (f"bring the lab up with --map-size {option}={_room_for(need)} (a running lab keeps the size its "
           f"maps were pinned with)" if option else
           f"LB_SOURCES_MAP_SIZE in bpf/include/map_sizes.h fixes it at {size:,}")
    raise MapFull(f"{node}: the {name} map holds {size:,} entries; this sync needs {peak:,} at its peak "
                  f"({done:,} when done): nothing was written, the dataplane keeps its previous "
                  f"state; {fix}")


def _room_for(n: int) -> int:
    """A round size with headroom: the next power of two at or above 1.25 n."""
    size = 1
    while size < n * 5 // 4:
        size *= 2
    return size


def sync_node(prog: NodeProgram, current: NodeMaps, desired: NodeMaps, keep: FlowKeep):
    """One node's part of a sync: write the map difference (addresses added first), then flush the
    flows the new table no longer lets live and the affinities no longer eligible, then remove the
    addresses no live flow names. `current` is what the maps hold. Returns (maps.Change, entries
    flushed, what the maps hold now: `desired`, with the addresses that live flows keep)."""
    held = dict(current.addresses)
    grow_addresses(prog, held, desired.addresses)
    change = apply(prog, current, desired, addresses=False)
    flushed, used = flush_flows(prog, keep)
    settle_addresses(prog, held, desired.addresses, used, list(held))
    flushed += forget_affinities(prog, desired.affinity_match)
    return change, flushed, replace(desired, addresses=held)


def collect_affinities(prog: NodeProgram, current: NodeMaps) -> int:
    """Delete affinity entries older than their service port's timeout (the programs already
    ignore them), or whose service port has no affinity now. Each is read again just before its
    deletion: a client may have used it since the listing."""
    timeout = {v.svc_id: v.affinity_timeout for k, v in current.services.items() if k.slot == 0 and v.svc_id}
    aff = prog.table("affinity")
    now = prog.now()

    def expired(v, k) -> bool:
        return now - v.last_used > timeout.get(k.svc_id, 0) * 1_000_000_000

    removed = 0
    for k in [k for k, v in aff.items() if expired(v, k)]:
        try:
            if not expired(aff[k], k):
                continue
            del aff[k]
            removed += 1
        except KeyError:
            pass
    return removed


def forget_affinities(prog: NodeProgram, eligible: set) -> int:
    """Delete the affinity entries whose (service port, backend) is not `eligible` now: backends
    no longer eligible, service ports gone or without affinity now. Reconciled against the whole
    desired set, not this sync's difference, so an entry an earlier, interrupted sync left behind
    goes too (the packet fuzzer found one: maps written, the agent gone before its flush). The
    programs already ignore them; this frees their room and makes a later return of the backend
    start afresh, as kube-proxy's per-endpoint recent lists do."""
    aff = prog.table("affinity")
    doomed = [k for k, v in batch_items(aff) if (k.svc_id, v.backend_id) not in eligible]
    for k in doomed:
        aff.pop(k, None)
    return len(doomed)


def close_stale_sockets(prog: NodeProgram, keep: FlowKeep, ns: str) -> int:
    """The node processes' sockets that socket-level load balancing pointed at a backend the new
    table no longer lets them use (policy.FlowKeep, as for flows): closed (SOCK_DESTROY, `ss -K`),
    as Cilium terminates them; the process's next call on it fails (ECONNABORTED, or a UDP socket
    found disconnected) and it connects afresh. Found by the socket cookie each one's sock_revnat
    entry carries."""
    table = prog.table("sock_revnat")
    stale = {}
    for k, v in batch_items(table):
        if keep.keeps(v.proto, from_be32(v.addr), be16(v.port), from_be32(k.addr), be16(k.port), prog.node_ip):
            continue
        stale[k.cookie] = (v.proto, from_be32(k.addr), be16(k.port))
        table.pop(k, None)
    closed = 0
    for proto, addr, port in set(stale.values()):
        kind = "-t" if proto == 6 else "-u"
        listing = netns.run(ns, ["ss", "-H", "-n", "-e", kind, "dst", str(addr), "dport", "=", f":{port}"],
                            timeout=30).stdout
        for line in listing.splitlines():
            found = re.search(r"\bsk:([0-9a-f]+)\b", line)
            ends = [f.rsplit(":", 1) for f in line.split() if re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+", f)]
            if not found or int(found.group(1), 16) not in stale or len(ends) < 2:
                continue
            local, peer = ends[0], ends[1]
            done = netns.run(ns, ["ss", "-H", "-K", kind, "src", local[0], "sport", "=", f":{local[1]}",
                                  "dst", peer[0], "dport", "=", f":{peer[1]}"], timeout=30)
            closed += done.returncode == 0
    return closed


def flush_flows(prog: NodeProgram, keep: FlowKeep) -> tuple[int, set]:
    """Delete every flow the new table no longer lets live (policy.FlowKeep), found by either half
    (an entry the LRU table evicted leaves the other): its SERVICE entry, its reply entry, and the
    masquerade mapping of a flow masqueraded to the node. In two passes — every doomed entry
    expired first, then deleted — so that a packet in between cannot rebuild a half from the other
    (an expired entry is as good as absent). Returns (entries deleted, the addresses, as ints, that
    the entries left name: settle_addresses keeps those in the fast path's map)."""
    ct = prog.table("conntrack")
    entries = {(k.saddr, k.sport, k.daddr, k.dport, k.proto, k.dir): (k, v) for k, v in batch_items(ct)}
    doomed = {}
    for (saddr, sport, daddr, dport, proto, direction), (k, v) in entries.items():
        hairpin = bool(v.flags & CT_F_HAIRPIN)
        if direction == CT_SERVICE:
            frontend, backend = (daddr, dport), (v.nat_addr, v.nat_port)
            client = (saddr, sport)
        elif direction == CT_REPLY or (direction == CT_SNAT_IN and hairpin):
            frontend, backend = (v.nat_addr, v.nat_port), (saddr, sport)
            client = (v.snat_addr, v.snat_port) if hairpin else (daddr, dport)
        else:
            continue
        if keep.keeps(proto, from_be32(frontend[0]), be16(frontend[1]), from_be32(backend[0]), be16(backend[1]),
                      prog.node_ip):
            continue
        pair = [(client[0], client[1], frontend[0], frontend[1], proto, CT_SERVICE)]
        if hairpin:
            pair.append((backend[0], backend[1], v.snat_addr if direction == CT_SERVICE else daddr,
                         v.snat_port if direction == CT_SERVICE else dport, proto, CT_SNAT_IN))
        else:
            pair.append((backend[0], backend[1], client[0], client[1], proto, CT_REPLY))
            if v.flags & CT_F_EGRESS:     # masqueraded on its way: SNAT_OUT client -> backend, its SNAT_IN
                out = entries.get((client[0], client[1], backend[0], backend[1], proto, CT_SNAT_OUT))
                if out is not None:
                    pair.append((client[0], client[1], backend[0], backend[1], proto, CT_SNAT_OUT))
                    pair.append((backend[0], backend[1], out[1].nat_addr, out[1].nat_port, proto, CT_SNAT_IN))
        for t in pair:
            if t in entries:
                doomed[t] = entries[t][0]
    # every address a surviving entry names, and every address the half it heals (should the LRU
    # table lose the other) would be keyed by: its translation's and its mapping's
    used = set()
    for t in entries.keys() - doomed.keys():
        v = entries[t][1]
        used.update(socket.ntohl(a) for a in (t[0], t[2], v.nat_addr, v.snat_addr) if a)
    for k in doomed.values():                    # 1: expired
        try:
            v = ct[k]
        except KeyError:
            continue
        v.expires = 0
        ct[k] = v
    deleted = 0
    for k in doomed.values():                    # 2: gone
        try:
            del ct[k]
            deleted += 1
        except KeyError:
            pass
    return deleted, used
