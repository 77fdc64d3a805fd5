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

from .model import Endpoint, Service, ServicePort


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


def stale_targets(old, new) -> set:
    """(address, port, protocol) of endpoints that left a service port between two tables: their
    flows are stale (the UDP problem of kube-proxy #48370) and every backend flushes them."""
    def targets(table):
        out = set()
        for svc in table or ():
            for sp in svc.ports:
                proto = {"TCP": 6, "UDP": 17}[sp.protocol]
                out |= {(t.address, t.port, proto) for t in all_targets(svc, sp)}
        return out
    return targets(old) - targets(new)


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
