"""A cluster's services as a lab scenario: `dataplane import DUMP.yaml`.

DUMP is what `kubectl get svc,endpointslices -A -o yaml` prints (a List, or documents). The
scenario rebuilds, inside the lab, what those objects say:
  nodes      one per `nodeName` of the EndpointSlices' endpoints
  pods       one per endpoint address, named after its `targetRef` (a Pod), on its node, with the
             address itself, its ready/serving/terminating conditions and the ports the slices
             give (a named targetPort becomes a pod port of that name)
  podCIDRs   per node, the smallest network holding the /24s where its pods' addresses lie; the
             clusterCIDR holds them all; the serviceCIDR holds every cluster IP
  services   as they are: type, cluster IP, ports and node ports, traffic policies, affinity,
             external and load-balancer IPs, source ranges; each keeps its selector when the
             pods' labels can reproduce its endpoints exactly, else it gets a selector of its own
             (`import.dataplane/NAMESPACE.NAME`) that does
What the lab cannot hold is listed (and written at the top of the scenario), never dropped
silently: names too long for a Linux interface (shortened; the mapping is listed), endpoints
without a node or in another node's address range, IPv6 slices, SCTP ports, headless and
ExternalName services, other kinds, extra load-balancer ingress IPs. The scenario is checked by
loading it before it is returned.
"""
from __future__ import annotations

import collections
import hashlib
import os
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, collapse_addresses, ip_network

import yaml

from ..errors import ScenarioError
from .services import DNS_LABEL
from .topology import MAX_NAME, RESERVED_NAMES

from .yamldoc import load_all

SERVICE_FIELDS = ("type", "clusterIP", "selector", "ports", "sessionAffinity", "sessionAffinityConfig",
                  "internalTrafficPolicy", "externalTrafficPolicy", "externalIPs", "loadBalancerIP",
                  "loadBalancerSourceRanges", "healthCheckNodePort", "publishNotReadyAddresses")
PORT_FIELDS = ("name", "port", "targetPort", "nodePort", "protocol")
SYNTHETIC_LABEL = "import.dataplane/{ns}.{name}"


@dataclass
class Endpoint:
    address: IPv4Address
    node: str | None
    pod: str | None             # targetRef name when it is a Pod
    namespace: str
    ready: bool
    serving: bool
    terminating: bool
    ports: list                 # (slice port name, port, protocol)


@dataclass
class Imported:
    scenario: dict
    notes: list = field(default_factory=list)        # what the lab could not hold, and why
    renamed: dict = field(default_factory=dict)      # "node x" / "pod ns/x" -> lab name
    taken: set = field(default_factory=lambda: {"ext", *RESERVED_NAMES})   # lab names given

    def text(self, source: str) -> str:
        head = [f"# Imported by `dataplane import` from {source}."]
        if self.renamed:
            head.append("# Renamed (Linux interface names hold at most 15 characters):")
            head += [f"#   {k} -> {v}" for k, v in sorted(self.renamed.items())]
        if self.notes:
            head.append("# Not represented:")
            head += [f"#   {n}" for n in self.notes]
        return "\n".join(head) + "\n" + yaml.safe_dump(_plain(self.scenario), sort_keys=False, width=110)


def _plain(value):
    """Plain dicts and lists (the YAML loader's line-keeping mappings do not dump)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def read_dump(path) -> tuple[list, list, list]:
    """(services, slices, notes): the objects of a kubectl dump, Lists flattened."""
    services, slices, notes = [], [], []
    for doc in load_all(path):
        items = doc.get("items", []) if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
        for obj in items:
            if not isinstance(obj, dict):
                raise ScenarioError(path, None, f"expected Kubernetes objects, found {type(obj).__name__}")
            kind, api = obj.get("kind"), obj.get("apiVersion")
            meta = obj.get("metadata") or {}
            what = f"{kind} {meta.get('namespace', 'default')}/{meta.get('name')}"
            if (api, kind) == ("v1", "Service"):
                services.append(obj)
            elif (api, kind) == ("discovery.k8s.io/v1", "EndpointSlice"):
                slices.append(obj)
            else:
                notes.append(f"{what} ({api}): only Services and EndpointSlices are imported")
    return services, slices, notes


def import_dump(path, name: str | None = None, model: str = "island") -> Imported:
    services, slices, notes = read_dump(path)
    out = Imported({}, notes)
    eps_by_svc = _endpoints(slices, out)
    pods = _pods(eps_by_svc, out)
    nodes = _nodes(pods, out)
    svc_docs = _services(services, eps_by_svc, pods, out)
    _selectors(svc_docs, eps_by_svc, pods, out)
    scenario_name = _label(name or os.path.splitext(os.path.basename(str(path)))[0], 40) or "imported"
    topology = {"model": model, **_networks(nodes, svc_docs, out),
                "nodes": [{"name": n["lab"], "podCIDR": str(n["cidr"])} for n in nodes.values()],
                "pods": [_pod_doc(p, nodes[p["node"]]["lab"]) for p in pods.values()],
                "outside": [{"name": "ext"}]}
    out.scenario = {"name": scenario_name,
                    "description": f"Services of {os.path.basename(str(path))}, imported",
                    "topology": topology, "services": [d for d, _ in svc_docs.values()]}
    _verify(out, eps_by_svc, pods)
    return out


def _verify(out: Imported, eps_by_svc: dict, pods: dict) -> None:
    """Load the scenario as `run` would (an error here is the importer's, raised as such), and
    compare each service's endpoints in the lab with the dump's: address and conditions."""
    import tempfile
    from .scenario import load
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "imported.yaml")
        with open(path, "w") as f:
            f.write(out.text("(check)"))
        scenario = load(path)
    for svc in scenario.services:
        got = {(e.address, e.ready, e.serving, e.terminating) for e in svc.endpoints}
        want = {(a, e.ready and not e.terminating, e.serving, e.terminating)
                for a, e in eps_by_svc.get(svc.key, {}).items() if a in pods}
        if got != want:
            out.notes.append(f"Service {svc.key}: endpoints in the lab {sorted(map(str, got))} differ from the "
                             f"dump's {sorted(map(str, want))}")


def _endpoints(slices: list, out: Imported) -> dict:
    """service key -> {address: Endpoint}, from the slices labelled with its name."""
    by_svc = collections.defaultdict(dict)
    for s in slices:
        meta = s.get("metadata") or {}
        ns = meta.get("namespace", "default")
        svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        what = f"EndpointSlice {ns}/{meta.get('name')}"
        if svc is None:
            out.notes.append(f"{what}: no kubernetes.io/service-name label")
            continue
        if s.get("addressType") != "IPv4":
            out.notes.append(f"{what}: addressType {s.get('addressType')} (the lab is IPv4)")
            continue
        ports = []
        for p in s.get("ports") or []:
            if p.get("protocol", "TCP") not in ("TCP", "UDP"):
                out.notes.append(f"{what}: port {p.get('name') or p.get('port')}/{p.get('protocol')} (TCP and UDP only)")
                continue
            ports.append((p.get("name") or "", p.get("port"), p.get("protocol", "TCP")))
        for e in s.get("endpoints") or []:
            addrs = e.get("addresses") or []
            if not addrs:
                continue
            ref = e.get("targetRef") or {}
            cond = e.get("conditions") or {}
            ready = cond.get("ready", True) is not False
            ep = Endpoint(IPv4Address(addrs[0]), e.get("nodeName"),
                          ref.get("name") if ref.get("kind") == "Pod" else None, ref.get("namespace", ns),
                          ready, cond.get("serving", ready) is not False, cond.get("terminating") is True, ports)
            known = by_svc[f"{ns}/{svc}"].get(ep.address)
            if known is not None:
                known.ports = sorted(set(known.ports) | set(ports))
            else:
                by_svc[f"{ns}/{svc}"][ep.address] = ep
    return by_svc


def _pods(eps_by_svc: dict, out: Imported) -> dict:
    """address -> pod: name (lab), node, namespace, ready, terminating, ports {(port, proto): name}."""
    pods, names = {}, out.taken
    for key in sorted(eps_by_svc):
        for addr, ep in sorted(eps_by_svc[key].items()):
            pod = pods.get(addr)
            if pod is None:
                if ep.node is None:
                    out.notes.append(f"endpoint {addr} of service {key}: no nodeName, so no node to put it on")
                    continue
                original = ep.pod or f"ep-{str(addr).replace('.', '-')}"
                lab = _unique(_short(original), names)
                if lab != original:
                    out.renamed[f"pod {ep.namespace}/{original}"] = lab
                pod = pods[addr] = {"lab": lab, "original": original, "node": ep.node, "ip": addr,
                                    "namespace": ep.namespace, "ready": ep.serving,
                                    "terminating": ep.terminating, "ports": {}, "labels": {}}
            elif pod["node"] != ep.node:
                out.notes.append(f"endpoint {addr}: on node {pod['node']} for one service and {ep.node} for "
                                 f"{key}; kept on {pod['node']}")
            for _, port, proto in ep.ports:
                pod["ports"].setdefault((port, proto), "")
    return pods


def _nodes(pods: dict, out: Imported) -> dict:
    """node (original name) -> lab name and podCIDR. Each /24 of pod addresses belongs to the node
    with most pods in it; a pod in another node's /24 cannot be routed to its own node."""
    owners = collections.defaultdict(collections.Counter)
    for addr, p in pods.items():
        owners[ip_network(f"{addr}/24", strict=False)][p["node"]] += 1
    blocks = collections.defaultdict(list)
    for net, count in owners.items():
        blocks[count.most_common(1)[0][0]].append(net)
    nodes, names = {}, out.taken
    for original in sorted(blocks):
        nets = list(collapse_addresses(blocks[original]))
        if len(nets) > 1:
            kept = max(nets, key=lambda n: sum(1 for a, p in pods.items() if p["node"] == original and a in n))
            out.notes.append(f"node {original}: pods in {', '.join(map(str, nets))}; one podCIDR per node, "
                             f"kept {kept}")
            nets = [kept]
        lab = _unique(_short(original), names)
        if lab != original:
            out.renamed[f"node {original}"] = lab
        nodes[original] = {"lab": lab, "cidr": nets[0]}
    for addr in list(pods):
        p = pods[addr]
        node = nodes.get(p["node"])
        if node is None or addr not in node["cidr"] or addr in (node["cidr"].network_address,
                                                                node["cidr"].broadcast_address):
            out.notes.append(f"pod {p['namespace']}/{p['original']} ({addr}) on node {p['node']}: outside the "
                             f"node's pod range, left out")
            del pods[addr]
    return nodes


def _services(services: list, eps_by_svc: dict, pods: dict, out: Imported) -> dict:
    """key -> (native service document, endpoint addresses)."""
    docs = {}
    for obj in services:
        meta = obj.get("metadata") or {}
        ns, name = meta.get("namespace", "default"), meta.get("name")
        key = f"{ns}/{name}"
        spec = obj.get("spec") or {}
        if spec.get("type") == "ExternalName":
            out.notes.append(f"Service {key}: ExternalName (DNS only)")
            continue
        if spec.get("clusterIP") in (None, "None"):
            out.notes.append(f"Service {key}: headless (no cluster IP to serve)")
            continue
        doc = {"name": name, "namespace": ns, **{k: spec[k] for k in SERVICE_FIELDS if k in spec}}
        dropped = sorted(k for k in spec if k not in SERVICE_FIELDS and k not in (
            "clusterIPs", "ipFamilies", "ipFamilyPolicy", "allocateLoadBalancerNodePorts", "loadBalancerClass",
            "trafficDistribution", "externalName"))
        if dropped:
            out.notes.append(f"Service {key}: fields {', '.join(dropped)} not imported")
        ports = []
        for p in spec.get("ports") or []:
            if p.get("protocol", "TCP") not in ("TCP", "UDP"):
                out.notes.append(f"Service {key}: port {p.get('name') or p.get('port')}/{p.get('protocol')} "
                                 f"(TCP and UDP only)")
                continue
            ports.append({k: p[k] for k in PORT_FIELDS if k in p})
        if not ports:
            out.notes.append(f"Service {key}: no TCP or UDP port left")
            continue
        doc["ports"] = ports
        ingress = [i.get("ip") for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
                   if isinstance(i, dict) and i.get("ip")]
        if ingress and "loadBalancerIP" not in doc:
            doc["loadBalancerIP"] = ingress[0]
        if len(ingress) > 1:
            out.notes.append(f"Service {key}: load-balancer ingress IPs {', '.join(ingress[1:])} beyond the first")
        addrs = {a for a in eps_by_svc.get(key, {}) if a in pods}
        for a in addrs:             # a named targetPort names a pod port; the slice gives its number
            ep = eps_by_svc[key][a]
            for p in ports:
                target = p.get("targetPort")
                if isinstance(target, str):
                    match = next((n for sname, n, proto in ep.ports
                                  if sname == p.get("name", "") and proto == p.get("protocol", "TCP")), None)
                    if match is not None:
                        pods[a]["ports"][(match, p.get("protocol", "TCP"))] = target
        docs[key] = (doc, addrs)
    for key in sorted(set(eps_by_svc) - set(docs)):
        if not any(n.startswith(f"Service {key}:") for n in out.notes):
            out.notes.append(f"EndpointSlices of {key}: no such Service in the dump")
    return docs


def _selectors(docs: dict, eps_by_svc: dict, pods: dict, out: Imported) -> None:
    """Give pods labels so that every service selects exactly its endpoints: its own selector where
    possible, else a label of its own (every service without a selector gets one too)."""
    from .services import endpoints_from_pods     # noqa: F401 (the rule mirrored below)
    own = {k for k, (d, _) in docs.items() if not d.get("selector")}
    for _ in range(len(docs) + 1):
        for p in pods.values():
            p["labels"] = {}
        conflicts = set()
        for key, (doc, addrs) in docs.items():
            labels = _synthetic(key) if key in own else {str(k): str(v) for k, v in doc["selector"].items()}
            for a in addrs:
                for k, v in labels.items():
                    if pods[a]["labels"].setdefault(k, v) != v:
                        conflicts.add(key)
        mismatched = set()
        for key, (doc, addrs) in docs.items():
            if key in own:
                continue
            want = {str(k): str(v) for k, v in doc["selector"].items()}
            ns = doc["namespace"]
            selected = {a for a, p in pods.items()
                        if p["namespace"] == ns and all(p["labels"].get(k) == v for k, v in want.items())}
            if selected != addrs:
                mismatched.add(key)
        changed = (conflicts | mismatched) - own
        if not changed:
            break
        own |= changed
    for key in sorted(own):
        doc, _ = docs[key]
        if doc.get("selector"):
            out.notes.append(f"Service {key}: its selector {doc['selector']} cannot reproduce its endpoints "
                             f"with the imported pods; selects {_synthetic(key)} instead")
        doc["selector"] = _synthetic(key)


def _networks(nodes: dict, docs: dict, out: Imported) -> dict:
    cidrs = [n["cidr"] for n in nodes.values()]
    nets = {}
    if cidrs:
        nets["clusterCIDR"] = str(_covering(cidrs, 16))
    ips = [IPv4Address(d["clusterIP"]) for d, _ in docs.values()]
    if ips:
        nets["serviceCIDR"] = str(_covering([ip_network(f"{ip}/32") for ip in ips], 16))
    node_ports = [p["nodePort"] for d, _ in docs.values() for p in d["ports"] if "nodePort" in p]
    node_ports += [d["healthCheckNodePort"] for d, _ in docs.values() if "healthCheckNodePort" in d]
    if node_ports and (min(node_ports) < 30000 or max(node_ports) > 32767):
        nets["nodePortRange"] = f"{min(min(node_ports), 30000)}-{max(max(node_ports), 32767)}"
    return nets


def _covering(nets: list, widest_prefix: int) -> IPv4Network:
    """The smallest network holding every one of `nets`, at least as wide as /widest_prefix."""
    prefix = min(widest_prefix, *(n.prefixlen for n in nets))
    while True:
        cover = ip_network(f"{nets[0].network_address}/{prefix}", strict=False)
        if all(n.subnet_of(cover) for n in nets):
            return cover
        prefix -= 1


def _pod_doc(p: dict, node: str) -> dict:
    doc = {"name": p["lab"], "node": node, "ip": str(p["ip"])}
    if p["namespace"] != "default":
        doc["namespace"] = p["namespace"]
    if p["labels"]:
        doc["labels"] = p["labels"]
    doc["ports"] = [({"name": n, "port": port, "protocol": proto} if n else f"{port}/{proto}")
                    for (port, proto), n in sorted(p["ports"].items())] or ["8080/TCP"]
    if not p["ready"]:
        doc["ready"] = False
    if p["terminating"]:
        doc["terminating"] = True
    return doc


def _synthetic(key: str) -> dict:
    ns, name = key.split("/", 1)
    label = SYNTHETIC_LABEL.format(ns=ns, name=name)
    if len(label.split("/", 1)[1]) > 63:
        label = SYNTHETIC_LABEL.format(ns="svc", name=hashlib.sha256(key.encode()).hexdigest()[:16])
    return {label: "true"}


def _label(text: str, limit: int) -> str:
    text = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return text[:limit].rstrip("-")


def _short(name: str) -> str:
    """A lab name (a DNS label of at most MAX_NAME characters) for a Kubernetes name: kept when it
    fits, else its start and its end (a pod's random suffix is at its end)."""
    clean = _label(name, 253)
    if DNS_LABEL.match(clean) and len(clean) <= MAX_NAME:
        return clean
    tail = clean.rsplit("-", 1)[-1][:5] if "-" in clean else clean[-5:]
    head = clean[: MAX_NAME - len(tail) - 1].rstrip("-")
    return f"{head}-{tail}" if head else clean[:MAX_NAME].strip("-") or "x"


def _unique(name: str, taken: set) -> str:
    out, i = name, 2
    while out in taken:
        suffix = f"-{i}"
        out = name[: MAX_NAME - len(suffix)].rstrip("-") + suffix
        i += 1
    taken.add(out)
    return out
