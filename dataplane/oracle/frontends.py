"""What one node intercepts, in Kubernetes' terms: every frontend (address, port, protocol) and,
for each, who may receive a new connection, decided from the service table alone.

Written from Kubernetes' documented semantics (Service spec, kube-proxy's behaviour, see
docs/datapath.md "Frontends"), not from the BPF map encoding: it knows nothing of slots, ids or
flag bits. The one rule it shares with the eBPF renderer is documented there: the eligible
endpoints of a frontend, in policy.py's order (by address, then port), are what the flow hash
indexes (`hash % n`). A renderer that drops, reorders or mixes up an endpoint disagrees with this
module, and the BPF fixtures and the packet fuzzer say so.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from ..spec.policy import cluster_targets, internal_targets, local_targets
from ..spec.table import ServiceTable

PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17}
# Who uses a frontend: everybody, or (an externalTrafficPolicy Local external frontend) the
# cluster's own pods, which kube-proxy sends to every endpoint unmasqueraded.
EVERYONE, PODS = "everyone", "pods"


@dataclass(frozen=True)
class Backend:
    addr: IPv4Address
    port: int


@dataclass(frozen=True)
class Frontend:
    service: str                       # namespace/name
    addr: IPv4Address
    port: int
    proto: int
    users: str = EVERYONE
    targets: tuple = ()                # (Backend, ...): eligible now, in the documented order
    affinity: int | None = None        # ClientIP affinity's timeout in seconds; None without affinity
    local_only: bool = False           # a traffic policy Local with no endpoint on this node (while
                                       # there are elsewhere): dropped, not rejected
    masquerade: bool = False           # external traffic with externalTrafficPolicy Cluster
    source_ranges: tuple | None = None   # loadBalancerSourceRanges of a load-balancer IP

    @property
    def key(self) -> tuple:
        """What identifies the frontend, also for its remembered affinities."""
        return (self.addr, self.port, self.proto, self.users)

    def admits(self, client: IPv4Address) -> bool:
        return self.source_ranges is None or any(client in net for net in self.source_ranges)


@dataclass
class Frontends:
    """One node's frontends, and the cluster IPs (a cluster IP's unserved port is rejected)."""
    by_key: dict          # Frontend.key -> Frontend
    cluster_ips: frozenset

    def find(self, addr, port: int, proto: int, users: str = EVERYONE) -> Frontend | None:
        return self.by_key.get((IPv4Address(addr), port, proto, users))

    def for_pod(self, addr, port: int, proto: int) -> Frontend | None:
        """What a pod (or a node process) reaching addr:port gets: the pods' own frontend of an
        externalTrafficPolicy Local external address first, else the one everybody uses."""
        return self.find(addr, port, proto, PODS) or self.find(addr, port, proto)

    def is_cluster_ip(self, addr) -> bool:
        return IPv4Address(addr) in self.cluster_ips


def _pairs(targets) -> tuple:
    return tuple(Backend(t.address, t.port) for t in targets)


def frontends(table: ServiceTable, node: str, node_ip: IPv4Address | None) -> Frontends:
    """Every frontend of `node` (its node ports on node_ip) for the services of `table`. A later
    service's frontend on the same address, port and protocol replaces an earlier one's."""
    out: dict = {}
    cluster_ips = set()

    def add(f: Frontend) -> None:
        out[f.key] = f

    for svc in table:
        affinity = svc.affinity_timeout if svc.session_affinity == "ClientIP" else None
        cluster_ips.add(svc.cluster_ip)
        if svc.type != "ClusterIP" or svc.external_ips:
            for sp in svc.ports:
                _external(add, svc, sp, node, node_ip, affinity)
        for sp in svc.ports:
            everywhere = cluster_targets(svc, sp)
            internal = internal_targets(svc, sp, node)
            add(Frontend(svc.key, svc.cluster_ip, sp.port, PROTOCOL_NUMBERS[sp.protocol], targets=_pairs(internal),
                         affinity=affinity,
                         local_only=not internal and svc.internal_traffic_policy == "Local" and bool(everywhere)))
    return Frontends(out, frozenset(cluster_ips))


def _external(add, svc, sp, node: str, node_ip, affinity) -> None:
    """The node port (on this node's address), external IPs and load-balancer IPs of one service
    port: with externalTrafficPolicy Local the node's own endpoints (dropped where it has none),
    with Cluster every endpoint, masqueraded to the node."""
    proto = PROTOCOL_NUMBERS[sp.protocol]
    everywhere = cluster_targets(svc, sp)
    local = svc.external_traffic_policy == "Local"
    external = local_targets(svc, sp, node) if local else everywhere
    addresses = [(node_ip, sp.node_port, None)] if sp.node_port and node_ip is not None else []
    addresses += [(a, sp.port, None) for a in svc.external_ips]
    ranges = tuple(svc.load_balancer_source_ranges) or None
    addresses += [(a, sp.port, ranges) for a in svc.load_balancer_ips]
    for addr, port, admitted in addresses:
        add(Frontend(svc.key, IPv4Address(addr), port, proto, targets=_pairs(external), affinity=affinity,
                     local_only=local and not external and bool(everywhere), masquerade=not local,
                     source_ranges=admitted))
        if local:
            add(Frontend(svc.key, IPv4Address(addr), port, proto, PODS, targets=_pairs(everywhere),
                         affinity=affinity, source_ranges=admitted))
