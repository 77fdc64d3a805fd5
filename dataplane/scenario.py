"""Scenario files -> Scenario: topology, services, checks. Validated whole before anything is built.

Every error names the file (and line), the field and what was expected; see docs/scenario-format.md
for the format with a commented example of every field.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network

from .checks import CheckSpec, parse_check
from .errors import ScenarioError
from .lab.topology import (DEFAULT_PORTS, IFNAMSIZ, IFNAME_PREFIX, MAX_NAME, MODELS, RESERVED_NAMES,
                           NAT_PORT_RANGE, NODE_LOCAL_PORTS, HostSpec, MasqueradeSpec, NodeSpec, PodSpec,
                           PortSpec, TopologySpec, gateway_of)
from .manifests import ManifestSet, load as load_manifest, resolve
from .model import PROTOCOLS, ServiceTable
from .services import DNS_LABEL, Ignored, ServiceDefaults, endpoints_from_pods, parse_service, with_endpoints
from .yamldoc import Doc, Scalar, load_all

# Addresses the lab itself uses and a scenario may not claim.
RESERVED_NETS = {"loopback": IPv4Network("127.0.0.0/8"), "link-local": IPv4Network("169.254.0.0/16")}


@dataclass(frozen=True)
class Sleep:
    seconds: float
    where: str = ""


@dataclass(frozen=True)
class Update:
    """The cluster changes (services, pod states); every backend syncs to `table`."""
    name: str
    table: ServiceTable
    where: str = ""


@dataclass
class Scenario:
    name: str
    file: str
    topology: TopologySpec
    services: ServiceTable                 # the table at the start
    steps: list                            # CheckSpec | Sleep | Update, in order
    description: str = ""
    ignored: list[str] = field(default_factory=list)
    frontend_routes: tuple = ()            # (LB or external IP, node) the underlay routes

    @property
    def checks(self) -> list[CheckSpec]:
        return [s for s in self.steps if isinstance(s, CheckSpec)]


class _Cluster:
    """The service model's view of the cluster as the scenario's steps change it."""

    def __init__(self, topology: TopologySpec, defaults: ServiceDefaults):
        self.pods = {p.name: p for p in topology.pods}
        self.defaults = defaults
        self.services: dict = {}          # key -> Service (endpoints resolved by table())
        self.given: dict = {}             # key -> endpoints from EndpointSlices (no selector)

    def parse_native(self, item: Doc, ignored: list, replacing: bool = False):
        if not isinstance(item, Doc):
            item.fail("expected a mapping (a Service spec with name and namespace)")
        sname = item.take_str("name")
        if not DNS_LABEL.match(sname):
            item.fail("name", f"{sname!r} is not a DNS label")
        ns = item.take_str("namespace", "default")
        old = self.services.get(f"{ns}/{sname}")
        if old is not None and not replacing:
            item.fail("name", f"duplicate service {ns}/{sname}")
        if old is not None:
            # the replaced service's addresses are free again; an unchanged clusterIP is kept
            self.defaults.used_ips.discard(old.cluster_ip)
            self.defaults.used_node_ports.difference_update(p.node_port for p in old.ports)
        try:
            svc = parse_service(item, sname, ns, self.defaults, keep_ip=old.cluster_ip if old else None)
        except Ignored as why:
            item.taken.update(item.value)
            ignored.append(f"{item.where()}: service {ns}/{sname}: {why}")
            return
        item.done()
        if not svc.selector:
            item.fail("selector", "a scenario service needs a selector (give endpoints without one "
                                  "as an EndpointSlice in a manifest)")
        self.services[svc.key] = svc
        self.given.pop(svc.key, None)

    def table(self) -> ServiceTable:
        t = ServiceTable()
        pods = list(self.pods.values())
        for key, svc in self.services.items():
            eps = self.given[key] if key in self.given else endpoints_from_pods(svc, pods)
            t.add(with_endpoints(svc, eps))
        return t

    def update(self, doc: Doc, ignored: list) -> str:
        name = doc.take_str("name", "update")
        for item in doc.items("services"):
            self.parse_native(item, ignored, replacing=True)
        for item in doc.items("deleteServices"):
            key = item.value if "/" in str(item.value) else f"default/{item.value}"
            if key not in self.services:
                item.fail(f"no service {key} to delete")
            svc = self.services.pop(key)
            self.given.pop(key, None)
            self.defaults.used_ips.discard(svc.cluster_ip)
            self.defaults.used_node_ports.difference_update(p.node_port for p in svc.ports)
        for item in doc.items("pods"):
            if not isinstance(item, Doc):
                item.fail("expected a mapping with the pod's name and what changes")
            pname = item.take_str("name")
            pod = self.pods.get(pname)
            if pod is None:
                item.fail("name", f"no pod named {pname!r} (pods cannot be added by an update)")
            labels = item.take("labels", dict, None, "a mapping of label: value")
            self.pods[pname] = replace(
                pod, ready=item.take_bool("ready", pod.ready),
                terminating=item.take_bool("terminating", pod.terminating),
                labels=pod.labels if labels is None else tuple(sorted((str(k), str(v)) for k, v in labels.items())))
            item.done()
        doc.done()
        return name


def load(path) -> Scenario:
    path = str(path)
    docs = load_all(path)
    if len(docs) != 1:
        raise ScenarioError(path, None, f"expected one YAML document, found {len(docs)}")
    root = Doc(path, docs[0])
    name = root.take_str("name", expect="the scenario's name, a DNS label")
    if not DNS_LABEL.match(name) or len(name) > 40:
        root.fail("name", f"{name!r} is not a DNS label of at most 40 characters")
    description = root.take_str("description", "")
    topo_doc = root.sub("topology")
    topology, node_port_range = parse_topology(topo_doc)

    defaults = ServiceDefaults(topology.service_cidr, node_port_range)
    cluster = _Cluster(topology, defaults)
    ignored = []
    for item in root.items("services"):
        cluster.parse_native(item, ignored)

    manifests = ManifestSet()
    pod_ips = {p.ip: (p.name, p.node) for p in topology.pods}
    for item in root.items("manifests"):
        if not isinstance(item.value, str):
            _fail(item, "expected a file path (relative to the scenario)")
        mpath = os.path.join(os.path.dirname(path), item.value)
        if not os.path.exists(mpath):
            _fail(item, f"manifest file {mpath} not found")
        load_manifest(mpath, defaults, pod_ips, manifests)
    for svc in manifests.services:
        if svc.key in cluster.services:
            raise ScenarioError(svc.source.split(" ")[0], "metadata.name", f"duplicate service {svc.key}")
        cluster.services[svc.key] = svc
        if svc.selector:
            ignored.extend(f"{s.where}: EndpointSlice {s.name}: service {svc.key} has a selector, so "
                           f"its endpoints come from the lab's pods" for s in manifests.slices
                           if s.service == svc.key)
        else:
            cluster.given[svc.key] = resolve(manifests, svc)
    for s in manifests.slices:
        if s.service not in cluster.services:
            ignored.append(f"{s.where}: EndpointSlice {s.name}: no service {s.service} in the scenario")
    ignored.extend(manifests.ignored)

    table = initial = cluster.table()
    routes = frontend_routes(initial, topology)
    steps, names = [], set()
    for item in root.items("checks"):
        if not isinstance(item, Doc):
            item.fail("expected a check (a mapping with from, to, port), {sleep: SECONDS} or {update: ...}")
        if item.has("sleep"):
            seconds = item.take("sleep", (int, float), expect="seconds, such as 2.5")
            if not 0 < seconds <= 3600:
                item.fail("sleep", f"expected seconds from 0 to 3600, got {seconds}")
            item.done()
            steps.append(Sleep(float(seconds), item.where()))
        elif item.has("update"):
            what = cluster.update(item.sub("update"), ignored)
            item.done()
            table = cluster.table()
            steps.append(Update(what, table, item.where()))
        else:
            steps.append(parse_check(item, topology, table, names))
    root.done()
    return Scenario(name=name, file=path, topology=topology, services=initial, steps=steps,
                    description=description, ignored=ignored, frontend_routes=routes)


def frontend_routes(table: ServiceTable, topology: TopologySpec) -> tuple:
    """Where the underlay sends each LoadBalancer and external IP, as a cloud load balancer with
    health checks would: to the first node with a local endpoint when externalTrafficPolicy is
    Local, else to the first node. Addresses must lie outside the lab's own networks."""
    from .policy import local_targets
    out = []
    for svc in table:
        for addr in (*svc.load_balancer_ips, *svc.external_ips):
            for net in (topology.cluster_cidr, topology.service_cidr, topology.node_cidr, topology.outside_cidr):
                if addr in net:
                    raise ScenarioError(svc.source.split(" ")[0], f"{svc.key}",
                                        f"LoadBalancer/external IP {addr} lies in the lab network {net}; "
                                        f"choose an address outside it (the underlay routes it to a node)")
            node = topology.nodes[0].name
            if svc.external_traffic_policy == "Local" and svc.ports:
                local = [n.name for n in topology.nodes if local_targets(svc, svc.ports[0], n.name)]
                node = local[0] if local else node
            if all(a != addr for a, _ in out):
                out.append((addr, node))
    return tuple(out)


def _fail(item, message):
    if isinstance(item, Scalar):
        item.fail(message)
    item.fail(None, message)


def parse_ports(doc: Doc, key: str = "ports") -> tuple:
    if not doc.has(key):
        return tuple(PortSpec(*p) for p in DEFAULT_PORTS)
    ports, seen = [], set()
    for item in doc.items(key):
        if isinstance(item, Scalar):
            # shorthand: 8080 or "8080/UDP"
            text = str(item.value)
            num, _, proto = text.partition("/")
            proto = proto or "TCP"
            if not num.isdigit() or proto not in PROTOCOLS or not 1 <= int(num) <= 65535:
                item.fail(f"expected a port such as 8080 or \"8080/UDP\" (1-65535, TCP or UDP), got {text!r}")
            p = PortSpec("", int(num), proto)
        else:
            p = PortSpec(item.take_str("name", ""),
                         item.take_int("port", lo=1, hi=65535, expect="a port number from 1 to 65535"),
                         item.take_str("protocol", "TCP", choices=PROTOCOLS))
            item.done()
        if (p.port, p.protocol) in seen:
            _fail(item, f"duplicate port {p.port}/{p.protocol}")
        seen.add((p.port, p.protocol))
        ports.append(p)
    return tuple(ports)


def _check_object_name(doc, key, name, names_seen, kind):
    if not isinstance(name, str) or not DNS_LABEL.match(name):
        doc.fail(key, f"{kind} name {name!r} is not a DNS label (lowercase letters, digits, '-')")
    if len(name) > MAX_NAME:
        doc.fail(key, f"{kind} name {name!r} is {len(name)} characters; at most {MAX_NAME}, because "
                      f"its interface is named {IFNAME_PREFIX + name!r} and Linux interface names "
                      f"have at most {IFNAMSIZ} characters")
    if name in RESERVED_NAMES:
        doc.fail(key, f"{name!r} is reserved for the lab's own namespace")
    if name in names_seen:
        doc.fail(key, f"duplicate name {name!r} (already a {names_seen[name]}; names are unique "
                      f"across nodes, pods and outside hosts)")
    names_seen[name] = kind


def parse_topology(doc: Doc) -> tuple[TopologySpec, tuple[int, int]]:
    model = doc.take_str("model", "flat", choices=MODELS)
    cluster = doc.take_cidr("clusterCIDR", IPv4Network("10.0.0.0/16"))
    mask = doc.take_int("nodeCIDRMaskSize", 24, lo=cluster.prefixlen, hi=30)
    services = doc.take_cidr("serviceCIDR", IPv4Network("10.96.0.0/12"))
    node_net = doc.take_cidr("nodeNetwork", IPv4Network("10.240.0.0/24"))
    outside_net = doc.take_cidr("outsideNetwork", IPv4Network("10.128.1.0/24"))
    mtu = doc.take_int("mtu", 1500, lo=576, hi=9000)
    outside_link_mtu = doc.take_int("outsideLinkMTU", None, lo=576, hi=9000, expect="an MTU from 576 to 9000")
    if outside_link_mtu is not None and outside_link_mtu > mtu:
        doc.fail("outsideLinkMTU", f"{outside_link_mtu} is larger than mtu {mtu}: it narrows the path, "
                                   f"so it must be smaller")
    npr = doc.take_str("nodePortRange", "30000-32767", expect="a range such as 30000-32767")
    lo, _, hi = npr.partition("-")
    if not (lo.isdigit() and hi.isdigit() and 1 <= int(lo) <= int(hi) <= 65535):
        doc.fail("nodePortRange", f"expected a range such as 30000-32767, got {npr!r}")
    node_port_range = (int(lo), int(hi))

    nets = {"clusterCIDR": cluster, "serviceCIDR": services, "nodeNetwork": node_net,
            "outsideNetwork": outside_net}
    keys = list(nets)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if nets[a].overlaps(nets[b]):
                doc.fail(b, f"{nets[b]} overlaps {a} {nets[a]}")
        for what, net in RESERVED_NETS.items():
            if nets[a].overlaps(net):
                doc.fail(a, f"{nets[a]} overlaps the {what} range {net}, which the lab uses itself")
    for key in ("nodeNetwork", "outsideNetwork"):
        if nets[key].prefixlen > 29:
            doc.fail(key, f"{nets[key]} is too small: a /29 or larger leaves room for hosts and the gateway")

    names_seen: dict[str, str] = {}
    subnets = cluster.subnets(new_prefix=mask)
    next(subnets, None)  # 10.0.0.0/24 stays unused: node N gets 10.0.N.0/24
    nodes = []
    node_items = doc.items("nodes")
    if not node_items:
        doc.fail("nodes", "a lab needs at least one node")
    used_ips = {gateway_of(node_net)}
    for i, item in enumerate(node_items):
        if isinstance(item, Scalar):
            item_doc = item.as_doc("name")
        else:
            item_doc = item
        name = item_doc.take("name", str, expect="the node's name")
        _check_object_name(item_doc, "name", name, names_seen, "node")
        default_ip = node_net.network_address + i + 1
        ip = item_doc.take_ip("ip", default_ip)
        if ip not in node_net or ip in (node_net.network_address, node_net.broadcast_address):
            item_doc.fail("ip", f"{ip} is not a host address of nodeNetwork {node_net}")
        if ip in used_ips:
            item_doc.fail("ip", f"{ip} is already used " +
                          ("by the underlay gateway" if ip == gateway_of(node_net) else "by another node"))
        used_ips.add(ip)
        default_cidr = next(subnets, None)
        pod_cidr = item_doc.take_cidr("podCIDR", default_cidr)
        if pod_cidr is None:
            item_doc.fail("podCIDR", f"clusterCIDR {cluster} has no /{mask} left for this node")
        if not pod_cidr.subnet_of(cluster):
            item_doc.fail("podCIDR", f"{pod_cidr} is not inside clusterCIDR {cluster}")
        for other in nodes:
            if other.pod_cidr.overlaps(pod_cidr):
                item_doc.fail("podCIDR", f"{pod_cidr} overlaps node {other.name}'s podCIDR {other.pod_cidr}")
        ports = parse_ports(item_doc)
        item_doc.done()
        nodes.append(NodeSpec(name, ip, pod_cidr, ports))

    pods = []
    node_by_name = {n.name: n for n in nodes}
    pod_ips: dict[IPv4Address, str] = {}
    explicit_ips = _explicit_pod_ips(doc)
    for item in doc.items("pods"):
        if isinstance(item, Scalar):
            item.fail("expected a mapping with at least name and node")
        name = item.take("name", str, expect="the pod's name")
        _check_object_name(item, "name", name, names_seen, "pod")
        node_name = item.take_str("node", expect="the name of the node the pod runs on")
        node = node_by_name.get(node_name)
        if node is None:
            item.fail("node", f"no node named {node_name!r} (nodes: {', '.join(node_by_name)})")
        if item.has("ip"):
            ip = item.take_ip("ip")
            if ip not in node.pod_cidr or ip in (node.pod_cidr.network_address, node.pod_cidr.broadcast_address):
                item.fail("ip", f"{ip} is not a host address of node {node.name}'s podCIDR {node.pod_cidr}")
            if ip in pod_ips:
                item.fail("ip", f"{ip} is already the IP of pod {pod_ips[ip]}")
        else:
            # .1 stays free, as host-local IPAM keeps it for a gateway
            ip = next((h for h in node.pod_cidr.hosts() if int(h) - int(node.pod_cidr.network_address) > 1
                       and h not in pod_ips and h not in explicit_ips), None)
            if ip is None:
                item.fail("ip", f"node {node.name}'s podCIDR {node.pod_cidr} is full")
        pod_ips[ip] = name
        ns = item.take_str("namespace", "default")
        labels = item.take("labels", dict, {}, "a mapping of label: value")
        ports = parse_ports(item)
        ready = item.take_bool("ready", True)
        terminating = item.take_bool("terminating", False)
        item.done()
        pods.append(PodSpec(name, node.name, ip, ns, tuple(sorted((str(k), str(v)) for k, v in labels.items())),
                            ports, ready, terminating))

    hosts = []
    used_host_ips = {gateway_of(outside_net)}
    for i, item in enumerate(doc.items("outside")):
        if isinstance(item, Scalar):
            item.fail("expected a mapping with name and ip")
        name = item.take("name", str, expect="the host's name")
        _check_object_name(item, "name", name, names_seen, "outside host")
        ip = item.take_ip("ip", outside_net.network_address + i + 1)
        if ip not in outside_net or ip in (outside_net.network_address, outside_net.broadcast_address):
            item.fail("ip", f"{ip} is not a host address of outsideNetwork {outside_net}")
        if ip in used_host_ips:
            item.fail("ip", f"{ip} is already used " + ("by the underlay gateway" if ip == gateway_of(outside_net)
                                                       else "by another outside host"))
        used_host_ips.add(ip)
        ports = parse_ports(item)
        item.done()
        hosts.append(HostSpec(name, ip, ports))
    masq = parse_masquerade(doc.sub("masquerade", {}), model, cluster, node_net, outside_net, node_port_range)
    service_route = doc.take_str("serviceRoute", None, expect="the name of the node the underlay routes the service CIDR to")
    if service_route is not None:
        if service_route not in node_by_name:
            doc.fail("serviceRoute", f"no node named {service_route!r} (nodes: {', '.join(node_by_name)})")
        if model == "air-gapped":
            doc.fail("serviceRoute", "the air-gapped model routes nothing between the cluster and the outside")
    doc.done()
    spec = TopologySpec(model=model, cluster_cidr=cluster, service_cidr=services, node_cidr=node_net,
                        outside_cidr=outside_net, nodes=tuple(nodes), pods=tuple(pods),
                        hosts=tuple(hosts), mtu=mtu, outside_link_mtu=outside_link_mtu, masquerade=masq,
                        service_route=service_route)
    return spec, node_port_range


def parse_masquerade(doc: Doc, model: str, cluster, node_net, outside_net, node_port_range) -> MasqueradeSpec:
    """ip-masq-agent's settings. By default the cluster CIDR is exempt, and in the flat model the
    whole lab network too (pods are first-class there: no NAT to in-network destinations). The
    port range is where the node's address finds ports for the flows it takes on: it may overlap
    neither the nodes' own ephemeral ports nor the node ports."""
    default = [cluster] + ([node_net, outside_net] if model == "flat" else [])
    nets = default
    if doc.has("nonMasqueradeCIDRs"):
        nets = []
        for item in doc.items("nonMasqueradeCIDRs"):
            if not isinstance(item.value, str):
                _fail(item, "expected an IPv4 CIDR such as 10.0.0.0/16")
            try:
                nets.append(IPv4Network(item.value))
            except ValueError as exc:
                _fail(item, f"expected an IPv4 CIDR such as 10.0.0.0/16, got {item.value!r} ({exc})")
    default = f"{NAT_PORT_RANGE[0]}-{NAT_PORT_RANGE[1]}"
    rng = doc.take_str("portRange", default, expect=f"a range such as {default}")
    lo, _, hi = rng.partition("-")
    if not (lo.isdigit() and hi.isdigit() and 1024 <= int(lo) <= int(hi) <= 65535):
        doc.fail("portRange", f"expected a range such as {default} within 1024-65535, got {rng!r}")
    for what, (a, b) in ((f"the nodes' ip_local_port_range {NODE_LOCAL_PORTS[0]}-{NODE_LOCAL_PORTS[1]} "
                          f"(ports the kernel gives the node's own connections)", NODE_LOCAL_PORTS),
                         (f"nodePortRange {node_port_range[0]}-{node_port_range[1]}", node_port_range)):
        if int(lo) <= b and a <= int(hi):
            doc.fail("portRange", f"{rng} overlaps {what}: a flow masqueraded to the node's address could "
                                  f"take a tuple a node socket uses; choose a range outside it, such as {default}")
    spec = MasqueradeSpec(enabled=doc.take_bool("enabled", True), non_masquerade=tuple(nets),
                          masq_link_local=doc.take_bool("masqLinkLocal", False),
                          port_range=(int(lo), int(hi)))
    doc.done()
    return spec


def _explicit_pod_ips(doc: Doc) -> set:
    """Pod IPs given explicitly anywhere in the topology: automatic ones avoid them."""
    out = set()
    for p in doc.value.get("pods") or []:
        if isinstance(p, dict) and isinstance(p.get("ip"), str):
            try:
                out.add(IPv4Address(p["ip"]))
            except ValueError:
                pass
    return out
