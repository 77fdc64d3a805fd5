"""`dataplane explain`: the path one new connection takes, step by step, on each backend.

For eBPF, from the reference model (oracle/), not from the maps: the frontend the client meets
(oracle.frontends: which entry, its eligible endpoints in the order the flow hash indexes), then
one request run on the emulator (the same LabPlan, the oracle at every hook), recording each hook
the packets pass with what it decided and why: the backend the hash picks, the DNAT, the routing
between, the reverse NAT of the reply. For kube-proxy's modes, a walk of the rules (the lab's
installed rules read back from a node, or offline the project's rendering of them) chain by
chain, as kube-proxy's own packet tracer does (backends/iptables/walk.py, backends/nftables/
walk.py). Nothing here chooses anything the oracle or the walkers do not.

Offline (a scenario file, no lab) every backend is explained from the scenario's services.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address

from ..errors import DataplaneError
from ..oracle.frontends import PROTOCOL_NUMBERS, frontends
from ..spec.scenario import Scenario

BACKENDS = ("ebpf", "iptables", "nftables")
HOOK_NAMES = {"from_pod", "to_pod", "from_netdev", "to_netdev"}


@dataclass
class Target:
    """Who connects where, resolved against the scenario."""
    client: str              # the scenario object (pod, node or host)
    role: str                # pod | node | host
    client_ip: IPv4Address
    node: str                # the node whose dataplane meets the first packet
    addr: IPv4Address
    port: int
    protocol: str            # TCP | UDP
    service: str | None = None     # namespace/name, when asked by service
    port_name: str = ""


@dataclass
class Explanation:
    backend: str
    target: Target
    candidates: list = field(default_factory=list)    # "ip:port" each, in the backend's order
    chosen: str | None = None                          # the endpoint this packet reaches
    verdict: str = ""                                  # DNAT | REJECT | DROP | ACCEPT (untranslated)
    steps: list = field(default_factory=list)          # lines, in the order the packet meets them
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        t = self.target
        return {"backend": self.backend, "client": t.client, "client_ip": str(t.client_ip), "node": t.node,
                "to": f"{t.addr}:{t.port}/{t.protocol}", "service": t.service, "candidates": self.candidates,
                "chosen": self.chosen, "verdict": self.verdict, "steps": self.steps, "notes": self.notes}


def resolve(scenario: Scenario, table, client: str, to: str, protocol: str | None) -> Target:
    """`--from pod/NAME` (or node/, host/, or a bare name) and `--to service/NAME[:PORT]` (or
    ADDRESS:PORT) against the scenario, with errors that list what there is."""
    topo = scenario.topology
    kind, _, name = client.rpartition("/")
    obj = topo.find(name)
    roles = {"pod": "pod", "node": "node", "host": "host"}
    if obj is None or (kind and roles.get(kind) != _role(topo, name)):
        known = [f"pod/{p.name}" for p in topo.pods] + [f"node/{n.name}" for n in topo.nodes] + \
                [f"host/{h.name}" for h in topo.hosts]
        raise DataplaneError(f"--from {client!r}: no such client in {scenario.name}; clients: {', '.join(known)}")
    role = _role(topo, name)
    node = obj.node if role == "pod" else (name if role == "node" else None)
    if to.startswith("service/"):
        svc_name, _, port_text = to[len("service/"):].partition(":")
        svc = table.get(svc_name)
        if svc is None:
            raise DataplaneError(f"--to {to!r}: no service {svc_name!r}; services: "
                                 f"{', '.join(s.key for s in table) or '(none)'}")
        sp = svc.port(int(port_text) if port_text.isdigit() else port_text) if port_text else svc.ports[0]
        if sp is None:
            raise DataplaneError(f"--to {to!r}: {svc.key} has no port {port_text!r}; its ports: "
                                 f"{', '.join(p.name or str(p.port) for p in svc.ports)}")
        if protocol and protocol != sp.protocol:
            raise DataplaneError(f"--protocol {protocol}: {svc.key} port {sp.name or sp.port} is {sp.protocol}")
        addr, port = svc.cluster_ip, sp.port
        if role == "host":              # outside the cluster: the first node port, else a LB/external IP
            addr, port = _external_address(topo, svc, sp)
        target = Target(name, role, obj.ip, node or "", addr, port, sp.protocol, svc.key, sp.name)
    elif to.startswith(("node/", "pod/")):
        obj_name, _, port_text = to.split("/", 1)[1].partition(":")
        dest = topo.find(obj_name)
        if dest is None or not port_text.isdigit():
            raise DataplaneError(f"--to {to!r}: expected {to.split('/')[0]}/NAME:PORT with a {to.split('/')[0]} "
                                 f"of {scenario.name}")
        target = Target(name, role, obj.ip, node or "", dest.ip, int(port_text), protocol or "TCP")
    else:
        addr_text, _, port_text = to.rpartition(":")
        try:
            addr, port = IPv4Address(addr_text), int(port_text)
        except ValueError:
            raise DataplaneError(f"--to {to!r}: expected service/NAME[:PORT], node/NAME:PORT or ADDRESS:PORT") from None
        target = Target(name, role, obj.ip, node or "", addr, port, protocol or "TCP")
    if role == "host" or _node_port_elsewhere(scenario, table, target):
        # from outside, or to a node port of another node: that node decides
        target.node = entry_node(scenario, target.addr)
    return target


def target_of_check(scenario: Scenario, table, step) -> Target:
    """A check's connection (its client, address, port and protocol as resolved) as a Target."""
    topo = scenario.topology
    role = _role(topo, step.client)
    obj = topo.find(step.client)
    node = obj.node if role == "pod" else (step.client if role == "node" else entry_node(scenario, step.ip))
    service, port_name = None, ""
    if step.target.startswith("service/"):
        svc = table.get(step.target[len("service/"):])
        if svc is not None:
            service = svc.key
            sp = next((p for p in svc.ports if p.port == step.port and p.protocol == step.protocol), None)
            port_name = sp.name if sp else ""
    target = Target(step.client, role, obj.ip, node or topo.nodes[0].name, step.ip, step.port, step.protocol,
                    service, port_name)
    if _node_port_elsewhere(scenario, table, target):
        target.node = entry_node(scenario, step.ip)      # a node port of another node: that node decides
    return target


def _node_port_elsewhere(scenario: Scenario, table, target: Target) -> bool:
    """Is the target a node port of a node other than the client's own?"""
    owner = _node_of_address(scenario.topology, target.addr)
    if owner is None or owner == target.node:
        return False
    fronts = frontends(table, owner, scenario.topology.node(owner).ip)
    return fronts.find(target.addr, target.port, PROTOCOL_NUMBERS[target.protocol]) is not None


def _role(topo, name: str) -> str | None:
    if any(p.name == name for p in topo.pods):
        return "pod"
    if any(n.name == name for n in topo.nodes):
        return "node"
    if any(h.name == name for h in topo.hosts):
        return "host"
    return None


def _external_address(topo, svc, sp):
    if sp.node_port:
        return topo.nodes[0].ip, sp.node_port
    for ip in (*svc.load_balancer_ips, *svc.external_ips):
        return ip, sp.port
    raise DataplaneError(f"{svc.key} port {sp.name or sp.port} has no node port, load-balancer or external IP: "
                         f"a host outside the cluster cannot reach it (a cluster IP is the cluster's own)")


def _node_of_address(topo, addr) -> str | None:
    return next((n.name for n in topo.nodes if n.ip == addr), None)


def entry_node(scenario: Scenario, addr) -> str:
    """The node whose dataplane meets a packet from outside the cluster to `addr`: the node that
    owns it (a node port), the node the underlay routes a load-balancer or external IP to, the
    node it routes the service CIDR to; else the first node."""
    topo = scenario.topology
    addr = IPv4Address(addr)
    owner = _node_of_address(topo, addr)
    if owner:
        return owner
    routed = next((node for ip, node in scenario.frontend_routes if IPv4Address(ip) == addr), None)
    if routed:
        return routed
    if topo.service_route and addr in topo.service_cidr:
        return topo.service_route
    return topo.nodes[0].name


# -- eBPF: the reference model --------------------------------------------------------------------

def explain_ebpf(scenario: Scenario, table, target: Target, seed: int = 0) -> Explanation:
    """The oracle's frontend and candidates, then one request on the emulator, hook by hook."""
    from ..emulator.net import SimNet
    from ..lab.plan import make_plan
    topo = scenario.topology
    ex = Explanation("ebpf", target)
    node_ip = topo.node(target.node).ip if target.node else None
    fronts = frontends(table, target.node, node_ip)
    proto = PROTOCOL_NUMBERS[target.protocol]
    front = fronts.for_pod(target.addr, target.port, proto) if target.role != "host" else \
        fronts.find(target.addr, target.port, proto)
    if front is None:
        ex.steps.append(f"{target.node}: {target.addr}:{target.port}/{target.protocol} is no frontend of this node"
                        + (" (a cluster IP on a port it does not serve: rejected)"
                           if fronts.is_cluster_ip(target.addr) else ": passed untranslated"))
    elif not front.admits(target.client_ip):
        ex.steps.append(f"{target.node}: frontend {front.addr}:{front.port}/{target.protocol} of {front.service} "
                        f"does not admit {target.client_ip} (loadBalancerSourceRanges): dropped before a backend "
                        f"is chosen")
    else:
        ex.candidates = [f"{b.addr}:{b.port}" for b in front.targets]
        kind = "the pods' own entry (externalTrafficPolicy Local short-circuit)" if front.users == "pods" else "entry"
        ex.steps.append(f"{target.node}: frontend {front.addr}:{front.port}/{target.protocol} of {front.service}, "
                        f"{kind}: {len(front.targets)} eligible endpoint(s) in hash order"
                        + (f", session affinity {front.affinity}s" if front.affinity else "")
                        + (", masqueraded (externalTrafficPolicy Cluster)" if front.masquerade else "")
                        + (", dropped: no endpoint on this node (traffic policy Local)" if front.local_only else ""))
    plan = make_plan(topo, scenario.name, scenario.frontend_routes)
    net = _TracedSimNet(plan, table, seed)
    result = net.request(plan.netns_of(target.client), target.addr, target.port, target.protocol, timeout=2.0)
    ex.steps += net.lines
    if net.repeated:
        ex.steps.append(f"... and {net.repeated} more packet(s) of the flow, each translated as above by its "
                        f"conntrack entries")
    ex.chosen = next((c for c in net.dnat_to), None)
    outcome = result.get("outcome")
    # the verdict is the programs' (the first decision that is not a pass); the request's end, which
    # the network and the server decide too, is a note
    decided = net.decisions[0] if net.decisions else None
    if ex.chosen:
        ex.verdict = "DNAT"
    elif decided and decided.startswith("REJECT"):
        ex.verdict = "REJECT"
    elif decided and decided.startswith("DROP"):
        ex.verdict = "DROP"
    elif front is not None and not net.lines:
        # no hook saw the packet (the network dropped it before a node): what the node would do
        ex.verdict = "DNAT" if front.targets and not front.local_only else "DROP"
        ex.notes.append(f"no packet reached a dataplane hook: the verdict is {target.node}'s frontend's")
    else:
        ex.verdict = "ACCEPT"
    if ex.verdict == "ACCEPT" and net.masqueraded:
        ex.verdict = "ACCEPT, masqueraded"
    if outcome == "reachable" and ex.chosen:
        ex.notes.append(f"the request was answered by {result.get('hostname')} (on the emulator, seed {seed}; a lab "
                        f"with the same seed hashes the same flow to the same backend)")
    else:
        ex.notes.append(f"the request was {outcome} (on the emulator)")
    return ex


class _TracedSimNet:
    """The emulator with every hook call written down: where, what came in, what went out, why."""

    def __new__(cls, plan, table, seed):
        from ..emulator.net import SimNet

        class Traced(SimNet):
            def socket_destination(self, sim, proto, dst, port):
                # a node's own process: the socket hooks (connect4/sendmsg4) choose, not a TC hook
                where = super().socket_destination(sim, proto, dst, port)
                if sim.role == "node" and sim.datapath is not None:
                    name = {6: "TCP", 17: "UDP"}.get(proto, str(proto))
                    if where == (None, None):
                        self.lines.append(f"{sim.obj} sock_connect4 {name} -> {dst}:{port}: refused at connect() "
                                          f"(ECONNREFUSED), as kube-proxy's REJECT")
                        self.decisions.append("REJECT (at connect)")
                    elif (IPv4Address(where[0]), where[1]) != (IPv4Address(dst), port):
                        self.lines.append(f"{sim.obj} sock_connect4 {name} -> {dst}:{port}: M_SOCK_LB — the socket "
                                          f"connects to backend {where[0]}:{where[1]} (the frontend is kept for "
                                          f"getpeername and replies)")
                        self.dnat_to.append(f"{where[0]}:{where[1]}")
                return where

            def _hooks(self, ns, ifname):
                found = super()._hooks(ns, ifname)
                if found is None:
                    return None
                dp, ingress, egress = found
                node = self.ns[ns].obj
                return dp, self._wrap(node, ifname, ingress), self._wrap(node, ifname, egress)

            def _wrap(self, node, ifname, hook):
                def traced(frame, now):
                    r = hook(frame, now)
                    if r.reason and r.reason != "M_PASS":
                        seen = (node, hook.__name__, ifname, r.reason)
                        if seen in self.seen:
                            self.repeated += 1
                            return r
                        self.seen.add(seen)
                        before, after = _tuple(frame), _tuple(r.data)
                        line = f"{node} {hook.__name__}({ifname}) {before}: {r.reason}"
                        if r.why:
                            line += " — " + "; ".join(r.why)
                        if r.verdict != "drop" and after != before:
                            line += f" => {after}"
                        self.lines.append(line)
                        self.decisions.append(r.reason)
                        if r.reason == "M_DNAT_NEW":
                            self.dnat_to.append(after.split(" -> ")[1].split(" ")[0])
                        if r.reason == "M_SNAT_NEW":
                            self.masqueraded = True
                    return r
                traced.__name__ = hook.__name__
                return traced

        net = Traced(plan, table, seed)
        net.lines, net.dnat_to, net.seen, net.repeated, net.masqueraded = [], [], set(), 0, False
        net.decisions = []
        return net


def _tuple(frame: bytes) -> str:
    from ..emulator.packets import Ip
    ip = Ip.parse(frame[14:]) if len(frame) >= 34 else None
    if ip is None:
        return "(not IPv4)"
    names = {1: "ICMP", 6: "TCP", 17: "UDP"}
    proto = names.get(ip.proto, str(ip.proto))
    if ip.proto in (6, 17) and len(ip.payload) >= 4:
        sport, dport = int.from_bytes(ip.payload[0:2], "big"), int.from_bytes(ip.payload[2:4], "big")
        flags = ""
        if ip.proto == 6 and len(ip.payload) >= 14:
            bits = ip.payload[13]
            flags = " [" + "".join(ch for bit, ch in ((2, "S"), (16, "."), (1, "F"), (4, "R")) if bits & bit) + "]"
        return f"{proto} {ip.src}:{sport} -> {ip.dst}:{dport}{flags}"
    return f"{proto} {ip.src} -> {ip.dst}"


# -- kube-proxy's modes: a walk of the rules --------------------------------------------------------

def rules_offline(mode: str, scenario: Scenario, table, node: str) -> str:
    """What kube-proxy's `mode` would install on `node` for the table, rendered (no kernel)."""
    if mode == "nftables":
        from ..backends.nftables.render import render
        return render(table, scenario.topology, node).full_text()
    from ..backends.iptables.render import render
    from ..backends.kubeproxy.masq_agent import masq_agent_text
    # ip-masq-agent's rules too, as a node holds them beside kube-proxy's (egress masquerade)
    return render(table, scenario.topology, node).restore_text() + (masq_agent_text(scenario.topology) or "")


def explain_kube_proxy(mode: str, scenario: Scenario, target: Target, rules: str, source: str) -> Explanation:
    """The walk of `rules` (iptables-save text, or nft's) for the target's first packet."""
    from ..backends.kubeproxy.walk import Packet
    topo = scenario.topology
    node_ip = str(topo.node(target.node).ip)
    packet = Packet(src=str(target.client_ip), dst=str(target.addr), protocol=target.protocol, dport=target.port,
                    origin="local" if target.role == "node" else "forwarded", local_addresses=(node_ip,))
    if mode == "nftables":
        from ..backends.nftables.walk import walk_nftables as walk_rules
    else:
        from ..backends.iptables.walk import walk_iptables as walk_rules
    walk = walk_rules(rules, packet)
    ex = Explanation(mode, target)
    ex.candidates = [c.endpoint for c in walk.candidates]
    ex.chosen = walk.endpoint
    ex.verdict = walk.verdict
    ex.steps.append(f"{target.node}: the rules {source}")
    for s in walk.steps:
        ex.steps.append(f"{s.table} {s.chain}: {s.rule}  -> {s.action}")
    if walk.candidates:
        ex.notes.append("each endpoint's chance: " + ", ".join(f"{c.endpoint} {c.probability:.3f}"
                                                              for c in walk.candidates)
                        + f"; this walk follows {walk.endpoint or 'the first'} (the kernel draws at random)")
    if walk.masquerade:
        ex.notes.append(f"masqueraded: leaves {target.node} with its address {node_ip}")
        if walk.verdict == "ACCEPT":
            ex.verdict = "ACCEPT, masqueraded"
    if mode == "nftables":
        ex.notes.append("ip-masq-agent's egress masquerade is iptables rules beside this table (`dataplane rules`): "
                        "not walked here")
    ex.notes += walk.affinity + walk.notes
    return ex


def explain(scenario: Scenario, table, target: Target, backends=BACKENDS, seed: int = 0, live=None) -> list:
    """Explanations for each of `backends`. `live`: a function node, mode -> (rules text, where
    read) for a running lab's installed rules; None renders them from the scenario."""
    out = []
    for b in backends:
        if b == "ebpf":
            out.append(explain_ebpf(scenario, table, target, seed))
            continue
        mode = "iptables" if b == "iptables-legacy" else b
        if live is not None:
            text, where = live(target.node, b)
        else:
            text, where = rules_offline(mode, scenario, table, target.node), "rendered from the scenario (offline)"
        ex = explain_kube_proxy(mode, scenario, target, text, where)
        ex.backend = b
        out.append(ex)
    return out


def format_text(explanations: list) -> str:
    lines = []
    for ex in explanations:
        t = ex.target
        head = f"=== {ex.backend}: {t.client} ({t.client_ip}) -> {t.addr}:{t.port}/{t.protocol}"
        lines.append(head + (f" [{t.service}{':' + t.port_name if t.port_name else ''}]" if t.service else ""))
        lines.append(f"candidates: {', '.join(ex.candidates) or '(none)'}")
        lines += [f"  {s}" for s in ex.steps]
        lines.append(f"verdict: {ex.verdict}" + (f" to {ex.chosen}" if ex.chosen else "")
                     + (" (not DNATed: routed on like any other packet)" if ex.verdict.startswith("ACCEPT") else ""))
        lines += [f"note: {n}" for n in ex.notes]
    if len(explanations) > 1:
        sets = {ex.backend: sorted(ex.candidates) for ex in explanations}
        same = len({tuple(v) for v in sets.values()}) == 1
        lines.append("=== the backends " + ("agree on the candidates" if same else
                                              "DISAGREE on the candidates: " + "; ".join(
                                                  f"{b} {', '.join(v) or '(none)'}" for b, v in sets.items())))
        verdicts = {ex.backend: ex.verdict for ex in explanations}
        if len({v.split(",")[0] for v in verdicts.values()}) > 1:
            lines.append("=== their verdicts differ: " + ", ".join(f"{b} {v}" for b, v in verdicts.items())
                         + " (docs/differences.md lists where kube-proxy's own modes disagree, and whom eBPF follows)")
    return "\n".join(lines) + "\n"
