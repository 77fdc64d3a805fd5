"""The service table every backend renders (kube-proxy's ServicePort/Endpoint, trimmed to a lab).

Scenario YAML and Kubernetes manifests both load into a ServiceTable; backends (ebpf, iptables,
nftables, the emulator) only render it. Which endpoints are eligible for a packet is decided once,
in policy.py, so backends cannot disagree.
"""
from __future__ import annotations

import itertools
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


_versions = itertools.count(1)


@dataclass(eq=False)
class ServiceTable:
    """Services by namespace/name. Backends read it; only loaders write it.

    A change tracker, as kube-proxy's: a table made by `updated` knows which services differ from
    the table it was made from (`changed`, for base `base_version`), so a backend that synced the
    base renders only those; `changes_from` answers for any earlier table, by comparison when the
    lineage does not say. Every table has a `version` of its own; a table changed by `add` after
    it was made forgets its lineage, and so does a copy. Change a table through `add` or
    `updated` only: a write into `services` behind their back is seen by neither the lineage nor
    the iteration order's cache."""

    services: dict[str, Service] = field(default_factory=dict)
    version: int = field(default_factory=lambda: next(_versions), repr=False)
    base_version: int | None = field(default=None, repr=False)
    changed: frozenset = field(default=frozenset(), repr=False)
    _sorted: list | None = field(default=None, repr=False)

    def add(self, svc: Service) -> None:
        self.services[svc.key] = svc
        self._sorted = None
        self.base_version = None
        self.version = next(_versions)

    def get(self, name: str) -> Service | None:
        """Look up by "namespace/name" or, for the default namespace, by plain name."""
        return self.services.get(name) or self.services.get(f"default/{name}")

    def updated(self, services=(), removed=()) -> "ServiceTable":
        """A new table: this one with `services` added or replaced and the keys `removed` gone,
        knowing what changed. This table is left as it was."""
        new = ServiceTable(dict(self.services))
        for key in removed:                 # first: a key both removed and given ends given
            new.services.pop(key, None)
        for svc in services:
            new.services[svc.key] = svc
        new.base_version = self.version
        new.changed = frozenset([s.key for s in services] + list(removed))
        return new

    def changes_from(self, old: "ServiceTable | None") -> frozenset:
        """The keys of the services that differ between `old` and this table (added, removed or
        changed in any field)."""
        if old is None:
            return frozenset(self.services)
        return self.changes_since(old.version, old.services)

    def changes_since(self, version: int, services: dict) -> frozenset:
        """The keys that differ from the table of `version`, whose services were `services` (a
        copy the caller kept): this table's lineage when it was made from that one, else a
        comparison (identity first, then equality)."""
        if self.base_version is not None and self.base_version == version:
            return self.changed
        keys = self.services.keys() | services.keys()
        mine = self.services
        return frozenset(k for k in keys if mine.get(k) is not services.get(k) and mine.get(k) != services.get(k))

    def __iter__(self):
        if self._sorted is None:
            self._sorted = sorted(self.services.values(), key=lambda s: s.key)
        return iter(self._sorted)

    def __len__(self):
        return len(self.services)

    def __copy__(self):
        return ServiceTable(dict(self.services))

    def __deepcopy__(self, memo):
        import copy
        return ServiceTable(copy.deepcopy(self.services, memo))

    def __eq__(self, other):
        return isinstance(other, ServiceTable) and self.services == other.services


def frontend_names(table: ServiceTable, node_addresses=()) -> dict:
    """Every frontend of the table in Kubernetes' words, for the debugging tools (`trace`,
    `maps`): (address text, port, "TCP"|"UDP") -> "namespace/name:port (kind)", the port by its
    name (its number when unnamed), the kind one of cluster IP, external IP, load-balancer IP,
    node port (at each of `node_addresses`)."""
    names = {}
    for svc in table:
        for sp in svc.ports:
            label = f"{svc.key}:{sp.name or sp.port}"
            if svc.cluster_ip is not None:
                names[(str(svc.cluster_ip), sp.port, sp.protocol)] = f"{label} (cluster IP)"
            for ip in svc.external_ips:
                names[(str(ip), sp.port, sp.protocol)] = f"{label} (external IP)"
            for ip in svc.load_balancer_ips:
                names[(str(ip), sp.port, sp.protocol)] = f"{label} (load-balancer IP)"
            if sp.node_port:
                for ip in node_addresses:
                    names[(str(ip), sp.node_port, sp.protocol)] = f"{label} (node port)"
    return names
