"""One service port as kube-proxy's proxier sees it on one node (pkg/proxy/topology.go
CategorizeEndpoints, and the flags syncProxyRules derives from it).

The endpoint choice itself comes from dataplane.spec.policy, the code every backend uses; this module
only adds kube-proxy's bookkeeping: which endpoint sets a node uses, whether the service has
endpoints anywhere ("has no endpoints" -> REJECT) or only elsewhere ("has no local endpoints" ->
DROP).
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from ...spec.table import Service, ServicePort, ServiceTable
from ...spec.policy import Target, cluster_targets, local_targets


@dataclass(frozen=True)
class PortView:
    svc: Service
    sp: ServicePort
    name: str                         # kube-proxy's ServicePortName: "ns/name:port" ("ns/name" unnamed)
    protocol: str                     # lower case, as in rules: tcp | udp
    cluster_endpoints: tuple[Target, ...]
    local_endpoints: tuple[Target, ...]
    has_endpoints: bool               # usable endpoints anywhere in the cluster

    @property
    def cluster_ip(self) -> IPv4Address:
        return self.svc.cluster_ip

    @property
    def port(self) -> int:
        return self.sp.port

    @property
    def node_port(self) -> int | None:
        return self.sp.node_port

    @property
    def externally_accessible(self) -> bool:
        """NodePort, LoadBalancer or external IPs: kube-proxy's ExternallyAccessible()."""
        return bool(self.sp.node_port or self.svc.external_ips or self.svc.load_balancer_ips)

    @property
    def external_policy_local(self) -> bool:
        return self.externally_accessible and self.svc.external_traffic_policy == "Local"

    @property
    def internal_policy_local(self) -> bool:
        return self.svc.internal_traffic_policy == "Local"

    @property
    def uses_cluster_endpoints(self) -> bool:
        # Even with both policies Local: the external chain short-circuits pod and node traffic
        # to the cluster chain (kube-proxy's ServicePort.UsesClusterEndpoints).
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or self.external_policy_local

    @property
    def all_reachable(self) -> tuple[Target, ...]:
        """Endpoints some rule on this node may send to: cluster and local ones, each once."""
        seen = {(t.address, t.port): t for t in (*self.cluster_endpoints, *self.local_endpoints)}
        return by_endpoint(seen.values())

    @property
    def endpoint_count(self) -> int:
        """Every endpoint of the port, usable or not: what kube-proxy counts for large-cluster mode."""
        return sum(1 for e in self.svc.endpoints if e.port_for(self.sp.name, self.sp.protocol) is not None)

    @property
    def has_internal_endpoints(self) -> bool:
        return bool(self.local_endpoints if self.internal_policy_local else self.cluster_endpoints)

    @property
    def has_external_endpoints(self) -> bool:
        return bool(self.local_endpoints if self.external_policy_local else self.cluster_endpoints)

    # -- what syncProxyRules derives, the same in both modes -------------------------------------

    @property
    def uses_cluster_chain(self) -> bool:
        """KUBE-SVC- / service-: the random choice among the cluster-wide endpoints."""
        return bool(self.cluster_endpoints) and self.uses_cluster_endpoints

    @property
    def uses_local_chain(self) -> bool:
        """KUBE-SVL- / local-: the same among this node's endpoints."""
        return bool(self.local_endpoints) and self.uses_local_endpoints

    @property
    def uses_external_chain(self) -> bool:
        """KUBE-EXT- / external-: traffic to the node port, external and load-balancer IPs."""
        return self.has_endpoints and self.externally_accessible

    @property
    def uses_firewall_chain(self) -> bool:
        """KUBE-FW- / firewall-: loadBalancerSourceRanges."""
        return self.has_endpoints and bool(self.svc.load_balancer_ips) and bool(self.source_ranges)

    def _filter(self, has: bool) -> str | None:
        if not self.has_endpoints:
            return "REJECT"           # "has no endpoints"
        return None if has else "DROP"   # "has no local endpoints"

    @property
    def internal_filter(self) -> str | None:
        """What happens to cluster-IP traffic with nowhere to go: REJECT, DROP, or None (it has)."""
        return self._filter(self.has_internal_endpoints)

    @property
    def external_filter(self) -> str | None:
        """The same for node-port, external-IP and load-balancer-IP traffic."""
        return self._filter(self.has_external_endpoints)

    @property
    def affinity(self) -> int | None:
        """ClientIP affinity timeout in seconds, or None."""
        return self.svc.affinity_timeout if self.svc.session_affinity == "ClientIP" else None

    @property
    def source_ranges(self) -> tuple[IPv4Network, ...]:
        return self.svc.load_balancer_source_ranges


def port_name(svc: Service, sp: ServicePort) -> str:
    return f"{svc.namespace}/{svc.name}" + (f":{sp.name}" if sp.name else "")


def by_endpoint(targets) -> tuple[Target, ...]:
    """kube-proxy's endpoint order: sorted by "ip:port" as text (10.0.0.10 before 10.0.0.9)."""
    return tuple(sorted(targets, key=lambda t: f"{t.address}:{t.port}"))


def view(svc: Service, sp: ServicePort, node: str) -> PortView:
    probe = PortView(svc, sp, port_name(svc, sp), sp.protocol.lower(), (), (), False)
    cluster = by_endpoint(cluster_targets(svc, sp)) if probe.uses_cluster_endpoints else ()
    local = by_endpoint(local_targets(svc, sp, node)) if probe.uses_local_endpoints else ()
    # Any usable endpoint anywhere: cluster_targets already falls back to serving terminating ones.
    anywhere = bool(cluster_targets(svc, sp))
    return PortView(svc, sp, probe.name, probe.protocol, cluster, local, anywhere)


def views(table: ServiceTable, node: str) -> list[PortView]:
    """Every service port of the table, in a fixed order (service key, then port order)."""
    return [view(svc, sp, node) for svc in table for sp in svc.ports]
