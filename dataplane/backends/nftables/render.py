"""The service table rendered as kube-proxy's nftables mode writes it (pkg/proxy/nftables/
proxier.go, Kubernetes 1.31: setupNFTables and syncProxyRules), for one node. Pure: text only.

One table, `ip kube-proxy`. Base chains hook prerouting/input/forward/output (filter, at DNAT-10
so filtering sees pre-DNAT addresses) and prerouting/output/postrouting (nat). Services are found
through verdict maps, not rule lists: `service-ips` (address . protocol . port : goto chain) and
`service-nodeports`; a service chain picks an endpoint with `numgen random mod N vmap`. Services
without (local) endpoints are in `no-endpoint-services` / `no-endpoint-nodeports` (reject or
drop), and new connections still addressed to a cluster IP after DNAT (a port the service does not
serve) are rejected by `cluster-ips-check`.

kube-proxy 1.31 has no `ct state invalid drop` (removed from nftables mode by kubernetes#122663)
and no health-check accept rule (nftables cannot override another table's drop); this renders
what it has.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ...spec.topology import TopologySpec
from ...spec.table import ServiceTable
from ..kubeproxy.names import nft_endpoint_base, nft_service_base
from ..kubeproxy.view import PortView, views

TABLE = "ip kube-proxy"
MASQ_MARK = "0x00004000"     # fmt.Sprintf("%#08x", 1<<14), as kube-proxy writes it

# (name, type, hook, priority): kube-proxy's nftablesBaseChains, priorities as knftables prints them.
BASE_CHAINS = (
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
)
# (destination, source, match): nftablesJumpChains.
JUMPS = (
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output-post-dnat", "ct state new"),
)
ADDR = "ipv4_addr"
ADDR_PROTO_PORT = f"{ADDR} . inet_proto . inet_service"
# name -> declaration body. The element containers a sync fills.
MAPS = {
    "no-endpoint-services": f'type {ADDR_PROTO_PORT} : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ;',
    "no-endpoint-nodeports": 'type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ;',
    "firewall-ips": f'type {ADDR_PROTO_PORT} : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ;',
    "service-ips": f'type {ADDR_PROTO_PORT} : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ;',
    "service-nodeports": 'type inet_proto . inet_service : verdict ; comment "NodePort traffic" ;',
}
CONTAINERS = ("cluster-ips", "service-ips", "firewall-ips", "no-endpoint-services", "no-endpoint-nodeports",
              "service-nodeports")


@dataclass
class Ruleset:
    """What the node's `ip kube-proxy` table should hold, in pieces a sync can diff."""
    base: str = ""                                                # the fixed part (setupNFTables)
    base_resync: str = ""                                         # the same without recreating base chains
    elements: dict[str, dict[str, str]] = field(default_factory=dict)     # container -> key -> value
    comments: dict[tuple[str, str], str] = field(default_factory=dict)    # (container, key) -> comment
    services: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # service key -> chain -> rules
    affinity: dict[str, dict[str, int]] = field(default_factory=dict)     # service key -> set -> timeout

    def service_chains(self) -> dict[str, list[str]]:
        return {c: r for chains in self.services.values() for c, r in chains.items()}

    def affinity_sets(self) -> dict[str, int]:
        return {s: t for sets in self.affinity.values() for s, t in sets.items()}

    def element(self, container: str, key: str, op: str = "add") -> str:
        value = self.elements[container][key]
        comment = self.comments.get((container, key))
        body = key + (f' comment "{comment}"' if comment and op == "add" else "")
        if value and op == "add":
            body += f" : {value}"
        return f"{op} element {TABLE} {container} {{ {body} }}"

    def service_text(self, key: str) -> list[str]:
        """A service's sets and chains: created, flushed, filled (kube-proxy's ensureChain)."""
        out = [f"add set {TABLE} {s} {{ type {ADDR} ; flags dynamic,timeout ; timeout {t}s ; }}"
               for s, t in self.affinity.get(key, {}).items()]
        chains = self.services[key]
        for chain in chains:     # every chain first: rules jump between them
            out += [f"add chain {TABLE} {chain}", f"flush chain {TABLE} {chain}"]
        for chain, rules in chains.items():
            out += [f"add rule {TABLE} {chain} {r}" for r in rules]
        return out

    def full_text(self, first: bool = True) -> str:
        """Everything; `first`: the process's first sync (kube-proxy then recreates base chains,
        which only works while they are empty)."""
        out = [self.base if first else self.base_resync]
        for key in self.services:
            out += self.service_text(key)
        for container in CONTAINERS:
            out += [self.element(container, k) for k in self.elements[container]]
        return "\n".join(out) + "\n"


def base_text(spec: TopologySpec, node: str, first: bool = True) -> str:
    """setupNFTables: table, base chains, fixed chains, sets and maps, emptied for a full sync."""
    t = TABLE
    out = [f'add table {t} {{ comment "rules for kube-proxy" ; }}']
    if first:   # recreate base chains, so that a changed priority takes effect
        for name, *_ in BASE_CHAINS:
            out += [f"add chain {t} {name}", f"delete chain {t} {name}"]
    for name, typ, hook, prio in BASE_CHAINS:
        out += [f"add chain {t} {name} {{ type {typ} hook {hook} priority {prio} ; }}", f"flush chain {t} {name}"]
    created = {name for name, *_ in BASE_CHAINS}

    def ensure(chain, comment=None):
        if chain not in created:
            created.add(chain)
            body = f' {{ comment "{comment}" ; }}' if comment else ""
            out.extend([f"add chain {t} {chain}{body}", f"flush chain {t} {chain}"])

    for dst, src, match in JUMPS:
        ensure(dst)
        out.append(f"add rule {t} {src} " + (f"{match} " if match else "") + f"jump {dst}")
    for chain in ("services", "cluster-ips-check", "masquerading", "mark-for-masquerade"):
        ensure(chain)
    out += [
        f"add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}",
        f"add rule {t} masquerading mark and {MASQ_MARK} == 0 return",
        f"add rule {t} masquerading mark set mark xor {MASQ_MARK}",
        f"add rule {t} masquerading masquerade fully-random",
        f'add set {t} cluster-ips {{ type {ADDR} ; comment "Active ClusterIPs" ; }}',
        f'add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
        f'add rule {t} cluster-ips-check ip daddr {{ {spec.service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"',
        # --nodeport-addresses primary, nftables mode's default: node ports on the node's IP.
        f'add set {t} nodeport-ips {{ type {ADDR} ; comment "IPs that accept NodePort traffic" ; }}',
        f"flush set {t} nodeport-ips",
        f"add element {t} nodeport-ips {{ {spec.node(node).ip} }}",
        f"add map {t} no-endpoint-services {{ {MAPS['no-endpoint-services']} }}",
        f"add map {t} no-endpoint-nodeports {{ {MAPS['no-endpoint-nodeports']} }}",
    ]
    ensure("reject-chain", "helper for @no-endpoint-services / @no-endpoint-nodeports")
    out += [
        f"add rule {t} reject-chain reject",
        f"add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        f"add rule {t} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
        f"add map {t} firewall-ips {{ {MAPS['firewall-ips']} }}",
        f"add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
        f"add map {t} service-ips {{ {MAPS['service-ips']} }}",
        f"add map {t} service-nodeports {{ {MAPS['service-nodeports']} }}",
        f"add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
        f"flush set {t} cluster-ips",
    ]
    out += [f"flush map {t} {m}" for m in ("service-ips", "firewall-ips", "no-endpoint-services",
                                            "no-endpoint-nodeports", "service-nodeports")]
    return "\n".join(out)


def render(table: ServiceTable, spec: TopologySpec, node: str) -> Ruleset:
    rs = Ruleset(base=base_text(spec, node), base_resync=base_text(spec, node, first=False),
                 elements={c: {} for c in CONTAINERS})
    for pv in views(table, node):
        chains, sets = _service(pv, rs, str(spec.cluster_cidr), spec.node(node).ip)
        rs.services.setdefault(pv.svc.key, {}).update(chains)
        if sets:
            rs.affinity.setdefault(pv.svc.key, {}).update(sets)
    return rs


@dataclass(frozen=True)
class _Chains:
    """A service port's chain names."""
    cluster: str
    local: str
    external: str
    firewall: str


VERDICTS = {"REJECT": "goto reject-chain", "DROP": "drop", None: ""}


def _service(pv: PortView, rs: Ruleset, cluster_cidr: str, node_ip):
    """One service port: its elements in the shared maps and sets (into rs), and its own chains
    and affinity sets."""
    base = nft_service_base(pv.svc.namespace, pv.svc.name, pv.protocol, pv.sp.name)
    names = _Chains(*(f"{p}-{base}" for p in ("service", "local", "external", "firewall")))
    _frontends(pv, rs, names)
    chains: dict[str, list[str]] = {}
    if pv.uses_cluster_chain:
        chains[names.cluster] = []
    if pv.uses_local_chain:
        chains[names.local] = []
    if pv.has_internal_endpoints:
        internal = names.local if pv.internal_policy_local else names.cluster
        chains[internal].append(f"ip daddr {pv.cluster_ip} {pv.protocol} dport {pv.sp.port} "
                                f"ip saddr != {cluster_cidr} jump mark-for-masquerade")
    if pv.uses_external_chain:
        chains[names.external] = _external_chain(pv, names, cluster_cidr)
    if pv.uses_firewall_chain:
        sources = [str(c) for c in pv.source_ranges]
        if any(node_ip in c for c in pv.source_ranges):
            sources += [str(ip) for ip in pv.svc.load_balancer_ips]
        chains[names.firewall] = [f"ip saddr != {{ {' , '.join(sources)} }} drop"]
    endpoints = {(t.address, t.port): nft_endpoint_base(pv.svc.namespace, pv.svc.name, pv.protocol, pv.sp.name,
                                                        t.address, t.port) for t in pv.all_reachable}
    _balance(pv, names, endpoints, chains)
    sets = _endpoint_chains(pv, endpoints, chains)
    return chains, sets


def _frontends(pv: PortView, rs: Ruleset, names: _Chains) -> None:
    """The service port's elements: cluster IP, external and LoadBalancer IPs and node port to its
    chains where it has endpoints, to reject or drop where it has none."""
    proto, port = pv.protocol, pv.sp.port
    int_verdict, ext_verdict = VERDICTS[pv.internal_filter], VERDICTS[pv.external_filter]
    internal = names.local if pv.internal_policy_local else names.cluster

    def add(container, key, value="", comment=None):
        rs.elements[container][key] = value
        if comment:
            rs.comments[(container, key)] = comment

    add("cluster-ips", str(pv.cluster_ip))
    if pv.has_internal_endpoints:
        add("service-ips", f"{pv.cluster_ip} . {proto} . {port}", f"goto {internal}")
    else:
        add("no-endpoint-services", f"{pv.cluster_ip} . {proto} . {port}", int_verdict, pv.name)
    frontends = [(ip, False) for ip in pv.svc.external_ips] + [(ip, True) for ip in pv.svc.load_balancer_ips]
    for ip, balancer in frontends:
        if pv.has_endpoints:
            add("service-ips", f"{ip} . {proto} . {port}", f"goto {names.external}")
        if balancer and pv.uses_firewall_chain:
            add("firewall-ips", f"{ip} . {proto} . {port}", f"goto {names.firewall}")
        if not pv.has_external_endpoints:
            add("no-endpoint-services", f"{ip} . {proto} . {port}", ext_verdict, pv.name)
    if pv.sp.node_port:
        if pv.has_endpoints:
            add("service-nodeports", f"{proto} . {pv.sp.node_port}", f"goto {names.external}")
        if not pv.has_external_endpoints:
            add("no-endpoint-nodeports", f"{proto} . {pv.sp.node_port}", ext_verdict, pv.name)


def _external_chain(pv: PortView, names: _Chains, cluster_cidr: str) -> list[str]:
    if not pv.external_policy_local:
        rules = ["jump mark-for-masquerade"]
    else:
        rules = [f'ip saddr {cluster_cidr} goto {names.cluster} comment "short-circuit pod traffic"',
                 'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"',
                 f'fib saddr type local goto {names.cluster} comment "short-circuit local traffic"']
    if pv.has_external_endpoints:
        rules.append(f"goto {names.local if pv.external_policy_local else names.cluster}")
    return rules


def _balance(pv: PortView, names: _Chains, endpoints: dict, chains: dict) -> None:
    """Affinity checks first, then one random choice among the endpoints."""
    for chain, targets in ((names.cluster, pv.cluster_endpoints if pv.uses_cluster_chain else ()),
                           (names.local, pv.local_endpoints if pv.uses_local_chain else ())):
        if not targets:
            continue
        eps = [endpoints[(t.address, t.port)] for t in targets]
        if pv.affinity is not None:
            chains[chain] += [f"ip saddr @affinity-{n} goto endpoint-{n}" for n in eps]
        vmap = " , ".join(f"{i} : goto endpoint-{n}" for i, n in enumerate(eps))
        chains[chain].append(f"numgen random mod {len(eps)} vmap {{ {vmap} }}")


def _endpoint_chains(pv: PortView, endpoints: dict, chains: dict) -> dict[str, int]:
    """One chain per endpoint (hairpin masquerade, affinity record, DNAT); the affinity sets."""
    sets: dict[str, int] = {}
    for t in pv.all_reachable:
        n = endpoints[(t.address, t.port)]
        rules = chains[f"endpoint-{n}"] = [f"ip saddr {t.address} jump mark-for-masquerade"]
        if pv.affinity is not None:
            sets[f"affinity-{n}"] = pv.affinity
            rules.append(f"update @affinity-{n} {{ ip saddr }}")
        rules.append(f"meta l4proto {pv.protocol} dnat to {t.address}:{t.port}")
    return sets
