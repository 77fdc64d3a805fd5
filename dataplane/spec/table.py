"""The service table every backend renders (kube-proxy's ServicePort/Endpoint, trimmed to a lab).

Scenario YAML and Kubernetes manifests both load into a ServiceTable; backends (ebpf, iptables,
nftables, the emulator) only render it. Which endpoints are eligible for a packet is decided once,
in policy.py, so backends cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

PROTOCOLS = ("TCP", "UDP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds: Kubernetes' default sessionAffinityConfig timeout


@dataclass(frozen=True)
class ServicePort:
    name: str                   # "" for a single unnamed port
    port: int                   # the port on the cluster IP (and external IPs)
    protocol: str               # TCP | UDP
    target_port: int | str      # a number, or the name of a container port on the endpoints
    node_port: int | None = None


@dataclass(frozen=True)
class EndpointPort:
    name: str
    port: int
    protocol: str


@dataclass(frozen=True)
class Endpoint:
    address: IPv4Address
    ports: tuple[EndpointPort, ...]
    node: str | None            # the node the endpoint runs on (traffic policies need it)
    pod: str | None             # the lab pod behind the address
    ready: bool = True
    serving: bool = True
    terminating: bool = False

    def port_for(self, name: str, protocol: str) -> int | None:
        for p in self.ports:
            if p.name == name and p.protocol == protocol:
                return p.port
        return None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str
    cluster_ip: IPv4Address
    ports: tuple[ServicePort, ...]
    selector: tuple[tuple[str, str], ...] | None = None
    session_affinity: str = "None"            # None | ClientIP
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    internal_traffic_policy: str = "Cluster"  # Cluster | Local
    external_traffic_policy: str = "Cluster"  # Cluster | Local
    external_ips: tuple[IPv4Address, ...] = ()
    load_balancer_ips: tuple[IPv4Address, ...] = ()
    load_balancer_source_ranges: tuple[IPv4Network, ...] = ()
    health_check_node_port: int | None = None
    publish_not_ready_addresses: bool = False
    endpoints: tuple[Endpoint, ...] = ()
    source: str = ""                          # where it was declared (file and field), for messages

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def port(self, name_or_number) -> ServicePort | None:
        for p in self.ports:
            if p.name == name_or_number or p.port == name_or_number:
                return p
        return None


@dataclass
class ServiceTable:
    """Services by namespace/name. Backends read it; only loaders write it."""

    services: dict[str, Service] = field(default_factory=dict)

    def add(self, svc: Service) -> None:
        self.services[svc.key] = svc

    def get(self, name: str) -> Service | None:
        """Look up by "namespace/name" or, for the default namespace, by plain name."""
        return self.services.get(name) or self.services.get(f"default/{name}")

    def __iter__(self):
        return iter(sorted(self.services.values(), key=lambda s: s.key))

    def __len__(self):
        return len(self.services)
