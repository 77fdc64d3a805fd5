"""Scenario files -> Scenario: topology, services, checks. Validated whole before anything is built.

Every error names the file (and line), the field and what was expected; see docs/scenario-format.md
for the format with a commented example of every field.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace

from .checks import CheckSpec, parse_check
from .load import EndLoad, LoadSpec, Loads, parse_end, parse_load
from ..errors import ScenarioError
from .topology import TopologySpec
from .topology_section import parse_topology
from .manifests import ManifestSet, load as load_manifest, resolve
from .table import ServiceTable
from .services import DNS_LABEL, Ignored, ServiceDefaults, endpoints_from_pods, parse_service, with_endpoints
from .yamldoc import Doc, Problems, Scalar, load_all

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
    steps: list                            # CheckSpec | Sleep | Update | LoadSpec | EndLoad, in order
    description: str = ""
    ignored: list[str] = field(default_factory=list)
    frontend_routes: tuple = ()            # (LB or external IP, node) the underlay routes
    cluster: object = field(default=None, repr=False, compare=False)  # _Cluster at the start (agent's base)

    @property
    def checks(self) -> list[CheckSpec]:
        return [s for s in self.steps if isinstance(s, CheckSpec)]

    @property
    def judged(self) -> list:
        """The steps that give a result: checks and ended loads, in order."""
        return [s for s in self.steps if isinstance(s, (CheckSpec, EndLoad))]


class _Cluster:
    """The service table's view of the cluster as the scenario's steps change it."""

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
    """A scenario file, validated whole: every error of the file is reported at once (each item,
    section and field checked; a section that needs an invalid one is skipped)."""
    path = str(path)
    docs = load_all(path)
    if len(docs) != 1:
        raise ScenarioError(path, None, f"expected one YAML document, found {len(docs)}")
    problems = Problems()
    root = Doc(path, docs[0], problems=problems)
    name, description = _header(root)
    topology = node_port_range = scenario = None
    with root.recover():
        topology, node_port_range = parse_topology(root.sub("topology"))
    root.taken.update(("services", "manifests", "checks"))
    if topology is not None:
        scenario = _cluster_and_steps(root, path, topology, node_port_range)
    with root.recover():
        root.done()
    problems.check()
    return replace(scenario, name=name, description=description)


def _header(root: Doc) -> tuple[str, str]:
    name = description = ""
    with root.recover():
        name = root.take_str("name", expect="the scenario's name, a DNS label")
        if not DNS_LABEL.match(name) or len(name) > 40:
            root.fail("name", f"{name!r} is not a DNS label of at most 40 characters")
    with root.recover():
        description = root.take_str("description", "")
    return name, description


def _cluster_and_steps(root: Doc, path: str, topology: TopologySpec, node_port_range) -> Scenario:
    """Services (the scenario's and its manifests'), then the steps, which need them. Errors go to
    the root's Problems; an invalid service is left out, and the steps are not read then (their
    references to it would only repeat the error)."""
    problems = root.problems
    before = len(problems.errors) if problems is not None else 0
    defaults = ServiceDefaults(topology.service_cidr, node_port_range)
    cluster = _Cluster(topology, defaults)
    ignored = []
    for item in root.items("services"):
        with item.recover():
            cluster.parse_native(item, ignored)
    with root.recover():
        _add_manifests(root, path, topology, defaults, cluster, ignored)
    initial = cluster.table()
    start = copy.deepcopy(cluster)          # the steps below change `cluster`
    routes, steps = (), []
    with root.recover():
        routes = frontend_routes(initial, topology)
    if problems is None or len(problems.errors) == before:
        steps = _steps(root, topology, cluster, initial, ignored)
    return Scenario(name="", file=path, topology=topology, services=initial, steps=steps,
                    ignored=ignored, frontend_routes=routes, cluster=start)


def _add_manifests(root: Doc, path: str, topology: TopologySpec, defaults, cluster: "_Cluster", ignored: list):
    manifests = ManifestSet()
    pod_ips = {p.ip: (p.name, p.node) for p in topology.pods}
    for item in root.items("manifests"):
        with item.recover():
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


def _steps(root: Doc, topology: TopologySpec, cluster: "_Cluster", table: ServiceTable, ignored: list) -> list:
    """Checks, sleeps, updates and loads in order; each check is resolved against the table of its
    time. After an invalid update the later steps are not read (their table is unknown)."""
    steps, names, loads = [], set(), Loads()
    cut = False
    for item in root.items("checks"):
        if isinstance(item, Doc) and item.has("update") and _update_failed(item, cluster, ignored, steps):
            cut = True
            break
        with item.recover():
            if not isinstance(item, Doc):
                item.fail("expected a check (a mapping with from, to, port), {sleep: SECONDS}, {update: ...}, "
                          "{load: ...} or {endLoad: ...}")
            if item.has("sleep"):
                seconds = item.take("sleep", (int, float), expect="seconds, such as 2.5")
                if not 0 < seconds <= 3600:
                    item.fail("sleep", f"expected seconds from 0 to 3600, got {seconds}")
                item.done()
                steps.append(Sleep(float(seconds), item.where()))
            elif item.has("update"):
                table = steps[-1].table
            elif item.has("load"):
                loads.unnamed_errors += 1       # until the step's own parse has read its name
                sub = item.sub("load")
                loads.unnamed_errors -= 1
                steps.append(parse_load(sub, topology, table, loads))
                item.done()
            elif item.has("endLoad"):
                loads.end_errors += 1
                sub = item.sub("endLoad")
                loads.end_errors -= 1
                end = parse_end(sub, loads, names)
                if end is not None:
                    steps.append(end)
                item.done()
            else:
                check = parse_check(item, topology, table, names)
                running = sorted(n for n, spec in loads.running.items() if spec is not None)
                for key, value in (("capture", check.capture), ("sourcePort", check.source_port)):
                    if value and running:
                        item.fail(key, f"a check with {key} cannot run while a background load runs "
                                       f"({', '.join(running)}): its flows would mix with the load's; "
                                       f"end the load first")
                steps.append(check)
    for load in ([] if cut else loads.never_ended()):
        with root.recover():
            raise ScenarioError(load.where, load.field, f"load {load.name!r} never ends: add "
                                f"{{endLoad: {{name: {load.name}}}}} after the steps it should span")
    return steps


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


def _update_failed(item: Doc, cluster: "_Cluster", ignored: list, steps: list) -> bool:
    """Apply an update step (appended to steps); True if it was invalid (its error recorded)."""
    problems = item.problems
    before = len(problems.errors) if problems is not None else 0
    with item.recover():
        what = cluster.update(item.sub("update"), ignored)
        item.done()
        steps.append(Update(what, cluster.table(), item.where()))
    return problems is not None and len(problems.errors) != before
