"""The service table rendered into one node's BPF map contents, as plain Python values.

The same rendering feeds the BPF maps (maps.py converts it to bcc's Key/Leaf types) and the
oracle's state, so the two start every packet from identical tables. Ids are stable
across renders: a service port or backend keeps its id while it exists, and an id is never given
to anything else afterwards (state keyed by an old id, such as an affinity, cannot be inherited).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from ..errors import DataplaneError
from ..spec.topology import NAT_PORT_RANGE
from ..spec.table import ServiceTable
from ..spec.policy import cluster_targets, internal_targets, local_targets
from .consts import (ADDR_F_ENDPOINT, ADDR_F_FRONTEND, SCOPE_EXTERNAL, SCOPE_POD, SVC_F_AFFINITY, SVC_F_LOCAL_ONLY,
                     SVC_F_MASQ, SVC_F_POD_SCOPE, SVC_F_SRC_RANGES)

IPPROTO = {"TCP": 6, "UDP": 17}
PROTOCOL_NAMES = {v: k for k, v in IPPROTO.items()}


class RenderError(DataplaneError):
    """The table cannot be written into the maps (they are left as they were)."""


@dataclass(frozen=True, order=True)
class SvcKey:
    vip: IPv4Address
    port: int          # 0 in the VIP marker
    proto: int         # 0 in the VIP marker
    slot: int          # 0: the service port; 1..count: backends
    scope: int = 0     # SCOPE_EXTERNAL, or SCOPE_POD: what pods use for an eTP Local external frontend


@dataclass(frozen=True)
class SvcValue:
    backend_id: int = 0
    count: int = 0
    flags: int = 0
    affinity_timeout: int = 0
    svc_id: int = 0


@dataclass(frozen=True)
class BackendValue:
    addr: IPv4Address
    port: int


@dataclass
class NodeMaps:
    services: dict = field(default_factory=dict)   # SvcKey -> SvcValue
    backends: dict = field(default_factory=dict)   # id -> BackendValue
    lb_sources: set = field(default_factory=set)   # (svc_id, IPv4Network) admitted
    affinity_match: set = field(default_factory=set)   # (svc_id, backend id): eligible, with affinity
    # address (an int: IPv4Address hashes slowly, and 10,000 services mark 40,000 of them) ->
    # ADDR_F_* bits: every frontend address and every endpoint address (any state), the pod
    # hooks' fast path (bpf/pod.c, pod4_fast_pass)
    addresses: dict = field(default_factory=dict)


@dataclass
class Ids:
    """Integers for service ports and backends (0 means none): stable while their owner exists,
    never handed out again once it is gone (a 32-bit counter; 4 billion allocations per node
    before it would run out)."""
    svc: dict = field(default_factory=dict)       # (vip, port, proto) -> id
    backend: dict = field(default_factory=dict)   # (addr, port) -> id
    _next: dict = field(default_factory=lambda: {"svc": 1, "backend": 1})

    _journal: list | None = field(default=None, repr=False)   # ids given since begin()

    def _get(self, kind: str, key) -> int:
        table = getattr(self, kind)
        if key not in table:
            if self._next[kind] >= 1 << 32:
                raise OverflowError(f"{kind} ids exhausted")
            table[key] = self._next[kind]
            self._next[kind] += 1
            if self._journal is not None:
                self._journal.append((kind, key))
        return table[key]

    def begin(self) -> None:
        """Remember the ids given from now on, so that rollback() can take them back (a render
        that is refused leaves the ids as they were, without copying them all)."""
        self._journal = []

    def rollback(self) -> None:
        for kind, key in reversed(self._journal or []):
            self._next[kind] = getattr(self, kind).pop(key)
        self._journal = None

    def commit(self) -> None:
        self._journal = None

    def svc_id(self, key) -> int:
        return self._get("svc", key)

    def backend_id(self, key) -> int:
        return self._get("backend", key)

    @classmethod
    def recovered(cls, maps: NodeMaps, referenced=()) -> "Ids":
        """The ids an earlier loader gave, read back from the maps it wrote (an agent restarting
        over pinned maps). The next ids start after every id the maps still hold or reference
        (`referenced`: the (service id, backend id) pairs of affinity entries), so an id that state
        is still keyed by is never handed to something else; ids nothing mentions any more are
        free to reuse."""
        ids = cls()
        for k, v in maps.services.items():
            if k.slot == 0 and v.svc_id:          # a frontend (the VIP marker has no id)
                ids.svc[_id_key(k.vip, k.port, k.proto, k.scope)] = v.svc_id
        for i, b in maps.backends.items():
            ids.backend[(b.addr, b.port)] = i
        pairs = list(referenced) + list(maps.affinity_match) + [(sid, 0) for sid, _ in maps.lb_sources]
        ids._next["svc"] = max([0, *ids.svc.values(), *(s for s, _ in pairs)]) + 1
        ids._next["backend"] = max([0, *ids.backend.values(), *(b for _, b in pairs)]) + 1
        return ids

    def forget_unused(self, maps: NodeMaps) -> None:
        live_b = {(b.addr, b.port) for b in maps.backends.values()}
        live_s = {_id_key(k.vip, k.port, k.proto, k.scope) for k in maps.services if k.slot == 0}
        for kind, live in (("backend", live_b), ("svc", live_s)):
            table = getattr(self, kind)
            for key in [k for k in table if k not in live]:
                del table[key]


@dataclass(frozen=True)
class NodeConfig:
    """One node's dataplane settings (the config map and the nonmasq map)."""
    node_ip: IPv4Address
    cluster_cidr: IPv4Network
    masquerade: bool = False
    masq_link_local: bool = False
    snat_range: tuple = NAT_PORT_RANGE
    non_masquerade: tuple = ()


def render_config(spec, node: str) -> NodeConfig:
    m = spec.masquerade
    n = spec.node(node)
    if m is None:
        return NodeConfig(n.ip, spec.cluster_cidr)
    return NodeConfig(n.ip, spec.cluster_cidr, m.enabled, m.masq_link_local, m.port_range, m.non_masquerade)


def _id_key(addr, port: int, proto: int, scope: int = SCOPE_EXTERNAL):
    return (addr, port, proto) if scope == SCOPE_EXTERNAL else (addr, port, proto, scope)


# A service port's backend count and slot numbers are 16 bits in the maps (struct svc_value.count,
# struct svc_key.slot), as in Cilium's lb4_service.
MAX_BACKENDS = 0xFFFF


def _frontend(out: NodeMaps, ids: Ids, addr, port: int, proto: int, targets, flags: int, timeout: int,
              scope: int = SCOPE_EXTERNAL, svc=None) -> int:
    if len(targets) > MAX_BACKENDS:
        name = f"service {svc.key} " if svc is not None else ""
        raise RenderError(f"{name}{addr}:{port}/{PROTOCOL_NAMES[proto]} has {len(targets):,} eligible endpoints; "
                          f"the eBPF maps hold at most {MAX_BACKENDS:,} per service port (16-bit counts): "
                          f"nothing was written")
    sid = ids.svc_id(_id_key(addr, port, proto, scope))
    if scope == SCOPE_POD:
        flags |= SVC_F_POD_SCOPE
    out.services[SvcKey(addr, port, proto, 0, scope)] = SvcValue(count=len(targets), flags=flags,
                                                                 affinity_timeout=timeout, svc_id=sid)
    _mark(out.addresses, addr, ADDR_F_FRONTEND)
    for slot, t in enumerate(targets, 1):
        bid = ids.backend_id((t.address, t.port))
        out.backends[bid] = BackendValue(t.address, t.port)
        out.services[SvcKey(addr, port, proto, slot, scope)] = SvcValue(backend_id=bid)
        if flags & SVC_F_AFFINITY:
            out.affinity_match.add((sid, bid))
    return sid


def _external(out: NodeMaps, ids: Ids, svc, node: str, node_ip) -> None:
    """NodePort (on this node's IP), LoadBalancer ingress IPs and external IPs: external traffic,
    to the node-local endpoints with externalTrafficPolicy Local (dropped where there are none),
    to every endpoint and masqueraded to the node IP with Cluster."""
    affinity = SVC_F_AFFINITY if svc.session_affinity == "ClientIP" else 0
    timeout = svc.affinity_timeout if affinity else 0
    if svc.type == "ClusterIP" and not svc.external_ips:
        return
    # No marker for external and load-balancer IPs: a port they do not serve is not intercepted,
    # as in both of kube-proxy's modes (nftables rejects unserved ports of cluster IPs only).
    ranges = svc.load_balancer_source_ranges
    for sp in svc.ports:
        proto = IPPROTO[sp.protocol]
        flags = affinity
        local = svc.external_traffic_policy == "Local"
        if local:
            targets = local_targets(svc, sp, node)
            if not targets and cluster_targets(svc, sp):
                flags |= SVC_F_LOCAL_ONLY
        else:
            targets = cluster_targets(svc, sp)
            flags |= SVC_F_MASQ
        frontends = [(node_ip, sp.node_port, 0)] if sp.node_port and node_ip is not None else []
        frontends += [(addr, sp.port, 0) for addr in svc.external_ips]
        frontends += [(addr, sp.port, SVC_F_SRC_RANGES if ranges else 0) for addr in svc.load_balancer_ips]
        for addr, port, extra in frontends:
            sid = _frontend(out, ids, addr, port, proto, targets, flags | extra, timeout, svc=svc)
            if extra:
                out.lb_sources.update((sid, net) for net in ranges)
            if local:
                # Pods reaching it are not held to this node's endpoints, nor masqueraded
                # (kube-proxy's "pod traffic for ... external destinations" goes to the cluster
                # chain); source ranges still apply.
                sid = _frontend(out, ids, addr, port, proto, cluster_targets(svc, sp), affinity | extra,
                                timeout, SCOPE_POD, svc=svc)
                if extra:
                    out.lb_sources.update((sid, net) for net in ranges)


def render_service(svc, node: str, ids: Ids, node_ip=None, out: NodeMaps | None = None) -> NodeMaps:
    """One service's part of node `node`'s maps: its ClusterIP frontends as the node's pods see
    them, and its external frontends (NodePort on `node_ip`, LoadBalancer and external IPs)."""
    out = out if out is not None else NodeMaps()
    _external(out, ids, svc, node, node_ip)
    vip = svc.cluster_ip
    out.services[SvcKey(vip, 0, 0, 0)] = SvcValue()   # the VIP marker
    _mark(out.addresses, vip, ADDR_F_FRONTEND)
    for e in svc.endpoints:     # in any state: a flow to it may live on (FlowKeep)
        _mark(out.addresses, e.address, ADDR_F_ENDPOINT)
    affinity = SVC_F_AFFINITY if svc.session_affinity == "ClientIP" else 0
    for sp in svc.ports:
        targets = internal_targets(svc, sp, node)
        flags = affinity
        if not targets and svc.internal_traffic_policy == "Local" and cluster_targets(svc, sp):
            flags |= SVC_F_LOCAL_ONLY   # kube-proxy drops ("has no local endpoints"), not rejects
        _frontend(out, ids, vip, sp.port, IPPROTO[sp.protocol], targets, flags,
                  svc.affinity_timeout if affinity else 0, svc=svc)
    return out


def _mark(addresses: dict, addr, bit: int) -> None:
    a = int(addr)
    addresses[a] = addresses.get(a, 0) | bit


def _bits(addresses: dict):
    """(address, bit) for every bit set: what a part contributes, counted per bit."""
    return [(a, b) for a, f in addresses.items() for b in (ADDR_F_FRONTEND, ADDR_F_ENDPOINT) if f & b]


def render_node(table: ServiceTable, node: str, ids: Ids, node_ip=None) -> NodeMaps:
    """What node `node`'s maps hold for `table`: every service's part, in the table's order (where
    two services write one key, such as an external IP and port both claim, the later one wins)."""
    out = NodeMaps()
    for svc in table:
        render_service(svc, node, ids, node_ip, out)
    ids.forget_unused(out)
    return out


@dataclass
class Plan:
    """A prepared change of one node's rendering: the entries of the changed services before and
    after (what to write: maps.apply between the two), and their new parts."""
    keys: frozenset
    before: NodeMaps
    after: NodeMaps
    parts: dict                     # service key -> its new part (absent: removed)


class NodeRendering:
    """One node's rendering kept service by service, so that a sync of a few changed services
    renders those alone and writes only their entries (kube-proxy's change tracking, for maps).
    `maps` is the whole rendering, equal to render_node's for the same table and ids history
    (tests/unit/test_render_incremental.py holds that)."""

    def __init__(self, node: str, node_ip=None):
        self.node, self.node_ip = node, node_ip
        self.parts: dict = {}           # service key -> its NodeMaps part
        self.maps = NodeMaps()
        self.refs: dict = {}            # backend id -> slots that point at it
        self.addr_refs: dict = {}       # (address, ADDR_F_* bit) -> parts that set it
        self.owner: dict = {}           # SvcKey -> the service key that wrote it
        self.shared: set = set()        # services that write a key another one writes too

    def full(self, table: ServiceTable, ids: Ids) -> NodeMaps:
        """Render everything (the first sync, or a change that touches shared keys)."""
        self.parts, self.owner, self.shared = {}, {}, set()
        for svc in table:
            part = render_service(svc, self.node, ids, self.node_ip)
            self.parts[svc.key] = part
            for k in part.services:
                other = self.owner.setdefault(k, svc.key)
                if other != svc.key:
                    self.shared.update((other, svc.key))
                    self.owner[k] = svc.key
        self.maps = render_node(table, self.node, ids, self.node_ip) if self.shared else self._union(ids)
        self.refs = self._count_refs()
        self.addr_refs = {}
        for part in self.parts.values():
            for ab in _bits(part.addresses):
                self.addr_refs[ab] = self.addr_refs.get(ab, 0) + 1
        return self.maps

    def _union(self, ids: Ids) -> NodeMaps:
        out = NodeMaps()
        for part in self.parts.values():
            out.services.update(part.services)
            out.backends.update(part.backends)
            out.lb_sources |= part.lb_sources
            out.affinity_match |= part.affinity_match
            for a, f in part.addresses.items():
                out.addresses[a] = out.addresses.get(a, 0) | f
        ids.forget_unused(out)
        return out

    def _count_refs(self) -> dict:
        """backend id -> the parts that hold it: render_node's backends are the union of every
        part's (a slot another service overwrote still keeps its backend there)."""
        refs = {}
        for part in self.parts.values():
            for bid in part.backends:
                refs[bid] = refs.get(bid, 0) + 1
        return refs

    def prepare(self, table: ServiceTable, keys, ids: Ids) -> Plan | None:
        """The change of the services `keys` (rendered from `table`), without changing anything
        here; None when it touches a key another service writes too (render in full then)."""
        keys = frozenset(keys)
        if keys & self.shared:
            return None
        before, after, parts, written = NodeMaps(), NodeMaps(), {}, {}
        for key in keys:
            old = self.parts.get(key)
            if old is not None:
                _add(before, old)
        for key in sorted(keys):        # the table's order: ids are given as render_node gives them
            svc = table.services.get(key)
            if svc is None:
                continue
            part = render_service(svc, self.node, ids, self.node_ip)
            for k in part.services:
                if self.owner.get(k, key) != key or written.setdefault(k, key) != key:
                    return None
            parts[key] = part
            _add(after, part)
        for bid, b in list(after.backends.items()):
            # already in the maps for an unchanged service: nothing to write
            if bid not in before.backends and self.maps.backends.get(bid) == b:
                del after.backends[bid]
        # a backend the changed services drop stays while another service's part holds it
        dropping = {}
        for key in keys:
            for bid in (self.parts[key].backends if key in self.parts else ()):
                dropping[bid] = dropping.get(bid, 0) + 1
        for bid, n in dropping.items():
            if self.refs.get(bid, 0) > n and bid not in after.backends:
                after.backends[bid] = self.maps.backends[bid]
        # an address keeps each bit while any part sets it: the changed parts' addresses as the
        # maps hold them (before) and as they will be (after, absent when no bit is left)
        refs = {}
        for key in keys:
            for ab in _bits(self.parts[key].addresses) if key in self.parts else ():
                refs[ab] = refs.get(ab, 0) - 1
        for part in parts.values():
            for ab in _bits(part.addresses):
                refs[ab] = refs.get(ab, 0) + 1
        touched = {a for a, _ in refs}
        before.addresses = {a: self.maps.addresses[a] for a in touched if a in self.maps.addresses}
        after.addresses = {}
        for a in touched:
            flags = sum(bit for bit in (ADDR_F_FRONTEND, ADDR_F_ENDPOINT)
                        if self.addr_refs.get((a, bit), 0) + refs.get((a, bit), 0) > 0)
            if flags:
                after.addresses[a] = flags
        return Plan(keys, before, after, parts)

    def commit(self, plan: Plan, ids: Ids) -> None:
        """The prepared change is written: the rendering follows it, ids nothing uses are forgotten."""
        m = self.maps
        for k in plan.before.services:
            del m.services[k]
            del self.owner[k]
        m.lb_sources -= plan.before.lb_sources
        m.affinity_match -= plan.before.affinity_match
        for key in plan.keys:
            old = self.parts.pop(key, None)
            for bid in (old.backends if old is not None else ()):
                self.refs[bid] -= 1
            for ab in (_bits(old.addresses) if old is not None else ()):
                self.addr_refs[ab] -= 1
                if not self.addr_refs[ab]:
                    del self.addr_refs[ab]
        for key, part in plan.parts.items():
            self.parts[key] = part
            for k, v in part.services.items():
                m.services[k] = v
                self.owner[k] = key
            for bid in part.backends:
                self.refs[bid] = self.refs.get(bid, 0) + 1
            for ab in _bits(part.addresses):
                self.addr_refs[ab] = self.addr_refs.get(ab, 0) + 1
            m.lb_sources |= part.lb_sources
            m.affinity_match |= part.affinity_match
        for bid, b in plan.after.backends.items():
            m.backends[bid] = b
        for a in plan.before.addresses.keys() - plan.after.addresses.keys():
            del m.addresses[a]
        m.addresses.update(plan.after.addresses)
        for bid in plan.before.backends:
            if not self.refs.get(bid):
                self.refs.pop(bid, None)
                m.backends.pop(bid, None)
                ids.backend.pop((plan.before.backends[bid].addr, plan.before.backends[bid].port), None)
        for k, v in plan.before.services.items():
            if k.slot == 0 and v.svc_id and k not in m.services:
                ids.svc.pop(_id_key(k.vip, k.port, k.proto, k.scope), None)


def _add(out: NodeMaps, part: NodeMaps) -> None:
    out.services.update(part.services)
    out.backends.update(part.backends)
    out.lb_sources |= part.lb_sources
    out.affinity_match |= part.affinity_match
    for a, f in part.addresses.items():
        out.addresses[a] = out.addresses.get(a, 0) | f
