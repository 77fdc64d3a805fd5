"""Turn a TopologySpec into a LabPlan: every namespace, link, address, route and sysctl to create.

The plan is plain data so that it can be read (`dataplane up --dry-run`), tested without root, and
applied by `build.py` in one pass. Wiring, per the Kubernetes networking model:

  outside host ── eth0 ─ v-<host> ─┐                    ┌─ v-<node> ─ eth0 ── node ── v-<pod> ─ eth0 ── pod
                                   br-outside  underlay  br-nodes
  (10.128.1.0/24, gw .254)          (router)             (10.240.0.0/24, gw .254)

- The underlay namespace is the network: two bridges, one per segment, and a router between them.
- A node has one uplink (eth0) on br-nodes and a /32 route per local pod to that pod's veth.
  Nodes route each other's pod CIDRs over the shared segment (host-gw, as flannel and Calico do),
  so pod-to-pod traffic crosses nodes without NAT in every model.
- A pod has eth0 with its /32 and a default route via 169.254.1.1, a link-local gateway address
  statically bound to the node side of its veth (Calico's scheme): no bridge, no ARP to the node.
- Every link end gets a MAC derived from the lab and link names, so neighbours can be static and
  captures are reproducible.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..spec.topology import NODE_LOCAL_PORTS, TopologySpec
from .names import Names

POD_GATEWAY = "169.254.1.1"


@dataclass(frozen=True)
class Namespace:
    name: str      # the netns name (dp-<lab>.<object>)
    role: str      # underlay | node | pod | host
    obj: str       # the scenario object's name ("underlay" for the underlay)


@dataclass(frozen=True)
class Veth:
    ns: str
    ifname: str
    mac: str
    peer_ns: str
    peer_ifname: str
    peer_mac: str
    mtu: int | None = None        # None: the topology's mtu
    peer_mtu: int | None = None


@dataclass(frozen=True)
class Bridge:
    ns: str
    ifname: str
    ports: tuple[str, ...]
    mtu: int | None = None        # None: the topology's mtu


@dataclass(frozen=True)
class Address:
    ns: str
    ifname: str
    cidr: str


@dataclass(frozen=True)
class Route:
    ns: str
    dst: str                  # "default" or a CIDR
    ifname: str
    gateway: str | None = None
    scope: str = "universe"   # "link" for on-link routes without a gateway


@dataclass(frozen=True)
class Neighbour:
    ns: str
    ifname: str
    ip: str
    mac: str


@dataclass
class LabPlan:
    lab: str
    spec: TopologySpec
    namespaces: list[Namespace] = field(default_factory=list)
    sysctls: list[tuple[str, str, str]] = field(default_factory=list)   # (ns, key, value)
    veths: list[Veth] = field(default_factory=list)
    bridges: list[Bridge] = field(default_factory=list)
    addresses: list[Address] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    neighbours: list[Neighbour] = field(default_factory=list)

    def netns_of(self, obj: str) -> str:
        for ns in self.namespaces:
            if ns.obj == obj:
                return ns.name
        raise KeyError(obj)

    def describe(self) -> str:
        """A readable listing of the plan, one line per object, grouped by namespace."""
        out = [f"lab {self.lab}: {self.spec.network} model, {len(self.namespaces)} namespaces"]
        for ns in self.namespaces:
            out.append(f"  netns {ns.name}  ({ns.role} {ns.obj})")
            for v in self.veths:
                if v.ns == ns.name:
                    mtu = f" (mtu {v.mtu} here)" if v.mtu else ""
                    out.append(f"    veth {v.ifname} <-> {v.peer_ns}/{v.peer_ifname}{mtu}")
            for b in self.bridges:
                if b.ns == ns.name:
                    mtu = f" (mtu {b.mtu})" if b.mtu else ""
                    out.append(f"    bridge {b.ifname}: {', '.join(b.ports)}{mtu}")
            for a in self.addresses:
                if a.ns == ns.name:
                    out.append(f"    addr {a.cidr} dev {a.ifname}")
            for r in self.routes:
                if r.ns == ns.name:
                    via = f" via {r.gateway}" if r.gateway else f" scope {r.scope}"
                    out.append(f"    route {r.dst}{via} dev {r.ifname}")
            for key, value in ((k, v) for n, k, v in self.sysctls if n == ns.name):
                out.append(f"    sysctl {key}={value}")
        return "\n".join(out)


def mac_for(lab: str, ns: str, ifname: str) -> str:
    """A stable, locally administered unicast MAC for one link end."""
    digest = hashlib.sha256(f"{lab}/{ns}/{ifname}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def make_plan(spec: TopologySpec, lab: str, frontends=()) -> LabPlan:
    """`frontends`: (address, node) pairs the underlay routes to a node, as a cloud load balancer
    (or a router announcing external IPs) would: LoadBalancer ingress IPs and external IPs."""
    b = _Builder(spec, lab)
    underlay = b.namespace("underlay", "underlay")
    # The underlay forwards between its segments, except in the air-gapped model where it is the
    # only thing between the cluster and the outside, and forwards nothing.
    b.plan.sysctls.append((underlay, "net.ipv4.ip_forward", "0" if spec.network == "air-gapped" else "1"))
    node_ports = [b.node(node, underlay, frontends) for node in spec.nodes]
    for pod in spec.pods:
        b.pod(pod)
    outside_ports = [b.host(host, underlay) for host in spec.hosts]
    b.underlay(underlay, node_ports, outside_ports, frontends)
    return b.plan


class _Builder:
    """make_plan's steps, one per kind of object, sharing the plan and the namespace names."""

    def __init__(self, spec: TopologySpec, lab: str):
        self.spec, self.lab, self.names = spec, lab, Names(lab)
        self.plan = LabPlan(lab=lab, spec=spec)
        self.ns_of: dict[str, str] = {}

    def namespace(self, role: str, obj: str) -> str:
        ns = Namespace(self.names.netns(obj), role, obj)
        self.plan.namespaces.append(ns)
        self.ns_of[obj] = ns.name
        # No IPv6 in the lab: no router solicitations, DAD or MLD noise in captures and counters.
        self.plan.sysctls.append((ns.name, "net.ipv6.conf.all.disable_ipv6", "1"))
        self.plan.sysctls.append((ns.name, "net.ipv6.conf.default.disable_ipv6", "1"))
        return ns.name

    def veth(self, ns, ifname, peer_ns, peer_ifname, mtu=None) -> Veth:
        v = Veth(ns, ifname, mac_for(self.lab, ns, ifname), peer_ns, peer_ifname,
                 mac_for(self.lab, peer_ns, peer_ifname), mtu=mtu)
        self.plan.veths.append(v)
        return v

    def node(self, node, underlay: str, frontends=()) -> str:
        """A node namespace on the underlay's node segment; the underlay port's name."""
        spec, plan = self.spec, self.plan
        ns = self.namespace("node", node.name)
        plan.sysctls.append((ns, "net.ipv4.ip_forward", "1"))
        # A hairpinned packet (pod -> service -> the same pod) leaves by the veth it came in on,
        # which would make the node send the pod an ICMP redirect. Redirects mean nothing on /32
        # routed veths, and each one spends the node's per-destination ICMP rate-limit tokens, so
        # an ICMP reject right after it (REJECT, nft reject) would be silently suppressed.
        plan.sysctls.append((ns, "net.ipv4.conf.all.send_redirects", "0"))
        plan.sysctls.append((ns, "net.ipv4.conf.default.send_redirects", "0"))
        # The node's own ephemeral ports, stated rather than inherited: the NAT port range (the
        # masquerade portRange) lies outside it (see topology.NODE_LOCAL_PORTS).
        plan.sysctls.append((ns, "net.ipv4.ip_local_port_range", f"{NODE_LOCAL_PORTS[0]} {NODE_LOCAL_PORTS[1]}"))
        up = self.names.ifname(node.name)
        self.veth(underlay, up, ns, "eth0")
        plan.addresses.append(Address(ns, "eth0", f"{node.ip}/{spec.node_cidr.prefixlen}"))
        for other in spec.nodes:
            if other.name != node.name:
                plan.routes.append(Route(ns, str(other.pod_cidr), "eth0", gateway=str(other.ip)))
        if spec.network != "air-gapped":
            plan.routes.append(Route(ns, "default", "eth0", gateway=str(spec.node_gateway)))
        else:
            # Without a default route a node must still route the service CIDR (Kubernetes asks
            # it of nodes without one), and the services' load-balancer and external IPs, which
            # any other node reaches by its default route: kube-proxy's filter rules (a service
            # without endpoints rejected) and its rules for the node's own connections run after
            # routing, so an address nothing routes is a network unreachable before they see it.
            # The underlay forwards nothing here, so these routes lead nowhere out.
            plan.routes.append(Route(ns, str(spec.service_cidr), "eth0", gateway=str(spec.node_gateway)))
            for addr in sorted({str(a) for a, _ in frontends}):
                plan.routes.append(Route(ns, f"{addr}/32", "eth0", gateway=str(spec.node_gateway)))
        return up

    def pod(self, pod) -> None:
        """A pod namespace on a /32 routed veth from its node (the node is its gateway)."""
        plan = self.plan
        ns = self.namespace("pod", pod.name)
        node_ns = self.ns_of[pod.node]
        v = self.veth(node_ns, self.names.ifname(pod.name), ns, "eth0")
        plan.addresses.append(Address(ns, "eth0", f"{pod.ip}/32"))
        plan.routes.append(Route(ns, f"{POD_GATEWAY}/32", "eth0", scope="link"))
        plan.routes.append(Route(ns, "default", "eth0", gateway=POD_GATEWAY))
        plan.neighbours.append(Neighbour(ns, "eth0", POD_GATEWAY, v.mac))
        plan.routes.append(Route(node_ns, f"{pod.ip}/32", v.ifname, scope="link"))
        plan.neighbours.append(Neighbour(node_ns, v.ifname, str(pod.ip), v.peer_mac))

    def host(self, host, underlay: str) -> str:
        """An outside host on the underlay's outside segment; the underlay port's name."""
        ns = self.namespace("host", host.name)
        ifname = self.names.ifname(host.name)
        # outsideLinkMTU narrows the underlay's side only: hosts keep `mtu` and learn the path's
        # by path MTU discovery (ICMP fragmentation needed from the underlay router)
        self.veth(underlay, ifname, ns, "eth0", mtu=self.spec.outside_link_mtu)
        self.plan.addresses.append(Address(ns, "eth0", f"{host.ip}/{self.spec.outside_cidr.prefixlen}"))
        self.plan.routes.append(Route(ns, "default", "eth0", gateway=str(self.spec.outside_gateway)))
        return ifname

    def underlay(self, underlay: str, node_ports: list, outside_ports: list, frontends) -> None:
        """The underlay's two bridges, its addresses on them, and the routes the network model
        gives it."""
        spec, plan = self.spec, self.plan
        plan.bridges.append(Bridge(underlay, "br-nodes", tuple(node_ports)))
        plan.bridges.append(Bridge(underlay, "br-outside", tuple(outside_ports), mtu=spec.outside_link_mtu))
        plan.addresses.append(Address(underlay, "br-nodes", f"{spec.node_gateway}/{spec.node_cidr.prefixlen}"))
        plan.addresses.append(
            Address(underlay, "br-outside", f"{spec.outside_gateway}/{spec.outside_cidr.prefixlen}"))
        if spec.network == "flat":
            # Only in the flat model does the network know where pods are.
            for node in spec.nodes:
                plan.routes.append(Route(underlay, str(node.pod_cidr), "br-nodes", gateway=str(node.ip)))
        if spec.network != "air-gapped":
            for addr, node in frontends:
                plan.routes.append(Route(underlay, f"{addr}/32", "br-nodes", gateway=str(spec.node(node).ip)))
            if spec.service_route:
                # cluster IPs advertised to the network (as BGP setups do): outside hosts reach them
                plan.routes.append(Route(underlay, str(spec.service_cidr), "br-nodes",
                                         gateway=str(spec.node(spec.service_route).ip)))
