"""Changes to a running lab's services: what `dataplane apply` and `delete` do to the cluster state
a lab started from (its scenario's services), as the API server would.

Two kinds of file apply:
  - Kubernetes manifests (`Service`, `EndpointSlice`, or a `List` of them), as `kubectl apply`:
    a Service replaces the one of the same namespace/name (keeping its cluster IP unless the
    manifest names another) or is created; an EndpointSlice gives a selector-less service its
    endpoints;
  - update documents: the body of a scenario's `update:` step (`services:`, `deleteServices:`,
    `pods:`), with the same validation and errors.
A change is all or nothing: every file is checked on a copy of the cluster, and the copy replaces
the cluster only if all of them were valid.
"""
from __future__ import annotations

import copy

from ..errors import ScenarioError
from .manifests import ManifestSet, load as load_manifest, resolve
from .yamldoc import Doc, Problems, load_all


def apply_files(cluster, paths, ignored: list) -> tuple:
    """(the changed cluster, one line per change); `cluster` itself is left alone. Raises a
    ScenarioError (file, line, field) at the first invalid file."""
    new = copy.deepcopy(cluster)
    lines = []
    for path in paths:
        docs = load_all(path)
        if any(isinstance(d, dict) and "kind" in d for d in docs):
            lines += _apply_manifests(new, path, docs, ignored)
        else:
            lines += _apply_update(new, path, docs, ignored)
    return new, lines


def delete_service(cluster, key: str) -> tuple:
    """(the changed cluster, what was done); `key` is namespace/name (or a name in default)."""
    key = key if "/" in key else f"default/{key}"
    if key not in cluster.services:
        known = ", ".join(sorted(cluster.services)) or "none"
        raise ScenarioError("delete", None, f"no service {key} in the lab (services: {known})")
    new = copy.deepcopy(cluster)
    svc = new.services.pop(key)
    new.given.pop(key, None)
    new.defaults.used_ips.discard(svc.cluster_ip)
    new.defaults.used_node_ports.difference_update(p.node_port for p in svc.ports)
    return new, [f"service {key} deleted"]


def _apply_update(cluster, path: str, docs: list, ignored: list) -> list:
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise ScenarioError(path, None, "expected one YAML mapping: an update document (services:, "
                                        "deleteServices:, pods:) or Kubernetes manifests (kind: Service ...)")
    problems = Problems()
    doc = Doc(path, docs[0], problems=problems)
    before = set(cluster.services)
    changed_before = dict(cluster.services)
    with doc.recover():
        cluster.update(doc, ignored)
    problems.check()
    lines = [f"service {k} created" for k in sorted(set(cluster.services) - before)]
    lines += [f"service {k} deleted" for k in sorted(before - set(cluster.services))]
    lines += [f"service {k} configured" for k in sorted(before & set(cluster.services))
              if cluster.services[k] != changed_before[k]]
    pods = [p.get("name") for p in docs[0].get("pods") or [] if isinstance(p, dict)]
    lines += [f"pod {p} changed" for p in pods]
    return lines or [f"{path}: nothing changed"]


def _apply_manifests(cluster, path: str, docs: list, ignored: list) -> list:
    # kubectl apply replaces a Service of the same name: its addresses are free for it again
    replaced = {}
    for key in _service_keys(docs):
        old = cluster.services.get(key)
        if old is not None:
            replaced[key] = old
            cluster.defaults.used_ips.discard(old.cluster_ip)
            cluster.defaults.used_node_ports.difference_update(p.node_port for p in old.ports)
    pod_ips = {p.ip: (p.name, p.node) for p in cluster.pods.values()}
    ms = load_manifest(path, cluster.defaults, pod_ips, ManifestSet())
    ignored.extend(ms.ignored)
    lines = []
    for svc in ms.services:
        old = replaced.get(svc.key)
        if old is not None and svc.cluster_ip != old.cluster_ip and _auto_ip(docs, svc.key):
            # no clusterIP in the manifest: the API server keeps the one it gave
            cluster.defaults.used_ips.discard(svc.cluster_ip)
            cluster.defaults.used_ips.add(old.cluster_ip)
            from dataclasses import replace
            svc = replace(svc, cluster_ip=old.cluster_ip)
        cluster.services[svc.key] = svc
        if svc.selector:
            cluster.given.pop(svc.key, None)
        else:
            cluster.given[svc.key] = resolve(ms, svc)
        lines.append(f"service {svc.key} {'configured' if old is not None else 'created'}")
    for s in ms.slices:
        svc = cluster.services.get(s.service)
        if svc is None:
            raise ScenarioError(path, s.where.split(":")[-1] if ":" in s.where else None,
                                f"EndpointSlice {s.name}: no service {s.service} in the lab (apply the Service first "
                                f"or in the same file)")
        if svc.selector:
            ignored.append(f"{s.where}: EndpointSlice {s.name}: service {svc.key} has a selector, so its "
                           f"endpoints come from the lab's pods")
            continue
        if s.service not in {x.key for x in ms.services}:
            cluster.given[s.service] = resolve(ms, svc)
        lines.append(f"endpointslice {s.name} of {s.service} applied")
    return lines or [f"{path}: nothing changed"]


def _service_keys(docs: list):
    for d in docs:
        items = d.get("items") or [] if isinstance(d, dict) and d.get("kind") == "List" else [d]
        for obj in items:
            if isinstance(obj, dict) and obj.get("kind") == "Service":
                meta = obj.get("metadata") or {}
                if isinstance(meta, dict) and meta.get("name"):
                    yield f"{meta.get('namespace') or 'default'}/{meta['name']}"


def _auto_ip(docs: list, key: str) -> bool:
    """Did the manifest leave the Service's clusterIP out (the API server keeps the old one)?"""
    for d in docs:
        items = d.get("items") or [] if isinstance(d, dict) and d.get("kind") == "List" else [d]
        for obj in items:
            if not isinstance(obj, dict) or obj.get("kind") != "Service":
                continue
            meta = obj.get("metadata") or {}
            if f"{meta.get('namespace') or 'default'}/{meta.get('name')}" == key:
                ip = (obj.get("spec") or {}).get("clusterIP")
                return ip in (None, "")
    return False
