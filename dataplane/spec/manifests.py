"""Kubernetes manifests -> the service table.

Accepts what `kubectl get -o yaml` prints: `Service` (v1) and `EndpointSlice`
(discovery.k8s.io/v1) objects, as separate YAML documents or inside a `List`. Metadata and status
fields the dataplane does not use (uid, resourceVersion, managedFields, ...) are accepted as they
come. Mapping onto the lab:
  - a Service with a selector gets its endpoints from the lab's pods, as the EndpointSlice
    controller would; EndpointSlices given for it are reported as ignored;
  - a Service without a selector takes the EndpointSlices labelled with its name, whose addresses
    must be lab pods;
  - headless and ExternalName services are valid Kubernetes but not the dataplane's: reported as
    ignored, never silently dropped. Any other kind is an error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address

from .table import Endpoint, EndpointPort, PROTOCOLS, Service
from .services import Ignored, ServiceDefaults, check_name, parse_service
from .yamldoc import Doc, load_all

SUPPORTED = {("v1", "Service"), ("discovery.k8s.io/v1", "EndpointSlice")}
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass
class Slice:
    service: str           # namespace/name
    name: str
    endpoints: list
    where: str


@dataclass
class ManifestSet:
    services: list = field(default_factory=list)      # Service, endpoints not yet resolved
    slices: list = field(default_factory=list)        # Slice
    ignored: list = field(default_factory=list)       # "file: Kind ns/name: why"


def load(path, defaults: ServiceDefaults, pod_ips: dict, out: ManifestSet | None = None) -> ManifestSet:
    """Read one manifest file. `pod_ips` maps lab pod IPs to (pod, node) for EndpointSlices."""
    out = out or ManifestSet()
    for doc in load_all(path):
        root = Doc(path, doc)
        if root.value.get("kind") == "List":
            root.take("apiVersion", str)
            root.take_str("kind")
            root.take("metadata", dict, None)
            for item in root.items("items"):
                if not isinstance(item, Doc):
                    item.fail("expected a Kubernetes object")
                _object(item, defaults, pod_ips, out)
            root.done()
        else:
            _object(root, defaults, pod_ips, out)
    return out


def _object(obj: Doc, defaults, pod_ips, out: ManifestSet) -> None:
    api = obj.take_str("apiVersion", expect="an apiVersion such as v1")
    kind = obj.take_str("kind", expect="a kind such as Service")
    if (api, kind) not in SUPPORTED:
        supported = ", ".join(f"{k} ({a})" for a, k in sorted(SUPPORTED))
        obj.fail("kind", f"unsupported manifest kind {kind} ({api}); expected one of: {supported}")
    meta = obj.sub("metadata")
    name = meta.take_str("name")
    check_name(meta, "name", name, f"{kind} name")
    namespace = meta.take_str("namespace", "default")
    labels = meta.take("labels", dict, {}) or {}
    meta.taken.update(meta.value)   # the rest of metadata (uid, annotations, ...) is kubectl's
    obj.take("status", dict, None)
    if kind == "Service":
        spec = obj.sub("spec")
        status = obj.value.get("status") or {}
        lb_ips = []
        for ing in (status.get("loadBalancer") or {}).get("ingress") or []:
            if isinstance(ing, dict) and ing.get("ip"):
                try:
                    lb_ips.append(IPv4Address(ing["ip"]))
                except ValueError:
                    obj.fail("status", f"loadBalancer ingress ip {ing['ip']!r} is not an IPv4 address")
        try:
            svc = parse_service(spec, name, namespace, defaults, tuple(lb_ips))
        except Ignored as why:
            spec.taken.update(spec.value)
            out.ignored.append(f"{obj.where()}: Service {namespace}/{name}: {why}")
        else:
            out.services.append(svc)
        spec.done()
    else:
        svc_name = labels.get(SERVICE_NAME_LABEL)
        if not svc_name:
            meta.fail("labels", f"an EndpointSlice needs the label {SERVICE_NAME_LABEL} naming its service")
        af = obj.take_str("addressType", "IPv4", choices=("IPv4", "IPv6", "FQDN"))
        if af != "IPv4":
            obj.taken.update(obj.value)
            out.ignored.append(f"{obj.where()}: EndpointSlice {namespace}/{name}: addressType {af} "
                               f"(the lab is IPv4 only)")
            return
        ports = []
        for p in obj.items("ports"):
            if not isinstance(p, Doc):
                p.fail("expected a mapping with name, port, protocol")
            ports.append(EndpointPort(p.take_str("name", ""), p.take_int("port", lo=1, hi=65535),
                                      p.take_str("protocol", "TCP", choices=PROTOCOLS)))
            p.take("appProtocol", str, None)
            p.done()
        endpoints = []
        for e in obj.items("endpoints"):
            if not isinstance(e, Doc):
                e.fail("expected a mapping with addresses and conditions")
            addrs = e.take_list("addresses")
            if len(addrs) != 1:
                e.fail("addresses", f"expected exactly one address, got {len(addrs)}")
            try:
                ip = IPv4Address(addrs[0])
            except ValueError:
                e.fail("addresses", f"expected an IPv4 address, got {addrs[0]!r}")
            if ip not in pod_ips:
                e.fail("addresses", f"{ip} is not the address of any pod in the lab topology "
                                    f"(EndpointSlice addresses must be lab pods)")
            pod, node = pod_ips[ip]
            cond = e.sub("conditions", {})
            ready = cond.take_bool("ready", True)
            serving = cond.take_bool("serving", ready)
            terminating = cond.take_bool("terminating", False)
            cond.done()
            for key in ("nodeName", "targetRef", "zone", "hints", "hostname", "deprecatedTopology"):
                e.take(key, None, None)
            e.done()
            endpoints.append(Endpoint(ip, tuple(ports), node, pod, ready, serving, terminating))
        out.slices.append(Slice(f"{namespace}/{svc_name}", name, endpoints, obj.where()))
    obj.done()


def resolve(ms: ManifestSet, svc: Service) -> tuple:
    """The endpoints of a selector-less service: every slice labelled with its name."""
    found = []
    for s in ms.slices:
        if s.service == svc.key:
            found.extend(s.endpoints)
    return tuple(found)
