"""A scenario's `topology:` section -> TopologySpec, every default applied and every rule checked
(addresses inside their networks, unique names and addresses, interface-name lengths, port
ranges that cannot meet). Each node, pod and outside host is checked on its own, so one pass
reports the errors of all of them."""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from .services import DNS_LABEL
from .table import PROTOCOLS
from .topology import (DEFAULT_PORTS, IFNAMSIZ, IFNAME_PREFIX, MAX_NAME, NETWORK_MODELS, NAT_PORT_RANGE,
                       NODE_LOCAL_PORTS, RESERVED_NAMES, HostSpec, MasqueradeSpec, NodeSpec, PodSpec,
                       PortSpec, TopologySpec, gateway_of)
from .yamldoc import Doc, Scalar

# The fields of the address plan: with one invalid, no object can be placed (nor judged).
ADDRESSING = {"network", "cluster", "mask", "services", "node_net", "outside_net", "networks"}
# In the set of invalid nodes: there is no valid node at all.
ANY_NODE = object()

# Addresses the lab itself uses and a scenario may not claim.
RESERVED_NETS = {"loopback": IPv4Network("127.0.0.0/8"), "link-local": IPv4Network("169.254.0.0/16")}


@dataclass
class Networks:
    """The topology's address plan and limits, before any object is placed in it."""
    network: str = "flat"
    cluster: IPv4Network = IPv4Network("10.0.0.0/16")
    mask: int = 24
    services: IPv4Network = IPv4Network("10.96.0.0/12")
    node_net: IPv4Network = IPv4Network("10.240.0.0/24")
    outside_net: IPv4Network = IPv4Network("10.128.1.0/24")
    mtu: int = 1500
    outside_link_mtu: int | None = None
    node_port_range: tuple[int, int] = (30000, 32767)


def _errors(doc: Doc) -> int:
    return len(doc.problems.errors) if doc.problems is not None else 0


def parse_topology(doc: Doc) -> tuple[TopologySpec | None, tuple[int, int]]:
    """(the topology, the node port range). With Problems on the doc, errors are recorded and
    the topology is None if there were any."""
    before = _errors(doc)
    nets, invalid = parse_networks(doc)
    nodes, pods, hosts, masq, service_route = [], [], [], None, None
    if not invalid & ADDRESSING:     # objects are placed in the address plan: only in a valid one
        names_seen: dict[str, str] = {}
        nodes, failed = parse_nodes(doc, nets, names_seen)
        pods = parse_pods(doc, nodes, failed, names_seen)
        hosts = parse_hosts(doc, nets.outside_net, names_seen)
        if "node_port_range" not in invalid:
            with doc.recover():
                masq = parse_masquerade(doc.sub("masquerade", {}), nets)
        with doc.recover():
            service_route = parse_service_route(doc, nets.network, nodes, failed)
    doc.taken.update(("nodes", "pods", "outside", "masquerade", "serviceRoute"))
    with doc.recover():
        doc.done()
    if _errors(doc) != before:
        return None, nets.node_port_range
    spec = TopologySpec(network=nets.network, cluster_cidr=nets.cluster, service_cidr=nets.services,
                        node_cidr=nets.node_net, outside_cidr=nets.outside_net, nodes=tuple(nodes), pods=tuple(pods),
                        hosts=tuple(hosts), mtu=nets.mtu, outside_link_mtu=nets.outside_link_mtu, masquerade=masq,
                        service_route=service_route)
    return spec, nets.node_port_range


def parse_networks(doc: Doc) -> tuple[Networks, set[str]]:
    """Each field checked on its own (an invalid one keeps its default, its error recorded), then
    the networks against each other; the names of the invalid fields."""
    n = Networks()
    fields = (("network", lambda: doc.take_str("model", "flat", choices=NETWORK_MODELS)),
              ("cluster", lambda: doc.take_cidr("clusterCIDR", Networks.cluster)),
              ("mask", lambda: doc.take_int("nodeCIDRMaskSize", 24, lo=n.cluster.prefixlen, hi=30)),
              ("services", lambda: doc.take_cidr("serviceCIDR", Networks.services)),
              ("node_net", lambda: doc.take_cidr("nodeNetwork", Networks.node_net)),
              ("outside_net", lambda: doc.take_cidr("outsideNetwork", Networks.outside_net)),
              ("mtu", lambda: doc.take_int("mtu", 1500, lo=576, hi=9000)),
              ("outside_link_mtu", lambda: _outside_link_mtu(doc, n.mtu)),
              ("node_port_range", lambda: _node_port_range(doc)))
    invalid = set()
    for attr, read in fields:
        before = _errors(doc)
        with doc.recover():
            setattr(n, attr, read())
        if _errors(doc) != before:
            invalid.add(attr)
    if not invalid & ADDRESSING:     # never judged against a default standing in for an invalid field
        before = _errors(doc)
        with doc.recover():
            _check_networks(doc, n)
        if _errors(doc) != before:
            invalid.add("networks")
    return n, invalid


def _outside_link_mtu(doc: Doc, mtu: int) -> int | None:
    value = doc.take_int("outsideLinkMTU", None, lo=576, hi=9000, expect="an MTU from 576 to 9000")
    if value is not None and value > mtu:
        doc.fail("outsideLinkMTU", f"{value} is larger than mtu {mtu}: it narrows the path, so it must be smaller")
    return value


def _node_port_range(doc: Doc) -> tuple[int, int]:
    npr = doc.take_str("nodePortRange", "30000-32767", expect="a range such as 30000-32767")
    lo, _, hi = npr.partition("-")
    if not (lo.isdigit() and hi.isdigit() and 1 <= int(lo) <= int(hi) <= 65535):
        doc.fail("nodePortRange", f"expected a range such as 30000-32767, got {npr!r}")
    return int(lo), int(hi)


def _check_networks(doc: Doc, n: Networks) -> None:
    nets = {"clusterCIDR": n.cluster, "serviceCIDR": n.services, "nodeNetwork": n.node_net,
            "outsideNetwork": n.outside_net}
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
            (item.fail if isinstance(item, Scalar) else lambda m: item.fail(None, m))(
                f"duplicate port {p.port}/{p.protocol}")
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


def _segment_ip(doc: Doc, net: IPv4Network, field: str, default, used_ips: set, kind: str) -> IPv4Address:
    """An object's address on one of the underlay's segments (nodeNetwork, outsideNetwork): a host
    address of it, neither the gateway's nor another object's."""
    ip = doc.take_ip("ip", default)
    if ip not in net or ip in (net.network_address, net.broadcast_address):
        doc.fail("ip", f"{ip} is not a host address of {field} {net}")
    if ip in used_ips:
        doc.fail("ip", f"{ip} is already used "
                 + ("by the underlay gateway" if ip == gateway_of(net) else f"by another {kind}"))
    used_ips.add(ip)
    return ip


def parse_nodes(doc: Doc, nets: Networks, names_seen: dict) -> tuple[list[NodeSpec], set]:
    """The valid nodes, and the names of the invalid ones (their pods are not checked again)."""
    subnets = nets.cluster.subnets(new_prefix=nets.mask)
    next(subnets, None)  # 10.0.0.0/24 stays unused: node N gets 10.0.N.0/24
    items = doc.items("nodes")
    if not items and isinstance(doc.value.get("nodes", []), list):
        with doc.recover():
            doc.fail("nodes", "a lab needs at least one node")
    nodes: list[NodeSpec] = []
    used_ips = {gateway_of(nets.node_net)}
    failed = set()
    for i, item in enumerate(items):
        default_cidr = next(subnets, None)
        name = item.value.get("name") if isinstance(item, Doc) else item.value
        if isinstance(name, str) and all(n.name != name for n in nodes):
            failed.add(name)
        with item.recover():
            node = _node(item.as_doc("name") if isinstance(item, Scalar) else item, i, default_cidr, nets,
                         nodes, used_ips, names_seen)
            nodes.append(node)
            failed.discard(node.name)
    if not nodes:                   # no node at all: no reference to one can be judged
        failed.add(ANY_NODE)
    return nodes, failed


def _node(doc: Doc, i: int, default_cidr, nets: Networks, nodes: list, used_ips: set, names_seen: dict) -> NodeSpec:
    node_net = nets.node_net
    name = doc.take("name", str, expect="the node's name")
    _check_object_name(doc, "name", name, names_seen, "node")
    ip = _segment_ip(doc, node_net, "nodeNetwork", node_net.network_address + i + 1, used_ips, "node")
    pod_cidr = doc.take_cidr("podCIDR", default_cidr)
    if pod_cidr is None:
        doc.fail("podCIDR", f"clusterCIDR {nets.cluster} has no /{nets.mask} left for this node")
    if not pod_cidr.subnet_of(nets.cluster):
        doc.fail("podCIDR", f"{pod_cidr} is not inside clusterCIDR {nets.cluster}")
    for other in nodes:
        if other.pod_cidr.overlaps(pod_cidr):
            doc.fail("podCIDR", f"{pod_cidr} overlaps node {other.name}'s podCIDR {other.pod_cidr}")
    ports = parse_ports(doc)
    doc.done()
    return NodeSpec(name, ip, pod_cidr, ports)


def parse_pods(doc: Doc, nodes: list[NodeSpec], failed_nodes: set, names_seen: dict) -> list[PodSpec]:
    pods: list[PodSpec] = []
    node_by_name = {n.name: n for n in nodes}
    pod_ips: dict[IPv4Address, str] = {}
    explicit_ips = _explicit_pod_ips(doc)
    for item in doc.items("pods"):
        with item.recover():
            if isinstance(item, Scalar):
                item.fail("expected a mapping with at least name and node")
            if str(item.value.get("node")) in failed_nodes or ANY_NODE in failed_nodes:
                continue            # its node's error says it all
            pods.append(_pod(item, node_by_name, pod_ips, explicit_ips, names_seen))
    return pods


def _pod(item: Doc, node_by_name: dict, pod_ips: dict, explicit_ips: set, names_seen: dict) -> PodSpec:
    name = item.take("name", str, expect="the pod's name")
    _check_object_name(item, "name", name, names_seen, "pod")
    node_name = item.take_str("node", expect="the name of the node the pod runs on")
    node = node_by_name.get(node_name)
    if node is None:
        item.fail("node", f"no node named {node_name!r} (nodes: {', '.join(node_by_name)})")
    cidr = node.pod_cidr
    if item.has("ip"):
        ip = item.take_ip("ip")
        if ip not in cidr or ip in (cidr.network_address, cidr.broadcast_address):
            item.fail("ip", f"{ip} is not a host address of node {node.name}'s podCIDR {cidr}")
        if ip in pod_ips:
            item.fail("ip", f"{ip} is already the IP of pod {pod_ips[ip]}")
    else:
        # .1 stays free, as host-local IPAM keeps it for a gateway
        ip = next((h for h in cidr.hosts() if int(h) - int(cidr.network_address) > 1
                   and h not in pod_ips and h not in explicit_ips), None)
        if ip is None:
            item.fail("ip", f"node {node.name}'s podCIDR {cidr} is full")
    pod_ips[ip] = name
    ns = item.take_str("namespace", "default")
    labels = item.take("labels", dict, {}, "a mapping of label: value")
    ports = parse_ports(item)
    ready = item.take_bool("ready", True)
    terminating = item.take_bool("terminating", False)
    item.done()
    return PodSpec(name, node.name, ip, ns, tuple(sorted((str(k), str(v)) for k, v in labels.items())),
                   ports, ready, terminating)


def parse_hosts(doc: Doc, outside_net: IPv4Network, names_seen: dict) -> list[HostSpec]:
    hosts: list[HostSpec] = []
    used_ips = {gateway_of(outside_net)}
    for i, item in enumerate(doc.items("outside")):
        with item.recover():
            if isinstance(item, Scalar):
                item.fail("expected a mapping with name and ip")
            name = item.take("name", str, expect="the host's name")
            _check_object_name(item, "name", name, names_seen, "outside host")
            ip = _segment_ip(item, outside_net, "outsideNetwork", outside_net.network_address + i + 1, used_ips,
                             "outside host")
            ports = parse_ports(item)
            item.done()
            hosts.append(HostSpec(name, ip, ports))
    return hosts


def parse_service_route(doc: Doc, model: str, nodes: list[NodeSpec], failed_nodes: set) -> str | None:
    route = doc.take_str("serviceRoute", None, expect="the name of the node the underlay routes the service CIDR to")
    if route is not None:
        names = [n.name for n in nodes]
        judged = route not in failed_nodes and ANY_NODE not in failed_nodes   # else its node's error stands
        if judged and route not in names:
            doc.fail("serviceRoute", f"no node named {route!r} (nodes: {', '.join(names)})")
        if model == "air-gapped":
            doc.fail("serviceRoute", "the air-gapped model routes nothing between the cluster and the outside")
    return route


def parse_masquerade(doc: Doc, nets: Networks) -> MasqueradeSpec:
    """ip-masq-agent's settings. By default the cluster CIDR is exempt, and in the flat model the
    whole lab network too (pods are first-class there: no NAT to in-network destinations). The
    port range is where the node's address finds ports for the flows it takes on: it may overlap
    neither the nodes' own ephemeral ports nor the node ports."""
    nets_exempt = [nets.cluster] + ([nets.node_net, nets.outside_net] if nets.network == "flat" else [])
    if doc.has("nonMasqueradeCIDRs"):
        nets_exempt = []
        for item in doc.items("nonMasqueradeCIDRs"):
            fail = item.fail if isinstance(item, Scalar) else (lambda m: item.fail(None, m))
            if not isinstance(item.value, str):
                fail("expected an IPv4 CIDR such as 10.0.0.0/16")
            try:
                nets_exempt.append(IPv4Network(item.value))
            except ValueError as exc:
                fail(f"expected an IPv4 CIDR such as 10.0.0.0/16, got {item.value!r} ({exc})")
    port_range = _nat_port_range(doc, nets.node_port_range)
    spec = MasqueradeSpec(enabled=doc.take_bool("enabled", True), non_masquerade=tuple(nets_exempt),
                          masq_link_local=doc.take_bool("masqLinkLocal", False), port_range=port_range)
    doc.done()
    return spec


def _nat_port_range(doc: Doc, node_port_range: tuple[int, int]) -> tuple[int, int]:
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
    return int(lo), int(hi)


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
