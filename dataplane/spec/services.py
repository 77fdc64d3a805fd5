"""Service specs -> the service table. One parser for both the scenario's `services:` list and
Kubernetes `Service` manifests (whose `spec` has the same fields), and endpoint resolution:
selectors to lab pods, as the EndpointSlice controller does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network

from .table import DEFAULT_AFFINITY_TIMEOUT, PROTOCOLS, SERVICE_TYPES, Endpoint, EndpointPort, Service, ServicePort
from .yamldoc import Doc

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Spec fields Kubernetes prints that change nothing in a single-stack IPv4 lab.
IGNORED_SPEC_FIELDS = ("clusterIPs", "ipFamilies", "ipFamilyPolicy", "allocateLoadBalancerNodePorts",
                       "loadBalancerClass", "trafficDistribution")


@dataclass
class ServiceDefaults:
    """Cluster settings that allocate what a spec leaves out, as the API server would."""
    service_cidr: IPv4Network
    node_port_range: tuple[int, int] = (30000, 32767)
    used_ips: set = field(default_factory=set)
    used_node_ports: set = field(default_factory=set)

    def next_ip(self) -> IPv4Address:
        # .0 is the network and .1 is the apiserver's "kubernetes" service by convention.
        for ip in self.service_cidr.hosts():
            if int(ip) - int(self.service_cidr.network_address) >= 10 and ip not in self.used_ips:
                self.used_ips.add(ip)
                return ip
        raise ValueError(f"service CIDR {self.service_cidr} is full")

    def next_node_port(self) -> int:
        for port in range(self.node_port_range[0], self.node_port_range[1] + 1):
            if port not in self.used_node_ports:
                self.used_node_ports.add(port)
                return port
        raise ValueError("node port range is full")


class Ignored(Exception):
    """A valid object the dataplane does not handle (headless, ExternalName): reported, not an error."""


def check_name(doc: Doc, key: str, value: str, what: str) -> None:
    if not DNS_LABEL.match(value) or len(value) > 63:
        doc.fail(key, f"{what} {value!r} is not a DNS label (lowercase letters, digits and '-', "
                      f"starting and ending with a letter or digit, at most 63 characters)")


def parse_service(spec: Doc, name: str, namespace: str, defaults: ServiceDefaults,
                  lb_ips: tuple = (), keep_ip=None) -> Service:
    """Read a Service spec (`spec` is the mapping holding `type`, `ports`, ...). Takes every field
    it knows; the caller calls `spec.done()` after taking its own."""
    type_ = spec.take_str("type", "ClusterIP", choices=SERVICE_TYPES + ("ExternalName",))
    for key in IGNORED_SPEC_FIELDS:
        spec.take(key, None, None)
    spec.take("externalName", str, None)
    publish = spec.take_bool("publishNotReadyAddresses", False)
    if type_ == "ExternalName":
        raise Ignored("ExternalName services are DNS-only: no dataplane involved")
    cluster_ip = _cluster_ip(spec, defaults, keep_ip)

    selector_doc = spec.take("selector", dict, None, "a mapping of label: value")
    selector = None
    if selector_doc is not None:
        selector = tuple(sorted((str(k), str(v)) for k, v in selector_doc.items()))
    ports = _ports(spec, type_, defaults)
    affinity, timeout = _affinity(spec)
    itp = spec.take_str("internalTrafficPolicy", "Cluster", choices=("Cluster", "Local"))
    etp = spec.take_str("externalTrafficPolicy", "Cluster", choices=("Cluster", "Local"))
    ext_ips = tuple(_ip_item(x) for x in spec.items("externalIPs"))
    lb_ip = spec.take_ip("loadBalancerIP", None)
    ranges = tuple(_cidr_item(x) for x in spec.items("loadBalancerSourceRanges"))
    hc = _health_check_node_port(spec, type_, etp, defaults)
    if lb_ip is not None:
        lb_ips = tuple(lb_ips) + (lb_ip,)
    return Service(namespace=namespace, name=name, type=type_, cluster_ip=cluster_ip,
                   ports=ports, selector=selector, session_affinity=affinity,
                   affinity_timeout=timeout, internal_traffic_policy=itp,
                   external_traffic_policy=etp, external_ips=ext_ips,
                   load_balancer_ips=tuple(lb_ips), load_balancer_source_ranges=ranges,
                   health_check_node_port=hc, publish_not_ready_addresses=publish,
                   source=f"{spec.where()} {spec.path}")


def _cluster_ip(spec: Doc, defaults: ServiceDefaults, keep_ip) -> IPv4Address:
    raw = spec.take("clusterIP", str, None, "an IPv4 address, or None for a headless service")
    if raw == "None":
        raise Ignored("headless service (clusterIP: None): DNS-only, no virtual IP to serve")
    if raw is None and keep_ip is not None:
        defaults.used_ips.add(keep_ip)
        return keep_ip                        # an updated service keeps its cluster IP
    if raw is None:
        return defaults.next_ip()
    cluster_ip = spec.take_ip("clusterIP")
    if cluster_ip not in defaults.service_cidr:
        spec.fail("clusterIP", f"{cluster_ip} is outside the service CIDR {defaults.service_cidr}")
    if cluster_ip in defaults.used_ips:
        spec.fail("clusterIP", f"{cluster_ip} is already the cluster IP of another service")
    defaults.used_ips.add(cluster_ip)
    return cluster_ip


def _ports(spec: Doc, type_: str, defaults: ServiceDefaults) -> tuple[ServicePort, ...]:
    ports, seen = [], set()
    for p in spec.items("ports"):
        if not isinstance(p, Doc):
            p.fail("expected a mapping with port, protocol, targetPort")
        sp = _port(p, type_, defaults)
        if sp.name and sp.name in seen:
            p.fail("name", f"duplicate port name {sp.name!r}")
        if (sp.port, sp.protocol) in seen:
            p.fail("port", f"duplicate port {sp.port}/{sp.protocol}")
        seen.update({sp.name, (sp.port, sp.protocol)})
        ports.append(sp)
    if not ports:
        spec.fail("ports", "a service needs at least one port")
    if len(ports) > 1 and any(not p.name for p in ports):
        spec.fail("ports", "every port of a multi-port service needs a name")
    return tuple(ports)


def _port(p: Doc, type_: str, defaults: ServiceDefaults) -> ServicePort:
    pname = p.take_str("name", "")
    if pname:
        check_name(p, "name", pname, "port name")
    port = p.take_int("port", lo=1, hi=65535, expect="a port number from 1 to 65535")
    proto = p.take_str("protocol", "TCP", choices=PROTOCOLS)
    target = p.take("targetPort", (int, str), port, "a port number or a named container port")
    if isinstance(target, int) and not 1 <= target <= 65535:
        p.fail("targetPort", f"expected a port number from 1 to 65535, got {target}")
    p.take("appProtocol", str, None)
    node_port = p.take_int("nodePort", None, lo=1, hi=65535, expect="a port number from 1 to 65535")
    lo, hi = defaults.node_port_range
    if node_port is not None and not lo <= node_port <= hi:
        p.fail("nodePort", f"{node_port} is outside the node port range {lo}-{hi}")
    if type_ == "ClusterIP" and node_port is not None:
        p.fail("nodePort", "a ClusterIP service has no node port (use type: NodePort)")
    if type_ in ("NodePort", "LoadBalancer"):
        if node_port is None:
            node_port = defaults.next_node_port()
        elif node_port in defaults.used_node_ports:
            p.fail("nodePort", f"node port {node_port} is already used by another service")
        defaults.used_node_ports.add(node_port)
    p.done()
    return ServicePort(pname, port, proto, target, node_port)


def _affinity(spec: Doc) -> tuple[str, int]:
    affinity = spec.take_str("sessionAffinity", "None", choices=("None", "ClientIP"))
    timeout = DEFAULT_AFFINITY_TIMEOUT
    cfg = spec.sub("sessionAffinityConfig", None)
    if cfg is not None:
        client = cfg.sub("clientIP", None)
        if client is not None:
            timeout = client.take_int("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT, lo=1, hi=86400)
            client.done()
        cfg.done()
    return affinity, timeout


def _health_check_node_port(spec: Doc, type_: str, etp: str, defaults: ServiceDefaults) -> int | None:
    hc = spec.take_int("healthCheckNodePort", None, lo=1, hi=65535)
    if type_ == "ClusterIP" and etp != "Cluster":
        spec.fail("externalTrafficPolicy", "only NodePort and LoadBalancer services have external traffic")
    if hc is not None and not (type_ == "LoadBalancer" and etp == "Local"):
        spec.fail("healthCheckNodePort", "only a LoadBalancer service with externalTrafficPolicy Local has one "
                  "(as the Kubernetes API requires)")
    if type_ == "LoadBalancer" and etp == "Local" and hc is None:
        hc = defaults.next_node_port()
    return hc


def _ip_item(item) -> IPv4Address:
    try:
        return IPv4Address(item.value)
    except (ValueError, TypeError):
        _fail_item(item, f"expected an IPv4 address, got {item.value!r}")


def _cidr_item(item) -> IPv4Network:
    try:
        return IPv4Network(item.value)
    except (ValueError, TypeError):
        _fail_item(item, f"expected an IPv4 CIDR such as 192.0.2.0/24, got {item.value!r}")


def _fail_item(item, message):
    if isinstance(item, Doc):
        item.fail(None, message)
    item.fail(message)


def endpoints_from_pods(svc: Service, pods) -> tuple:
    """What the EndpointSlice controller would publish for a selector service in the lab."""
    if not svc.selector:
        return ()
    want = dict(svc.selector)
    out = []
    for pod in pods:
        labels = pod.label_map()
        if pod.namespace != svc.namespace or any(labels.get(k) != v for k, v in want.items()):
            continue
        ports = []
        for sp in svc.ports:
            if isinstance(sp.target_port, int):
                ports.append(EndpointPort(sp.name, sp.target_port, sp.protocol))
            else:
                named = next((p for p in pod.ports if p.name == sp.target_port and p.protocol == sp.protocol), None)
                if named is not None:
                    ports.append(EndpointPort(sp.name, named.port, sp.protocol))
        ready = (pod.ready and not pod.terminating) or svc.publish_not_ready_addresses
        out.append(Endpoint(address=pod.ip, ports=tuple(ports), node=pod.node, pod=pod.name,
                            ready=ready, serving=pod.ready, terminating=pod.terminating))
    return tuple(out)


def with_endpoints(svc: Service, endpoints) -> Service:
    return replace(svc, endpoints=tuple(endpoints))
