"""The eBPF backend's part of `dataplane rules LAB`: a node's pinned maps, read with bpftool
(their BTF names every field, so nothing here restates a struct layout) and printed in the same
terms as kube-proxy's rules: frontend (address:port/protocol) -> endpoints, with the service
flags."""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess

from ...contract.consts import DEFINES
from ...errors import DataplaneError, LabError
from .program import PIN_ROOT

PROTOCOLS = {6: "TCP", 17: "UDP"}


def _ip(be32: int) -> str:
    return str(ipaddress.IPv4Address(struct.pack("<I", be32)))


def _port(be16: int) -> int:
    return socket.ntohs(be16)


def pinned_entries(path: str) -> list[dict]:
    """Every entry of a pinned map, fields named by its BTF ({"key": ..., "value": ...}; a per-CPU
    map's "values" one per CPU): one bpftool call, which reads each entry whole."""
    proc = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataplaneError(f"bpftool could not read {path}: {proc.stderr.strip()}")
    entries = json.loads(proc.stdout or "[]")
    if entries and "formatted" not in entries[0]:
        raise DataplaneError(f"{path} has no BTF: bpftool cannot name its fields")
    return [e["formatted"] for e in entries]


def ebpf_maps(lab: str, node: str) -> str:
    flags = {v: k[len("SVC_F_"):].lower() for k, v in DEFINES.items() if k.startswith("SVC_F_")}
    pins = os.path.join(PIN_ROOT, f"dp-{lab}", node)
    if not os.path.isdir(pins):
        raise LabError(f"no pinned eBPF maps for {node} under {pins}")
    backends = {e["key"]: e["value"] for e in pinned_entries(os.path.join(pins, "backends"))}
    services = [(e["key"], e["value"]) for e in pinned_entries(os.path.join(pins, "services"))]
    slots = {(k["vip"], k["port"], k["proto"], k["scope"], k["slot"]): v for k, v in services}
    lines = [f"# eBPF maps of {node}, pinned under {pins}",
             "# frontend -> endpoints (slot order; the flow hash picks a slot)"]
    fronts = sorted(((k, v) for k, v in services if k["slot"] == 0 and k["port"]),
                    key=lambda kv: (ipaddress.IPv4Address(_ip(kv[0]["vip"])), _port(kv[0]["port"]), kv[0]["scope"]))
    for k, v in fronts:
        eps = []
        for slot in range(1, v["count"] + 1):
            s = slots.get((k["vip"], k["port"], k["proto"], k["scope"], slot))
            b = backends.get(s["backend_id"]) if s else None
            eps.append(f"{_ip(b['addr'])}:{_port(b['port'])}" if b else f"(slot {slot} missing)")
        names = [name for bit, name in sorted(flags.items()) if v["flags"] & bit and name != "pod_scope"]
        who = " from pods" if k["scope"] else ""
        if v["flags"] & DEFINES["SVC_F_AFFINITY"]:
            names[names.index("affinity")] = f"affinity {v['affinity_timeout']}s"
        what = ", ".join(eps) if eps else ("drop (no local endpoints)" if v["flags"] & DEFINES["SVC_F_LOCAL_ONLY"]
                                           else "reject (no endpoints)")
        lines.append(f"{_ip(k['vip'])}:{_port(k['port'])}/{PROTOCOLS.get(k['proto'], k['proto'])}{who} "
                     f"[id {v['svc_id']}{'; ' + ', '.join(names) if names else ''}] -> {what}")
    vips = sorted({_ip(k["vip"]) for k, _ in services if not k["port"]}, key=ipaddress.IPv4Address)
    if vips:
        lines.append("# cluster IPs: any other port or protocol is rejected")
        lines += [f"{vip}:* -> reject" for vip in vips]
    for name in ("conntrack", "affinity"):
        path = os.path.join(pins, name)
        if os.path.exists(path):
            lines.append(f"# {name}: {len(pinned_entries(path))} entries (bpftool map dump pinned {path})")
    return "\n".join(lines) + "\n"

