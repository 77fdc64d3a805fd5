"""Which endpoints may receive a packet: decided once, here, for every backend.

kube-proxy's rules (pkg/proxy/topology.go, CategorizeEndpoints), for one service port:
  - an endpoint counts only if it serves this port (has a port of this name and protocol);
  - cluster-wide traffic goes to the ready endpoints; when none is ready, to the serving
    terminating ones (so that a rolling update never leaves a service with nothing);
  - node-local traffic (internalTrafficPolicy or externalTrafficPolicy Local) goes to the ready
    endpoints on that node; when none is ready there, to that node's serving terminating ones.
Endpoints are returned in a fixed order (address, port) so every backend numbers them alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from .table import Endpoint, Service, ServicePort


@dataclass(frozen=True)
class Target:
    address: IPv4Address
    port: int
    pod: str | None
    node: str | None


def _usable(svc: Service, sp: ServicePort) -> list[tuple[Endpoint, int]]:
    out = []
    for ep in svc.endpoints:
        port = ep.port_for(sp.name, sp.protocol)
        if port is not None:
            out.append((ep, port))
    return out


def _with_fallback(candidates: list[tuple[Endpoint, int]]) -> list[Target]:
    ready = [(e, p) for e, p in candidates if e.ready]
    chosen = ready or [(e, p) for e, p in candidates if e.serving and e.terminating]
    return sorted((Target(e.address, p, e.pod, e.node) for e, p in chosen),
                  key=lambda t: (int(t.address), t.port))


def cluster_targets(svc: Service, sp: ServicePort) -> list[Target]:
    return _with_fallback(_usable(svc, sp))


def local_targets(svc: Service, sp: ServicePort, node: str) -> list[Target]:
    return _with_fallback([(e, p) for e, p in _usable(svc, sp) if e.node == node])


def internal_targets(svc: Service, sp: ServicePort, node: str) -> list[Target]:
    """Where a pod on `node` reaching the cluster IP may go."""
    if svc.internal_traffic_policy == "Local":
        return local_targets(svc, sp, node)
    return cluster_targets(svc, sp)


def udp_serving(table, routed: bool = False):
    """kube-proxy's conntrack reconciliation (pkg/proxy/conntrack/cleanup.go, CleanStaleEntries):
    for every UDP service port with at least one serving endpoint, the serving endpoint IPs, by
    frontend: ({(service IP, port): IPs} for cluster, load-balancer and external IPs, {node port:
    IPs}). A UDP flow to one of these frontends answered by another address is stale (the UDP
    problem of kubernetes#48370): deleted. A service port without serving endpoints is skipped,
    and so is a frontend gone with its service. With `routed`, the ports judged are the same but
    their IPs are every endpoint's, in any state: a superset of where routing may have sent a
    flow (a ready endpoint need not be serving: publishNotReadyAddresses), for
    FlowKeep.keeps_all_that's earlier side."""
    by_ip, by_node_port = {}, {}
    for svc in table or ():
        for sp in svc.ports:
            if sp.protocol != "UDP":
                continue
            ips = {e.address for e in svc.endpoints if e.serving and e.port_for(sp.name, sp.protocol) is not None}
            if not ips:
                continue
            if routed:
                ips = {e.address for e in svc.endpoints if e.port_for(sp.name, sp.protocol) is not None}
            for ip in (svc.cluster_ip, *svc.external_ips, *svc.load_balancer_ips):
                by_ip[(ip, sp.port)] = ips
            if sp.node_port:
                by_node_port[sp.node_port] = ips
    return by_ip, by_node_port


@dataclass(frozen=True)
class FlowKeep:
    """Which flows to a frontend a sync lets live, decided from the new table for every backend
    that keeps its own flow state (the ebpf backend, the oracle; kube-proxy's modes apply
    the UDP half with conntrack -D):
      UDP  as kube-proxy's reconciliation (udp_serving): per (frontend, endpoint IP), so a flow of
           a service its endpoint left is flushed even while that pod still backs another one;
      TCP  the eBPF dataplane's choice (docs/ebpf.md): a flow lives while its backend (address,
           port) is still an endpoint, in any state, of its frontend's service port; kube-proxy
           leaves TCP entries alone (docs/differences.md)."""
    udp_ips: dict          # (frontend IP, port) -> serving endpoint IPs
    udp_node_ports: dict   # node port -> serving endpoint IPs
    tcp_ips: dict          # (frontend IP, port) -> {(endpoint IP, port)}
    tcp_node_ports: dict   # node port -> {(endpoint IP, port)}
    # ({(frontend IP, port, protocol)}, {(node port, protocol)}) judged, when a sync of a few
    # services judges only theirs (flow_keep's `only`); None: every frontend
    scope: tuple | None = None

    def keeps(self, proto: int, frontend, fport: int, backend, bport: int, node_ip) -> bool:
        """A flow of `proto` to frontend:fport, translated to backend:bport, on the node whose
        address is node_ip (a frontend at that address is a node port)."""
        frontend, backend = IPv4Address(frontend), IPv4Address(backend)
        node = node_ip is not None and frontend == IPv4Address(node_ip)
        if self.scope is not None and ((fport, proto) not in self.scope[1] if node
                                       else (frontend, fport, proto) not in self.scope[0]):
            return True
        if proto == 17:
            ips = self.udp_node_ports.get(fport) if node else self.udp_ips.get((frontend, fport))
            return ips is None or backend in ips
        if proto == 6:
            eps = self.tcp_node_ports.get(fport) if node else self.tcp_ips.get((frontend, fport))
            return eps is not None and (backend, bport) in eps
        return True

    def keeps_all_that(self, old: "FlowKeep") -> bool:
        """Does this keep let live every flow `old` may have let exist, in this keep's scope (a
        sync of a few services: flow_keep's `only`, the same keys for both; `old` built with
        `routed`, so that a UDP flow to a ready endpoint that is not serving counts)? Then the
        flows an earlier sync left (each judged by the keep of its time, which `old` is for these
        frontends) are all safe, and the sync need not look at them. (kube-proxy up to 1.28
        cleaned conntrack only for what its change tracker found stale; later ones reconcile every
        UDP entry of a service whenever a changed service has a UDP port, which a walk here does.)
        False when unsure (no scope)."""
        if self.scope is None:
            return False
        for proto, rules, old_rules, keys in (
                (17, self.udp_ips, old.udp_ips, [(ip, port) for ip, port, p in self.scope[0] if p == 17]),
                (17, self.udp_node_ports, old.udp_node_ports, [port for port, p in self.scope[1] if p == 17]),
                (6, self.tcp_ips, old.tcp_ips, [(ip, port) for ip, port, p in self.scope[0] if p == 6]),
                (6, self.tcp_node_ports, old.tcp_node_ports, [port for port, p in self.scope[1] if p == 6])):
            for key in keys:
                now, before = rules.get(key), old_rules.get(key)
                if proto == 17:           # None: no service serves it, every flow lives (kube-proxy)
                    if now is not None and (before is None or not before <= now):
                        return False
                elif before is not None and (now is None or not before <= now):   # None: none lives
                    return False
        return True


def flow_keep(table, only=None, old=None, routed: bool = False) -> FlowKeep:
    """The flows `table` lets live. With `only` (service keys changed since `old`), the flows to
    those services' frontends alone are judged, as they were in `old` and are in `table`; every
    other flow is kept: what a sync of those services alone may flush. `routed`: the UDP rule
    judged against every endpoint of a judged port, not its serving ones (udp_serving): the
    flows the table may have let exist, rather than those it lets live."""
    services = table if only is None else [table.services[k] for k in sorted(only) if k in table.services]
    scope = None
    if only is not None:
        ips, node_ports = set(), set()
        for t in (old, table):
            for svc in (t.services.get(k) for k in only) if t is not None else ():
                if svc is None:
                    continue
                for sp in svc.ports:
                    proto = 6 if sp.protocol == "TCP" else 17
                    ips.update((ip, sp.port, proto)
                               for ip in (svc.cluster_ip, *svc.external_ips, *svc.load_balancer_ips))
                    if sp.node_port:
                        node_ports.add((sp.node_port, proto))
        scope = (frozenset(ips), frozenset(node_ports))
    udp_ips, udp_node_ports = udp_serving(services, routed)
    tcp_ips, tcp_node_ports = {}, {}
    for svc in services or ():
        for sp in svc.ports:
            if sp.protocol != "TCP":
                continue
            eps = {(t.address, t.port) for t in all_targets(svc, sp)}
            for ip in (svc.cluster_ip, *svc.external_ips, *svc.load_balancer_ips):
                tcp_ips[(ip, sp.port)] = eps
            if sp.node_port:
                tcp_node_ports[sp.node_port] = eps
    return FlowKeep(udp_ips, udp_node_ports, tcp_ips, tcp_node_ports, scope)


def all_targets(svc: Service, sp: ServicePort) -> list[Target]:
    """Every endpoint of the port, eligible or not (terminating, unready): flows to these may
    continue; flows to an endpoint that left this list are stale."""
    return sorted((Target(e.address, p, e.pod, e.node) for e, p in _usable(svc, sp)),
                  key=lambda t: (int(t.address), t.port))


def health_checks(table, node: str) -> dict:
    """kube-proxy's health-check node ports on `node`: port -> (service key, ready local endpoints).
    Terminating endpoints do not count, so a node whose endpoints are all terminating fails its
    check and load balancers stop sending it new traffic."""
    out = {}
    for svc in table or ():
        if svc.health_check_node_port and svc.external_traffic_policy == "Local":
            local = {e.address for e in svc.endpoints if e.node == node and e.ready}
            out[svc.health_check_node_port] = (svc.key, len(local))
    return out
