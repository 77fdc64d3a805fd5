"""Generated scenarios, for fuzzing the backends against each other (`dataplane fuzz scenarios`).

`scenario_text(seed, index)` is a whole scenario file, the same for the same (seed, index) and
loadable by dataplane.spec.scenario: a topology of one of the three network models (1-3 nodes, a
few pods, at most one outside host), services of every type with their policies
(internal/external traffic policy, ClientIP affinity with 1-3 s lifetimes, several named ports,
named target ports, source ranges, external IPs), pods ready, unready or terminating, updates
(pods changing readiness and labels, services added, changed, deleted, cluster IPs reused),
sleeps across affinity lifetimes, and checks of every kind the format has.

The generator does not know the right outcome, and says none: a check expects the format's
default (`reachable`) and is judged by comparing backends, not by its `expect`. It does know,
from its own small model of Kubernetes' endpoint selection below (independent of
dataplane.spec.policy), which endpoints are eligible, and writes only what every correct
backend must do alike: `backends:` is the whole eligible set, `sameBackend` only where affinity
or one UDP flow makes the answer deterministic. The model's prediction also sets what changes the
cost of a run, never its result: a check whose frontend should have no eligible endpoint gets a
1 s timeout, at most a few such checks per scenario. Checks whose result kube-proxy's own modes
leave open are not generated (a pod reaching another node's eTP Local node port, see
docs/differences.md); a check to a cluster IP on a port it does not serve says `expect: refused`,
the reference outcome of that documented difference.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

import yaml

MODELS = ("flat", "island", "air-gapped")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
# the check kinds the generator writes (coverage is tested across seeds)
KINDS = ("pod-service", "pod-unserved-port", "node-service", "host-nodeport", "host-loadbalancer",
         "host-external-ip", "pod-nodeport", "pod-loadbalancer", "pod-external-ip", "pod-pod", "pod-host",
         "host-pod")
EXT_IP = "10.128.1.1"
MAX_UNANSWERED = 3            # checks per scenario expected to wait out a timeout
MAX_SLEEP = 5.0               # seconds of sleeps per scenario


def scenario_text(seed: int, index: int) -> str:
    """Scenario YAML for (seed, index): the same text for the same pair."""
    return dump(scenario_doc(seed, index))


def scenario_doc(seed: int, index: int) -> dict:
    """The scenario as plain data (what scenario_text dumps)."""
    return _Generator(random.Random(seed * 1_000_003 + index), seed, index).build()


def dump(doc: dict) -> str:
    """A scenario's data as YAML, leaves in flow style (`{name: a1, node: node1}`)."""
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110)


def checks_of(doc: dict) -> list[dict]:
    """The check items of a scenario's data, in order (not its sleeps and updates)."""
    return [s for s in doc.get("checks", []) if "sleep" not in s and "update" not in s]


# -- the generator's model of the cluster -----------------------------------------------------

# the named ports of each layout of a server pod's ports (the default ports are named http and udp)
NAMED = {"plain": {("http", "TCP"): 8080, ("udp", "UDP"): 8080}, "named": {("http", "TCP"): 8080, ("dns", "UDP"): 8080},
         "alt": {("http", "TCP"): 9090, ("dns", "UDP"): 9090}}


@dataclass
class Pod:
    name: str
    node: str
    labels: dict
    layout: str = "plain"          # plain: the default ports (http, udp: 8080); named: http/dns on 8080;
                                   # alt: http/dns on 9090 and unnamed 8080
    ready: bool = True
    terminating: bool = False

    def spec(self) -> dict:
        out = {"name": self.name, "node": self.node}
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.layout == "named":
            out["ports"] = [{"name": "http", "port": 8080}, {"name": "dns", "port": 8080, "protocol": "UDP"}]
        elif self.layout == "alt":
            out["ports"] = [{"name": "http", "port": 9090}, {"name": "dns", "port": 9090, "protocol": "UDP"},
                            8080, "8080/UDP"]
        if not self.ready:
            out["ready"] = False
        if self.terminating:
            out["terminating"] = True
        return out


@dataclass
class Port:
    name: str
    port: int
    protocol: str
    target: int | str
    node_port: int | None = None

    def spec(self, multi: bool) -> dict:
        out = {}
        if multi:
            out["name"] = self.name
        out["port"] = self.port
        if self.protocol != "TCP":
            out["protocol"] = self.protocol
        out["targetPort"] = self.target
        if self.node_port:
            out["nodePort"] = self.node_port
        return out


@dataclass
class Svc:
    name: str
    type: str
    cluster_ip: str
    selector: dict
    ports: list
    itp: str = "Cluster"
    etp: str = "Cluster"
    affinity: int | None = None            # timeoutSeconds of ClientIP affinity
    external_ips: list = field(default_factory=list)
    lb_ip: str | None = None
    ranges: list = field(default_factory=list)

    def spec(self) -> dict:
        out = {"name": self.name}
        if self.type != "ClusterIP":
            out["type"] = self.type
        out["clusterIP"] = self.cluster_ip
        out["selector"] = dict(self.selector)
        out["ports"] = [p.spec(len(self.ports) > 1) for p in self.ports]
        if self.affinity:
            out["sessionAffinity"] = "ClientIP"
            out["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": self.affinity}}
        if self.itp != "Cluster":
            out["internalTrafficPolicy"] = self.itp
        if self.etp != "Cluster":
            out["externalTrafficPolicy"] = self.etp
        if self.external_ips:
            out["externalIPs"] = list(self.external_ips)
        if self.lb_ip:
            out["loadBalancerIP"] = self.lb_ip
        if self.ranges:
            out["loadBalancerSourceRanges"] = list(self.ranges)
        return out


def _in_ranges(ip: str, ranges) -> bool:
    return not ranges or any(IPv4Address(ip) in IPv4Network(r) for r in ranges)


class _Generator:
    def __init__(self, rng: random.Random, seed: int, index: int):
        self.r = rng
        self.seed, self.index = seed, index
        self.pods: dict[str, Pod] = {}
        self.pod_ip: dict[str, str] = {}
        self.services: dict[str, Svc] = {}
        self.free_ips: list[str] = []
        self.next_ip = 10
        self.next_node_port = 31000     # above the health-check ports the API server allocates
        self.next_svc = 1
        self.routed: dict[str, str] = {}        # LB or external IP -> node the underlay sends it to
        self.steps: list[dict] = []
        self.unanswered = 0
        self.slept = 0.0
        self.source_ports: dict[str, int] = {}  # client -> a port it used (reused later)

    # -- topology --
    def build(self) -> dict:
        r = self.r
        self.model = r.choice(MODELS)
        # eBPF compiles its programs per node (seconds of CPU each): mostly small clusters
        self.nodes = [f"node{i}" for i in range(1, r.choice((1, 1, 2, 2, 2, 3)) + 1)]
        counts = {n: 0 for n in self.nodes}

        def add(name, labels, layout="plain"):
            node = r.choice(self.nodes)
            counts[node] += 1
            self.pods[name] = Pod(name, node, labels, layout)
            self.pod_ip[name] = f"10.0.{self.nodes.index(node) + 1}.{counts[node] + 1}"

        for i in range(1, r.randint(1, 2) + 1):
            add(f"c{i}", {})
        for i in range(1, r.randint(2, 5) + 1):
            pod_labels = {"app": r.choice("ab")}
            add(f"w{i}", pod_labels, r.choice(("plain", "plain", "named", "alt")))
            p = self.pods[f"w{i}"]
            p.ready = r.random() > 0.15
            p.terminating = r.random() < 0.12
        self.host = r.random() < (0.5 if self.model == "air-gapped" else 0.85)
        for _ in range(r.randint(1, 3)):
            self._add_service()
        self._route()
        topology = {"model": self.model, "nodes": list(self.nodes),
                    "pods": [p.spec() for p in self.pods.values()]}
        if self.host:
            topology["outside"] = [{"name": "ext", "ip": EXT_IP}]
        services = [s.spec() for s in self.services.values()]
        self._steps()
        return {"name": f"fuzz-{self.seed % 100000}-{self.index}",
                "description": f"generated by `dataplane fuzz scenarios` (seed {self.seed}, index {self.index})",
                "topology": topology, "services": services, "checks": self.steps}

    # -- services --
    def _cluster_ip(self) -> str:
        if self.free_ips and self.r.random() < 0.7:
            return self.free_ips.pop(0)            # an id reused: a deleted service's address
        ip = f"10.96.0.{self.next_ip}"
        self.next_ip += 1
        return ip

    def _node_port(self) -> int:
        self.next_node_port += 1
        return self.next_node_port

    def _ports(self, type_: str) -> list[Port]:
        r = self.r
        choices = [("http", 80, "TCP"), ("dns", 53, "UDP"), ("alt", 8000, "TCP"), ("udp", 5353, "UDP")]
        chosen = r.sample(choices, r.choice((1, 1, 2, 2, 3)))
        ports = []
        for name, number, proto in chosen:
            named = "http" if proto == "TCP" else r.choice(("dns", "udp"))
            if r.random() < 0.08:
                named = r.choice(("dns", "udp")) if proto == "TCP" else "http"   # no pod has it for this protocol
            target = named if r.random() < 0.4 else 8080
            node_port = self._node_port() if type_ != "ClusterIP" else None
            ports.append(Port(name, number, proto, target, node_port))
        return ports

    def _new_service(self, name: str) -> Svc:
        r = self.r
        type_ = r.choice(SERVICE_TYPES)
        svc = Svc(name, type_, self._cluster_ip(), {"app": r.choice("ab")}, self._ports(type_))
        self._policies(svc)
        number = int(name[1:])
        if r.random() < 0.2:
            svc.external_ips = [f"10.200.0.{number}"]
        if type_ == "LoadBalancer":
            svc.lb_ip = f"10.201.0.{number}"
            if r.random() < 0.35:
                svc.ranges = r.choice((["10.128.1.0/25"], ["10.128.1.128/25"], ["10.0.0.0/16"],
                                       ["10.128.1.128/25", "10.0.0.0/16"]))
        return svc

    def _policies(self, svc: Svc) -> None:
        r = self.r
        svc.itp = "Local" if r.random() < 0.3 else "Cluster"
        svc.etp = "Local" if svc.type != "ClusterIP" and r.random() < 0.4 else "Cluster"
        svc.affinity = r.randint(1, 3) if r.random() < 0.3 else None

    def _add_service(self) -> Svc:
        name = f"s{self.next_svc}"
        self.next_svc += 1
        svc = self._new_service(name)
        self.services[name] = svc
        return svc

    def _route(self) -> None:
        """Where the underlay sends each LB and external IP, as dataplane.spec.scenario does."""
        if self.model == "air-gapped":
            return
        for svc in self.services.values():
            node = self.nodes[0]
            if svc.etp == "Local":
                local = [n for n in self.nodes if self._eligible(svc, svc.ports[0], n)]
                node = local[0] if local else node
            for ip in (svc.lb_ip, *svc.external_ips):
                if ip:
                    self.routed.setdefault(ip, node)

    # -- the model: which endpoints are eligible --
    def _endpoints(self, svc: Svc, port: Port):
        out = []
        for pod in self.pods.values():
            if any(pod.labels.get(k) != v for k, v in svc.selector.items()) or not svc.selector:
                continue
            if isinstance(port.target, str) and (port.target, port.protocol) not in NAMED[pod.layout]:
                continue
            out.append(pod)
        return out

    def _eligible(self, svc: Svc, port: Port, node: str | None = None) -> list[str]:
        eps = [p for p in self._endpoints(svc, port) if node is None or p.node == node]
        ready = [p for p in eps if p.ready and not p.terminating]
        chosen = ready or [p for p in eps if p.ready and p.terminating]
        return sorted(p.name for p in chosen)

    # -- steps --
    def _steps(self) -> None:
        r = self.r
        n_checks = r.randint(4, 8)
        updates = r.choice((0, 1, 1, 2, 2))
        update_at = sorted(r.sample(range(1, n_checks), min(updates, n_checks - 1)))
        for i in range(n_checks):
            if i in update_at:
                self._update()
            self._check(i)
            sticky = self.steps and self.steps[-1].get("sameBackend")      # across the affinity lifetime
            if i < n_checks - 1 and self.slept < MAX_SLEEP - 1 and r.random() < (0.5 if sticky else 0.15):
                seconds = min(round(r.uniform(1.0, 3.2), 1), MAX_SLEEP - self.slept)
                self.slept += seconds
                self.steps.append({"sleep": seconds})
        while "sleep" in self.steps[-1]:
            self.slept -= self.steps.pop()["sleep"]

    def _clients(self) -> list[str]:
        return list(self.pods)

    def _check(self, i: int) -> None:
        r = self.r
        for _ in range(20):
            kind = r.choice(KINDS)
            check = getattr(self, "_" + kind.replace("-", "_"))()
            if check is None:
                continue
            check, eligible = check
            if not eligible and self.unanswered >= MAX_UNANSWERED:
                continue
            self._finish(i, kind, check, eligible)
            return
        self._finish(i, "pod-pod", *self._pod_pod())     # always applies

    def _finish(self, i: int, kind: str, check: dict, eligible) -> None:
        """Name, timeout and the fields every correct backend meets alike."""
        r = self.r
        protocol = check.get("protocol", "TCP")
        check.pop("_port", None)
        svc = check.pop("_svc", None)
        if not eligible:
            self.unanswered += 1
            check["timeout"] = 1
            check["requests"] = 1
        else:
            check["timeout"] = 2
            check["requests"] = r.choice((1, 1, 2, 3))
            check["backends"] = list(eligible)
            if svc is not None and svc.affinity:
                check["requests"] = 3
                check["sameBackend"] = True
            if protocol == "UDP" and r.random() < 0.3:
                check["sourcePort"] = self._source_port(check["from"])
                check["requests"] = 2
                if not check["from"].startswith("node/"):
                    # one flow: one backend. Not for a node's own process: the eBPF dataplane
                    # chooses per socket at connect() (socket-level load balancing), kube-proxy
                    # per conntrack entry (docs/differences.md)
                    check["sameBackend"] = True
            elif protocol == "TCP" and r.random() < 0.15:
                check["sourcePort"] = self._source_port(check["from"])
            if r.random() < 0.15:
                check["size"] = 3000
            if protocol == "TCP" and r.random() < 0.12:
                check["halfClose"] = True
                check["delay"] = 0.5
                check["requests"] = 1
        head = {"name": f"#{i + 1} {kind}: {check['from']} -> {check['to']}:{check.get('port', '')}/{protocol}"}
        self.steps.append({**head, **check})

    def _source_port(self, client: str) -> int:
        if client in self.source_ports and self.r.random() < 0.6:
            return self.source_ports[client]            # reused: the same tuple, another step
        port = self.r.randint(40000, 40999)
        self.source_ports[client] = port
        return port

    # -- one function per kind: (check, the eligible backends, [] for none) or None if it does not apply --
    def _any_port(self, svc: Svc) -> Port:
        return self.r.choice(svc.ports)

    def _pod_service(self):
        if not self.services:
            return None
        svc = self.services[self.r.choice(sorted(self.services))]
        port = self._any_port(svc)
        client = self.r.choice(self._clients())
        node = self.pods[client].node
        eligible = self._eligible(svc, port, node if svc.itp == "Local" else None)
        check = {"from": f"pod/{client}", "to": f"service/{svc.name}", "port": port.port, "protocol": port.protocol}
        return {**check, "_svc": svc, "_port": port}, eligible

    def _pod_unserved_port(self):
        if not self.services:
            return None
        svc = self.services[self.r.choice(sorted(self.services))]
        client = self.r.choice(self._clients())
        served = {(p.port, p.protocol) for p in svc.ports}
        for port, proto in ((80, "UDP"), (81, "TCP"), (53, "TCP"), (8000, "UDP")):
            if (port, proto) not in served:
                # the reference outcome of docs/differences.md's cluster-ip-unserved-port
                return {"from": f"pod/{client}", "to": f"service/{svc.name}", "port": port, "protocol": proto,
                        "expect": "refused"}, []
        return None

    def _node_service(self):
        if not self.services:
            return None
        svc = self.services[self.r.choice(sorted(self.services))]
        port = self._any_port(svc)
        node = self.r.choice(self.nodes)
        eligible = self._eligible(svc, port, node if svc.itp == "Local" else None)
        check = {"from": f"node/{node}", "to": f"service/{svc.name}", "port": port.port, "protocol": port.protocol}
        return {**check, "_svc": svc, "_port": port}, eligible

    def _node_port_services(self):
        return [s for n, s in sorted(self.services.items()) if s.type != "ClusterIP"]

    def _host_nodeport(self):
        svcs = self._node_port_services()
        if not self.host or not svcs:
            return None
        svc = self.r.choice(svcs)
        port = self._any_port(svc)
        node = self.r.choice(self.nodes)
        if self.model == "air-gapped":
            eligible = []
        else:
            eligible = self._eligible(svc, port, node if svc.etp == "Local" else None)
        check = {"from": "host/ext", "to": f"node/{node}", "port": port.node_port, "protocol": port.protocol}
        return {**check, "_svc": svc, "_port": port}, eligible

    def _frontend_ip(self, which: str):
        svcs = [s for s in self.services.values() if (s.lb_ip if which == "lb" else s.external_ips)]
        if not svcs:
            return None
        svc = self.r.choice(sorted(svcs, key=lambda s: s.name))
        ip = svc.lb_ip if which == "lb" else svc.external_ips[0]
        return svc, ip, self._any_port(svc)

    def _host_frontend(self, which: str):
        found = self._frontend_ip(which)
        if not self.host or found is None:
            return None
        svc, ip, port = found
        node = self.routed.get(ip)
        if node is None or (which == "lb" and not _in_ranges(EXT_IP, svc.ranges)):
            eligible = []
        else:
            eligible = self._eligible(svc, port, node if svc.etp == "Local" else None)
        check = {"from": "host/ext", "to": ip, "port": port.port, "protocol": port.protocol}
        return {**check, "_svc": svc, "_port": port}, eligible

    def _host_loadbalancer(self):
        return self._host_frontend("lb")

    def _host_external_ip(self):
        return self._host_frontend("ext")

    def _pod_nodeport(self):
        svcs = self._node_port_services()
        if not svcs:
            return None
        svc = self.r.choice(svcs)
        port = self._any_port(svc)
        client = self.r.choice(self._clients())
        own = self.pods[client].node
        # eTP Local through another node: kube-proxy's short-circuit differs (docs/differences.md)
        node = own if svc.etp == "Local" else self.r.choice(self.nodes)
        check = {"from": f"pod/{client}", "to": f"node/{node}", "port": port.node_port, "protocol": port.protocol}
        return {**check, "_svc": svc, "_port": port}, self._eligible(svc, port)

    def _pod_frontend(self, which: str):
        found = self._frontend_ip(which)
        if found is None:
            return None
        svc, ip, port = found
        client = self.r.choice(self._clients())
        if svc.etp == "Local" and self.routed.get(ip) != self.pods[client].node:
            return None              # handled by another node: see _pod_nodeport
        if which == "lb" and not _in_ranges(self.pod_ip[client], svc.ranges):
            eligible = []
        else:
            eligible = self._eligible(svc, port)
        check = {"from": f"pod/{client}", "to": ip, "port": port.port, "protocol": port.protocol}
        return {**check, "_svc": svc, "_port": port}, eligible

    def _pod_loadbalancer(self):
        return self._pod_frontend("lb")

    def _pod_external_ip(self):
        return self._pod_frontend("ext")

    def _pod_pod(self):
        client = self.r.choice(self._clients())
        server = self.r.choice([p for p in self.pods if p != client])
        check = {"from": f"pod/{client}", "to": f"pod/{server}", "port": 8080,
                 "protocol": self.r.choice(("TCP", "UDP"))}
        if check["protocol"] == "TCP" and client in self.source_ports:
            check["sourcePort"] = self.source_ports[client]   # the port a service flow used
        return check, [server]

    def _pod_host(self):
        if not self.host:
            return None
        client = self.r.choice(self._clients())
        check = {"from": f"pod/{client}", "to": "host/ext", "port": 8080, "protocol": self.r.choice(("TCP", "UDP"))}
        return check, [] if self.model == "air-gapped" else ["ext"]

    def _host_pod(self):
        if not self.host:
            return None
        server = self.r.choice(list(self.pods))
        check = {"from": "host/ext", "to": f"pod/{server}", "port": 8080, "protocol": "TCP"}
        return check, [server] if self.model == "flat" else []

    # -- updates --
    def _update(self) -> None:
        r = self.r
        update: dict = {"name": "", "pods": [], "services": [], "deleteServices": []}
        what, freed = [], []
        for _ in range(r.randint(1, 3)):
            change = r.choice(("ready", "terminating", "labels", "service", "add", "delete"))
            if change in ("ready", "terminating", "labels"):
                name = r.choice([p for p in self.pods if p.startswith("w")])
                pod = self.pods[name]
                if change == "ready":
                    pod.ready = not pod.ready
                    what.append(f"{name} {'ready' if pod.ready else 'unready'}")
                elif change == "terminating":
                    pod.terminating = not pod.terminating
                    what.append(f"{name} {'terminating' if pod.terminating else 'back'}")
                else:
                    pod.labels = {"app": r.choice([x for x in "abx" if x != pod.labels.get("app")])}
                    what.append(f"{name} app={pod.labels['app']}")
                update["pods"] = [u for u in update["pods"] if u["name"] != name]
                update["pods"].append({"name": name, "ready": pod.ready, "terminating": pod.terminating,
                                       "labels": dict(pod.labels)})
            elif change == "service" and self.services:
                svc = self.services[r.choice(sorted(self.services))]
                self._change(svc)
                update["services"] = [s for s in update["services"] if s["name"] != svc.name] + [svc.spec()]
                what.append(f"{svc.name} changed")
            elif change == "add" and len(self.services) < 4:
                svc = self._add_service()
                update["services"].append(svc.spec())
                what.append(f"{svc.name} added")
            elif change == "delete" and self.services and not update["services"]:
                name = r.choice(sorted(self.services))
                svc = self.services.pop(name)
                freed.append(svc.cluster_ip)       # free once this update is done
                update["deleteServices"].append(name)
                what.append(f"{name} deleted")
        self.free_ips.extend(freed)
        update = {k: v for k, v in update.items() if v}
        update["name"] = ", ".join(what) or "nothing changes"
        self.steps.append({"update": {"name": update.pop("name"), **update}})

    def _change(self, svc: Svc) -> None:
        r = self.r
        change = r.choice(("policies", "selector", "ports"))
        if change == "policies":
            self._policies(svc)
        elif change == "selector":
            svc.selector = {"app": "b" if svc.selector.get("app") == "a" else "a"}
        else:
            svc.ports = self._ports(svc.type)
