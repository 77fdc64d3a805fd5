"""The service table rendered as kube-proxy's iptables mode writes it (pkg/proxy/iptables/proxier.go
syncProxyRules), for one node. Pure: text in, text out; nothing here touches the kernel.

Chains and rules follow kube-proxy's output: the same chain names (hash of port name and
protocol), the same comments, the same argument order, the same `statistic` cascade. What
kube-proxy leaves to other components is rendered as they write it: ip-masq-agent's
IP-MASQ-AGENT chain for egress masquerade.

A Ruleset keeps the "top-level" chains (rewritten on every sync, as kube-proxy does) apart from
each service port's own chains (KUBE-SVC/SVL/EXT/FW/SEP), so a sync can rewrite only the chains
of the services that changed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ...spec.topology import TopologySpec
from ...spec.table import ServiceTable
from ..kubeproxy.names import ext_chain, fw_chain, sep_chain, svc_chain, svl_chain
from ..kubeproxy.view import PortView, views

# fmt.Sprintf("%#08x", 1<<14): what kube-proxy really writes (its unit tests fake "0x4000").
MASQ_MARK = "0x00004000"
# Above this many endpoints in total, kube-proxy drops the comments of per-endpoint rules.
LARGE_CLUSTER_ENDPOINTS = 1000
# Chains kube-proxy rewrites in full on every sync, per table, in its order.
FILTER_CHAINS = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS",
                 "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL")
NAT_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")

# The jumps from the built-in chains (kube-proxy's iptablesJumpChains, then the kubelet's
# KUBE-FIREWALL ones), each inserted at the top of its chain in this order, as EnsureRule(Prepend).
NEW = "-m conntrack --ctstate NEW "
JUMPS = (
    ("filter", "INPUT", "KUBE-EXTERNAL-SERVICES", NEW + '-m comment --comment "kubernetes externally-visible service portals"'),
    ("filter", "FORWARD", "KUBE-EXTERNAL-SERVICES", NEW + '-m comment --comment "kubernetes externally-visible service portals"'),
    ("filter", "INPUT", "KUBE-NODEPORTS", '-m comment --comment "kubernetes health check service ports"'),
    ("filter", "FORWARD", "KUBE-SERVICES", NEW + '-m comment --comment "kubernetes service portals"'),
    ("filter", "OUTPUT", "KUBE-SERVICES", NEW + '-m comment --comment "kubernetes service portals"'),
    ("filter", "FORWARD", "KUBE-FORWARD", '-m comment --comment "kubernetes forwarding rules"'),
    ("filter", "INPUT", "KUBE-PROXY-FIREWALL", NEW + '-m comment --comment "kubernetes load balancer firewall"'),
    ("filter", "OUTPUT", "KUBE-PROXY-FIREWALL", NEW + '-m comment --comment "kubernetes load balancer firewall"'),
    ("filter", "FORWARD", "KUBE-PROXY-FIREWALL", NEW + '-m comment --comment "kubernetes load balancer firewall"'),
    ("nat", "OUTPUT", "KUBE-SERVICES", '-m comment --comment "kubernetes service portals"'),
    ("nat", "PREROUTING", "KUBE-SERVICES", '-m comment --comment "kubernetes service portals"'),
    ("nat", "POSTROUTING", "KUBE-POSTROUTING", '-m comment --comment "kubernetes postrouting rules"'),
    ("filter", "INPUT", "KUBE-FIREWALL", ""),
    ("filter", "OUTPUT", "KUBE-FIREWALL", ""),
)


def q(text: str) -> str:
    """A comment argument as kube-proxy writes it: quoted when it has spaces."""
    return f'"{text}"' if " " in text else text


@dataclass
class Ruleset:
    """What one node's iptables should hold (kube-proxy's part and ip-masq-agent's)."""
    filter: dict[str, list[str]] = field(default_factory=dict)     # top-level filter chains
    nat: dict[str, list[str]] = field(default_factory=dict)        # top-level nat chains
    services: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # service key -> nat chain -> rules

    def service_chains(self) -> dict[str, list[str]]:
        return {c: r for chains in self.services.values() for c, r in chains.items()}

    def restore_text(self, chains: set[str] | None = None, deleted: tuple[str, ...] = ()) -> str:
        """iptables-restore input (for --noflush): every top-level chain, and of the service chains
        those in `chains` (all when None); `deleted` chains are flushed and removed (-X)."""
        svc = {c: r for c, r in self.service_chains().items() if chains is None or c in chains}
        out = ["*filter"]
        out += [f":{c} - [0:0]" for c in self.filter]
        out += [r for rules in self.filter.values() for r in rules]
        out += ["COMMIT", "*nat"]
        out += [f":{c} - [0:0]" for c in (*self.nat, *svc, *deleted)]
        last = self.nat["KUBE-SERVICES"][-1:]        # "must be the last rule in this chain"
        out += [r for c, rules in self.nat.items() for r in (rules[:-1] if c == "KUBE-SERVICES" else rules)]
        out += [r for rules in svc.values() for r in rules]
        out += [f"-X {c}" for c in deleted]
        out += [*last, "COMMIT", ""]
        return "\n".join(out)


def jump_text(jumps=JUMPS) -> str:
    """iptables-restore --noflush input installing `jumps` (default: all) from the built-in chains,
    declaring the chains they jump to."""
    out = []
    for table in ("filter", "nat"):
        mine = [j for j in jumps if j[0] == table]
        if not mine:
            continue
        out.append(f"*{table}")
        chains = sorted({target for _, _, target, _ in mine})
        out += [f":{c} - [0:0]" for c in chains]
        out += [" ".join(x for x in (f"-I {chain}", args, f"-j {target}") if x) for _, chain, target, args in mine]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def render(table: ServiceTable, spec: TopologySpec, node: str) -> Ruleset:
    rs = Ruleset(filter={c: [] for c in FILTER_CHAINS}, nat={c: [] for c in NAT_CHAINS})
    cluster_cidr = str(spec.cluster_cidr)
    node_ip = spec.node(node).ip
    f, n = rs.filter, rs.nat
    pvs = views(table, node)
    large = sum(pv.endpoint_count for pv in pvs) > LARGE_CLUSTER_ENDPOINTS
    n["KUBE-POSTROUTING"] += [
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
    ]
    n["KUBE-MARK-MASQ"].append(f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}")
    # localhostNodePorts (kube-proxy's default): node ports answer on 127.0.0.1, so other
    # localnet traffic must not sneak in through route_localnet.
    f["KUBE-FIREWALL"].append('-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" '
                              "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")
    for pv in pvs:
        chains = _service(pv, cluster_cidr, node_ip, large, f, n)
        rs.services.setdefault(pv.svc.key, {}).update(chains)
    n["KUBE-SERVICES"].append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this '
                              'must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    f["KUBE-FORWARD"] += [
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
    ]
    return rs


def _match(pv: PortView, dst: str | None = None, dport: int | None = None) -> str:
    parts = [f"-m {pv.protocol} -p {pv.protocol}"]
    if dst:
        parts.append(f"-d {dst}")
    parts.append(f"--dport {dport if dport is not None else pv.port}")
    return " ".join(parts)


@dataclass(frozen=True)
class _Names:
    """A service port's chain names and the chains its frontends jump to."""
    svc: str
    svl: str
    ext: str
    fw: str
    internal: str           # the cluster IP's: SVL with internalTrafficPolicy Local, else SVC
    lb: str                 # the LoadBalancer IPs': FW with source ranges, else EXT


def _service(pv: PortView, cluster_cidr: str, node_ip, large: bool, f: dict, n: dict) -> dict[str, list[str]]:
    """One service port: its rules in the top-level chains (appended to f/n) and its own chains."""
    svc, svl, ext, fw = (c(pv.name, pv.protocol) for c in (svc_chain, svl_chain, ext_chain, fw_chain))
    names = _Names(svc, svl, ext, fw, svl if pv.internal_policy_local else svc, fw if pv.uses_firewall_chain else ext)
    _frontends(pv, names, f, n)
    chains: dict[str, list[str]] = {}
    if pv.uses_external_chain:
        chains[ext] = _external_chain(pv, names, cluster_cidr)
    if pv.uses_firewall_chain:
        chains[fw] = _firewall_chain(pv, names, node_ip)
    chains.update(_policy_chains(pv, names, cluster_cidr, large))
    chains.update(_endpoint_chains(pv, large))
    return chains


def _frontends(pv: PortView, names: _Names, f: dict, n: dict) -> None:
    """The service port's rules in the top-level chains: nat jumps to its chains where it has
    endpoints, filter REJECT/DROP (kube-proxy's "no endpoints" handling) where it has none."""
    name = pv.name
    comment = f'"{name} has no {"local " if pv.has_endpoints else ""}endpoints"'
    if pv.has_internal_endpoints:
        n["KUBE-SERVICES"].append(f'-A KUBE-SERVICES -m comment --comment "{name} cluster IP" '
                                  f"{_match(pv, pv.cluster_ip)} -j {names.internal}")
    else:
        f["KUBE-SERVICES"].append(f"-A KUBE-SERVICES -m comment --comment {comment} "
                                  f"{_match(pv, pv.cluster_ip)} -j {pv.internal_filter}")
    unserved = f["KUBE-EXTERNAL-SERVICES"] if not pv.has_external_endpoints else []
    for ip in pv.svc.external_ips:
        if pv.has_endpoints:
            n["KUBE-SERVICES"].append(f'-A KUBE-SERVICES -m comment --comment "{name} external IP" '
                                      f"{_match(pv, ip)} -j {names.ext}")
        unserved.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {comment} "
                        f"{_match(pv, ip)} -j {pv.external_filter}")
    for ip in pv.svc.load_balancer_ips:
        if pv.has_endpoints:
            n["KUBE-SERVICES"].append(f'-A KUBE-SERVICES -m comment --comment "{name} loadbalancer IP" '
                                      f"{_match(pv, ip)} -j {names.lb}")
        if pv.uses_firewall_chain:
            f["KUBE-PROXY-FIREWALL"].append(
                f'-A KUBE-PROXY-FIREWALL -m comment --comment "{name} traffic not accepted by {names.fw}" '
                f"{_match(pv, ip)} -j DROP")
    for ip in pv.svc.load_balancer_ips:
        unserved.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {comment} "
                        f"{_match(pv, ip)} -j {pv.external_filter}")
    if pv.node_port:
        if pv.has_endpoints:
            n["KUBE-NODEPORTS"].append(f"-A KUBE-NODEPORTS -m comment --comment {q(name)} "
                                       f"{_match(pv, None, pv.node_port)} -j {names.ext}")
        unserved.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {comment} -m addrtype --dst-type LOCAL "
                        f"{_match(pv, None, pv.node_port)} -j {pv.external_filter}")
    if pv.svc.health_check_node_port:      # set only for LoadBalancer with eTP Local
        f["KUBE-NODEPORTS"].append(f'-A KUBE-NODEPORTS -m comment --comment "{name} health check node port" '
                                   f"-m tcp -p tcp --dport {pv.svc.health_check_node_port} -j ACCEPT")


def _external_chain(pv: PortView, names: _Names, cluster_cidr: str) -> list[str]:
    """Masquerade what policy says, then to the cluster or local chain."""
    ext, svc, name = names.ext, names.svc, pv.name
    if not pv.external_policy_local:
        rules = [f'-A {ext} -m comment --comment "masquerade traffic for {name} external destinations" '
                 f"-j KUBE-MARK-MASQ"]
    else:
        # Pods reaching an external address skip the policy, as if out to a load balancer and
        # back; the node itself is masqueraded (its source would be the frontend address).
        rules = [f'-A {ext} -m comment --comment "pod traffic for {name} external destinations" '
                 f"-s {cluster_cidr} -j {svc}",
                 f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {name} external '
                 f'destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
                 f'-A {ext} -m comment --comment "route LOCAL traffic for {name} external destinations" '
                 f"-m addrtype --src-type LOCAL -j {svc}"]
    if pv.has_external_endpoints:
        rules.append(f"-A {ext} -j {names.svl if pv.external_policy_local else svc}")
    return rules


def _firewall_chain(pv: PortView, names: _Names, node_ip) -> list[str]:
    """loadBalancerSourceRanges: allowed sources on to the external chain, the rest dropped."""
    fw, name, to = names.fw, pv.name, names.ext
    rules = []
    allow_node = False
    for cidr in pv.source_ranges:
        rules.append(f'-A {fw} -m comment --comment "{name} loadbalancer IP" -s {cidr} -j {to}')
        allow_node |= node_ip in cidr
    if allow_node:   # the node reaching its own LB IP loops back with the LB IP as source
        for ip in pv.svc.load_balancer_ips:
            rules.append(f'-A {fw} -m comment --comment "{name} loadbalancer IP" -s {ip} -j {to}')
    rules.append(f'-A {fw} -m comment --comment "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"')
    return rules


def _policy_chains(pv: PortView, names: _Names, cluster_cidr: str, large: bool) -> dict[str, list[str]]:
    """The cluster and local policy chains: the internal one first masquerades traffic from
    outside the cluster CIDR to the cluster IP, then the affinity checks and the random cascade."""
    chains: dict[str, list[str]] = {}
    if pv.uses_cluster_chain:
        chains[names.svc] = []
    if pv.uses_local_chain:
        chains[names.svl] = []
    if pv.has_internal_endpoints:
        chains[names.internal].append(f'-A {names.internal} -m comment --comment "{pv.name} cluster IP" '
                                      f"{_match(pv, pv.cluster_ip)} ! -s {cluster_cidr} -j KUBE-MARK-MASQ")
    if pv.uses_cluster_chain:
        chains[names.svc] += _balance(pv, names.svc, pv.cluster_endpoints, large)
    if pv.uses_local_chain:
        chains[names.svl] += _balance(pv, names.svl, pv.local_endpoints, large)
    return chains


def _endpoint_chains(pv: PortView, large: bool) -> dict[str, list[str]]:
    """One chain per endpoint: hairpin masquerade, affinity record, DNAT."""
    chains = {}
    proto = pv.protocol
    for t in pv.all_reachable:
        ep = f"{t.address}:{t.port}"
        sep = sep_chain(pv.name, proto, ep)
        comment = "" if large else f" -m comment --comment {q(pv.name)}"
        recent = f" -m recent --name {sep} --set" if pv.affinity is not None else ""
        chains[sep] = [f"-A {sep}{comment} -s {t.address} -j KUBE-MARK-MASQ",
                       f"-A {sep}{comment}{recent} -m {proto} -p {proto} -j DNAT --to-destination {ep}"]
    return chains


def _balance(pv: PortView, chain: str, targets, large: bool) -> list[str]:
    """Affinity checks first, then the random cascade: endpoint i of n taken with 1/(n-i)."""
    rules = []
    eps = [(t, f"{t.address}:{t.port}") for t in targets]

    def comment(ep):
        return "" if large else f' -m comment --comment "{pv.name} -> {ep}"'
    if pv.affinity is not None:
        for t, ep in eps:
            sep = sep_chain(pv.name, pv.protocol, ep)
            rules.append(f"-A {chain}{comment(ep)} -m recent --name {sep} "
                         f"--rcheck --seconds {pv.affinity} --reap -j {sep}")
    for i, (t, ep) in enumerate(eps):
        sep = sep_chain(pv.name, pv.protocol, ep)
        left = len(eps) - i
        stat = f" -m statistic --mode random --probability {1.0 / left:0.10f}" if left > 1 else ""
        rules.append(f"-A {chain}{comment(ep)}{stat} -j {sep}")
    return rules


