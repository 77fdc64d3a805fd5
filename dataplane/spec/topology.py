"""What a lab is made of: the topology a scenario describes, with every address resolved.

Pure data, no kernel: `scenario.py` fills a TopologySpec (defaults applied, everything validated)
and `plan.py` turns it into the namespaces, links, addresses and routes to create.

The three network models of Kubernetes are choices of routes, not of devices:
  flat        the underlay routes every pod CIDR to its node: outside hosts reach pod IPs directly
  island      pod CIDRs are routed only between nodes: outside hosts see node IPs only
  air-gapped  the underlay does not forward at all and nodes have no default route
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

NETWORK_MODELS = ("flat", "island", "air-gapped")
DEFAULT_PORTS = (("http", 8080, "TCP"), ("udp", 8080, "UDP"))

# Interface names are derived from object names ("v-" + name), and Linux caps them at 15 bytes.
IFNAME_PREFIX = "v-"
IFNAMSIZ = 15
MAX_NAME = IFNAMSIZ - len(IFNAME_PREFIX)
MAX_LAB_NAME = 20
RESERVED_NAMES = ("underlay",)  # namespace names the lab uses itself


@dataclass(frozen=True)
class PortSpec:
    name: str
    port: int
    protocol: str  # TCP | UDP


@dataclass(frozen=True)
class NodeSpec:
    name: str
    ip: IPv4Address
    pod_cidr: IPv4Network
    ports: tuple[PortSpec, ...] = ()   # servers run in the node's namespace (host network)


@dataclass(frozen=True)
class PodSpec:
    name: str
    node: str
    ip: IPv4Address
    namespace: str = "default"          # the Kubernetes namespace, for selectors
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[PortSpec, ...] = ()
    ready: bool = True
    terminating: bool = False

    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class HostSpec:
    """A machine outside the cluster, on the underlay's outside segment."""
    name: str
    ip: IPv4Address
    ports: tuple[PortSpec, ...] = ()


# Every lab node's net.ipv4.ip_local_port_range (Linux's default, set explicitly): the ports the
# kernel gives the node's own sockets. Flows masqueraded to the node's IP take their ports from
# NAT_PORT_RANGE, outside it, so that a node process and a NAT flow never meet on one tuple.
NODE_LOCAL_PORTS = (32768, 60999)
NAT_PORT_RANGE = (61000, 65535)


@dataclass(frozen=True)
class MasqueradeSpec:
    """Egress masquerade as ip-masq-agent configures it, and the node-IP port range (eBPF)."""
    enabled: bool
    non_masquerade: tuple[IPv4Network, ...]   # destinations reached with the pod's own address
    masq_link_local: bool = False             # 169.254.0.0/16 is exempt unless this is set
    port_range: tuple[int, int] = NAT_PORT_RANGE


@dataclass(frozen=True)
class TopologySpec:
    network: str                  # the network model: flat | island | air-gapped (YAML: topology.model)
    cluster_cidr: IPv4Network
    service_cidr: IPv4Network
    node_cidr: IPv4Network        # the nodes' shared underlay segment
    outside_cidr: IPv4Network     # the outside hosts' segment, behind the underlay router
    nodes: tuple[NodeSpec, ...]
    pods: tuple[PodSpec, ...] = ()
    hosts: tuple[HostSpec, ...] = ()
    mtu: int = 1500
    outside_link_mtu: int | None = None   # the underlay's links toward outside hosts, if narrower
    masquerade: MasqueradeSpec | None = None
    service_route: str | None = None      # the node the underlay routes the service CIDR to

    @property
    def node_gateway(self) -> IPv4Address:
        return gateway_of(self.node_cidr)

    @property
    def outside_gateway(self) -> IPv4Address:
        return gateway_of(self.outside_cidr)

    def node(self, name: str) -> NodeSpec:
        return next(n for n in self.nodes if n.name == name)

    def find(self, name: str):
        """The pod, node or outside host of that name (names are unique across the three)."""
        for group in (self.pods, self.nodes, self.hosts):
            for obj in group:
                if obj.name == name:
                    return obj
        return None


def gateway_of(net: IPv4Network) -> IPv4Address:
    """The underlay router's address on a segment: the last usable one (10.240.0.254 in a /24)."""
    return net.broadcast_address - 1



