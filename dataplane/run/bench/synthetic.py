"""Synthetic labs for benchmarks and scale tests: one node with pods `web` and `client`, and
tables of N ClusterIP services on `web`."""
from __future__ import annotations

import os
import tempfile
from ipaddress import IPv4Address

from ...spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable

FIRST_VIP = IPv4Address("10.96.0.1")
ONE_NODE = """\
name: one-node
topology:
  model: island
  nodes: [node1]
  pods: [{name: web, node: node1}, {name: client, node: node1}]
"""


def topology_of(text: str):
    """The TopologySpec of a scenario's text, loaded (and validated) as a file would be."""
    from ...spec.scenario import load
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "topology.yaml")
        with open(path, "w") as f:
            f.write(text)
        return load(path).topology


def one_node():
    """The TopologySpec of ONE_NODE (web is 10.0.1.2, the default endpoint of `services`)."""
    return topology_of(ONE_NODE)


def vip(i: int) -> IPv4Address:
    return FIRST_VIP + i


def services(n: int, pod_ip="10.0.1.2", pod="web", node="node1", two_endpoints=(), without=()) -> ServiceTable:
    """n services `svc-NNNN` (port 80 -> 8080/TCP) on `pod`; those in `two_endpoints` get a second
    endpoint (an address no pod has), those in `without` are left out."""
    t = ServiceTable()
    port = (EndpointPort("", 8080, "TCP"),)
    for i in range(n):
        if i in without:
            continue
        eps = [Endpoint(IPv4Address(pod_ip), port, node, pod)]
        if i in two_endpoints:
            eps.append(Endpoint(IPv4Address(pod_ip) + 1, port, node, None))
        t.add(Service("default", f"svc-{i:05d}", "ClusterIP", vip(i), (ServicePort("", 80, "TCP", 8080),),
                      endpoints=tuple(eps)))
    return t
