"""A real cluster's services as the bench's background: `dataplane bench ... --services-from DUMP`.

The dump goes through `dataplane import` (spec/importer.py) and is loaded as its scenario would be,
so the services keep what the importer keeps: types, ports, node ports, traffic policies,
affinity, every endpoint with its conditions and node. Then they are moved onto the bench lab, `scale`
times over:
  cluster IPs    given again, in order, from BACKGROUND_VIPS (inside the bench's service CIDR)
  endpoints      each address of the dump gets one of BACKGROUND_PODS (in the cluster CIDR, outside
                 every node's pod CIDR: no pod answers there; these services are load, not targets),
                 the same one in every copy, as copies of a service select the same pods
  nodes          the dump's nodes taken in turn as node1 and node2
  copies         copy k > 0 is named NAME-xK; its node ports are given again from the free ports of
                 the range while they last, after that it is a ClusterIP service
  load balancers external and load-balancer IPs are left out (the bench lab routes none), so a
                 LoadBalancer becomes a NodePort with the same node ports, and its health-check
                 node port is left out too
Everything changed is listed in `notes`, with counts.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address

from ...spec.importer import import_dump
from .lab import NODE_PORT

BACKGROUND_VIPS = IPv4Address("10.104.0.1")
BACKGROUND_PODS = IPv4Address("10.0.128.1")       # 10.0.128.0/17: no node's pod CIDR
MAX_BACKGROUND = 200_000
NODE_PORTS = range(30000, 32768)


@dataclass
class Background:
    source: str
    services: list
    notes: list = field(default_factory=list)


def from_dump(path: str, scale: int = 1) -> Background:
    from ...spec.scenario import load
    imported = import_dump(path)
    with tempfile.TemporaryDirectory() as d:
        scenario_path = os.path.join(d, "imported.yaml")
        with open(scenario_path, "w") as f:
            f.write(imported.text(path))
        scenario = load(scenario_path)
    dump = sorted(scenario.services, key=lambda s: s.key)
    if len(dump) * scale > MAX_BACKGROUND:
        raise ValueError(f"{len(dump)} services x {scale} is more than the bench holds ({MAX_BACKGROUND:,})")
    nodes = {n.name: ("node1", "node2")[i % 2] for i, n in enumerate(scenario.topology.nodes)}
    addresses: dict = {}
    free_ports = [p for p in NODE_PORTS if p != NODE_PORT
                  and not any(sp.node_port == p for s in dump for sp in s.ports)]
    counts = {"lb": 0, "renumbered": 0, "clusterip": 0}
    out = []
    for copy in range(scale):
        for svc in dump:
            out.append(_moved(svc, copy, len(out), nodes, addresses, free_ports, counts))
    notes = [f"{len(dump)} services from {os.path.basename(path)}" + (f", {scale} copies" if scale > 1 else ""),
             *imported.notes]
    if counts["lb"]:
        notes.append(f"{counts['lb']} LoadBalancer or external-IP services keep their node ports but not their "
                     "IPs (the bench lab routes none)")
    if counts["renumbered"]:
        notes.append(f"{counts['renumbered']} node ports of copies given again from the free ones")
    if counts["clusterip"]:
        notes.append(f"{counts['clusterip']} copies became ClusterIP services: the node-port range was used up")
    return Background(path, out, notes)


def _moved(svc, copy: int, index: int, nodes: dict, addresses: dict, free_ports: list, counts: dict):
    eps = tuple(replace(e, address=_address(e.address, addresses), node=nodes.get(e.node, "node1") if e.node else None,
                        pod=None) for e in svc.endpoints)
    kind, ports = svc.type, svc.ports
    if svc.load_balancer_ips or svc.external_ips or kind == "LoadBalancer":
        counts["lb"] += copy == 0
        kind = "NodePort" if kind == "LoadBalancer" else kind
    if copy == 0 and any(p.node_port == NODE_PORT for p in ports):      # the bench's own node port
        ports = tuple(replace(p, node_port=free_ports.pop(0)) if p.node_port == NODE_PORT else p for p in ports)
        counts["renumbered"] += 1
    if copy and kind == "NodePort":
        if len(free_ports) >= len(ports):
            ports = tuple(replace(p, node_port=free_ports.pop(0)) for p in ports)
            counts["renumbered"] += len(ports)
        else:
            kind, ports = "ClusterIP", tuple(replace(p, node_port=None) for p in ports)
            counts["clusterip"] += 1
    name = svc.name if copy == 0 else f"{svc.name[:63 - len(str(copy)) - 2]}-x{copy}"
    return replace(svc, name=name, type=kind, ports=ports, cluster_ip=BACKGROUND_VIPS + index, endpoints=eps,
                   external_ips=(), load_balancer_ips=(), load_balancer_source_ranges=(),
                   health_check_node_port=None, selector=None)


MAX_ADDRESSES = 32766      # hosts of 10.0.128.0/17 from BACKGROUND_PODS on


def _address(original: IPv4Address, addresses: dict) -> IPv4Address:
    if original not in addresses:
        if len(addresses) >= MAX_ADDRESSES:
            raise ValueError(f"the dump has more than {MAX_ADDRESSES:,} endpoint addresses; the bench lab gives "
                             f"its background endpoints 10.0.128.0/17, which holds no more")
        addresses[original] = BACKGROUND_PODS + len(addresses)
    return addresses[original]
