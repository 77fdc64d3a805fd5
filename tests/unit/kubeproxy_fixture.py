"""kube-proxy's TestOverallIPTablesRules / TestOverallNFTablesRules fixture as a ServiceTable:
six services on node `test-node` (192.168.0.2), pod CIDR 10.0.0.0/8, service CIDR 172.30.0.0/16."""
from __future__ import annotations

from ipaddress import IPv4Address as A, IPv4Network as N

from dataplane.spec.topology import NodeSpec, TopologySpec
from dataplane.spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable

NODE = "test-node"
SPEC = TopologySpec(network="flat", cluster_cidr=N("10.0.0.0/8"), service_cidr=N("172.30.0.0/16"),
                    node_cidr=N("192.168.0.0/24"), outside_cidr=N("203.0.113.0/24"),
                    nodes=(NodeSpec(NODE, A("192.168.0.2"), N("10.0.0.0/24")),))


def ep(ip, node=None, port=80):
    return Endpoint(A(ip), (EndpointPort("p80", port, "TCP"),), node, None)


def port(node_port=None):
    return ServicePort("p80", 80, "TCP", 80, node_port)


def fixture() -> ServiceTable:
    t = ServiceTable()
    t.add(Service("ns1", "svc1", "ClusterIP", A("172.30.0.41"), (port(),), endpoints=(ep("10.180.0.1"),)))
    t.add(Service("ns2", "svc2", "LoadBalancer", A("172.30.0.42"), (port(3001),),
                  external_traffic_policy="Local", external_ips=(A("192.168.99.22"),),
                  load_balancer_ips=(A("1.2.3.4"),), health_check_node_port=30000,
                  endpoints=(ep("10.180.0.2"),)))
    t.add(Service("ns3", "svc3", "NodePort", A("172.30.0.43"), (port(3003),), endpoints=(ep("10.180.0.3"),)))
    t.add(Service("ns4", "svc4", "NodePort", A("172.30.0.44"), (port(),), external_ips=(A("192.168.99.33"),),
                  endpoints=(ep("10.180.0.4"), ep("10.180.0.5", NODE))))
    t.add(Service("ns5", "svc5", "LoadBalancer", A("172.30.0.45"), (port(3002),),
                  # kube-proxy's fixture also sets HealthCheckNodePort 30000 here, which kube-proxy
                  # ignores with eTP Cluster; this model, like the API server, cannot hold it.
                  load_balancer_ips=(A("5.6.7.8"),),
                  load_balancer_source_ranges=(N("203.0.113.0/25"),), session_affinity="ClientIP",
                  endpoints=(ep("10.180.0.3"),)))
    t.add(Service("ns6", "svc6", "ClusterIP", A("172.30.0.46"), (port(),)))
    return t
