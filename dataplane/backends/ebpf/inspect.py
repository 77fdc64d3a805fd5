"""`dataplane maps LAB`: a node's pinned maps in service terms, read with bpftool (whose BTF names
every field, so nothing here restates a struct): services and their backends, conntrack entries as
the flows they hold with state and remaining lifetime, session affinity, masquerade mappings,
source ranges, the non-masquerade CIDRs, config and counters. Valid while traffic runs: each map
is read in one bpftool call, so an entry reads whole, though two maps are two moments.

The same maps read raw: `bpftool map dump pinned /sys/fs/bpf/dp-<lab>/<node>/<map>`."""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time

from ...contract.consts import DEFINES, METRICS
from ...errors import LabError
from .dump import pinned_entries
from .program import PIN_ROOT

PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP"}
CT_ENTRIES = {DEFINES["CT_SERVICE"]: "service", DEFINES["CT_REPLY"]: "reply", DEFINES["CT_SNAT_OUT"]: "snat-out",
              DEFINES["CT_SNAT_IN"]: "snat-in"}
CT_FLAGS = {v: k[len("CT_F_"):].lower() for k, v in DEFINES.items()
            if k.startswith("CT_F_") and k != "CT_F_CLOSED_BOTH"}
SVC_FLAGS = {v: k[len("SVC_F_"):].lower() for k, v in DEFINES.items() if k.startswith("SVC_F_")}
# what `dataplane maps` can show, in order; each a map, or a view of one
SECTIONS = ("services", "conntrack", "snat", "nosnat", "affinity", "affinity_match", "sock_revnat", "frags",
            "lb_sources", "nonmasq", "addresses", "config", "metrics")


def _ip(be32: int) -> str:
    return str(ipaddress.IPv4Address(struct.pack("=I", be32)))


def _port(be16: int) -> int:
    return socket.ntohs(be16)


def _endpoint(addr: int, port: int) -> str:
    return f"{_ip(addr)}:{_port(port)}"


def _flags(bits: int, names: dict) -> list[str]:
    return [n for bit, n in sorted(names.items()) if bits & bit]


class NodeMapsView:
    """One node's pinned maps, read on demand, named with `frontends` ((ip, port, proto) ->
    "ns/name:port (kind)", spec.table.frontend_names)."""

    def __init__(self, lab: str, node: str, frontends: dict):
        self.node = node
        self.pins = os.path.join(PIN_ROOT, f"dp-{lab}", node)
        if not os.path.isdir(self.pins):
            raise LabError(f"no pinned eBPF maps for {node} under {self.pins}")
        self.frontends = frontends
        self._cache: dict = {}          # map name -> its entries (and one derived view)

    def raw(self, name: str) -> list[dict]:
        if name not in self._cache:
            self._cache[name] = pinned_entries(os.path.join(self.pins, name))
        return self._cache[name]

    def config(self) -> dict:
        return self.raw("config")[0]["value"]

    def now(self) -> int:
        """The dataplane clock (CLOCK_MONOTONIC plus the config's offset), in ns."""
        return time.monotonic_ns() + self.config()["clock_offset"]

    def _name(self, addr: str, port: int, proto: str) -> str | None:
        return self.frontends.get((addr, port, proto))

    def services(self) -> list[dict]:
        backends = {e["key"]: e["value"] for e in self.raw("backends")}
        entries = [(e["key"], e["value"]) for e in self.raw("services")]
        slots = {(k["vip"], k["port"], k["proto"], k["scope"], k["slot"]): v for k, v in entries}
        out = []
        for k, v in sorted(((k, v) for k, v in entries if k["slot"] == 0 and k["port"]),
                           key=lambda kv: (ipaddress.IPv4Address(_ip(kv[0]["vip"])), _port(kv[0]["port"]),
                                           kv[0]["scope"])):
            proto = PROTOCOLS.get(k["proto"], str(k["proto"]))
            eps = []
            for slot in range(1, v["count"] + 1):
                s = slots.get((k["vip"], k["port"], k["proto"], k["scope"], slot))
                b = backends.get(s["backend_id"]) if s else None
                eps.append({"slot": slot, "backend_id": s["backend_id"] if s else None,
                            "endpoint": _endpoint(b["addr"], b["port"]) if b else None})
            flags = [f for f in _flags(v["flags"], SVC_FLAGS) if f != "pod_scope"]
            out.append({"frontend": f"{_ip(k['vip'])}:{_port(k['port'])}/{proto}", "svc_id": v["svc_id"],
                        "service": self._name(_ip(k["vip"]), _port(k["port"]), proto),
                        "scope": "pods" if k["scope"] else "everyone", "flags": flags,
                        "affinity_timeout": v["affinity_timeout"] if "affinity" in flags else None,
                        "backends": eps,
                        "empty": None if eps else ("drop (no local endpoints)" if "local_only" in flags
                                                   else "reject (no endpoints)")})
        return out

    def _services_by_id(self) -> dict:
        """svc_id -> its service view, built once per view (each section naming services asks)."""
        if "(services by id)" not in self._cache:
            self._cache["(services by id)"] = {s["svc_id"]: s for s in self.services()}
        return self._cache["(services by id)"]

    def conntrack(self) -> list[dict]:
        """Service flows' entries: `service` (the client's packets as sent, translated to the
        backend) and `reply` (the backend's, translated back to the frontend), one line each; a
        flow whose other half was evicted shows with the half it has."""
        now = self.now()
        by_id = self._services_by_id()
        out = []
        for e in self.raw("conntrack"):
            k, v = e["key"], e["value"]
            if k["dir"] not in (DEFINES["CT_SERVICE"], DEFINES["CT_REPLY"]):
                continue
            proto = PROTOCOLS.get(k["proto"], str(k["proto"]))
            svc = by_id.get(v["svc_id"], {})
            flow = {"entry": CT_ENTRIES[k["dir"]], "proto": proto,
                    "tuple": f"{_endpoint(k['saddr'], k['sport'])} -> {_endpoint(k['daddr'], k['dport'])}",
                    "nat": _endpoint(v["nat_addr"], v["nat_port"]), "flags": _flags(v["flags"], CT_FLAGS),
                    "state": _state(proto, v["flags"]), "remaining": max(0, (v["expires"] - now) // 10**9),
                    "expired": v["expires"] <= now, "svc_id": v["svc_id"], "backend_id": v["backend_id"],
                    "service": svc.get("service") or svc.get("frontend")}
            if k["dir"] == DEFINES["CT_SERVICE"] and v["snat_addr"]:
                # hairpin, externalTrafficPolicy Cluster, an off-cluster client: the backend sees the node
                flow["masqueraded_as"] = _endpoint(v["snat_addr"], v["snat_port"])
            out.append(flow)
        return sorted(out, key=lambda f: (f["entry"] != "service", f["tuple"]))

    def snat(self) -> list[dict]:
        """Masquerade mappings, both halves: `out` (SNAT_OUT: the pod -> remote packets as sent,
        leaving as node IP:port) and `in` (SNAT_IN: the remote's answers to node IP:port, back to
        the pod, or for a hairpin flow to the client from the frontend)."""
        now = self.now()
        out = []
        for e in self.raw("conntrack"):
            k, v = e["key"], e["value"]
            if k["dir"] not in (DEFINES["CT_SNAT_OUT"], DEFINES["CT_SNAT_IN"]):
                continue
            proto = PROTOCOLS.get(k["proto"], str(k["proto"]))
            half = "out" if k["dir"] == DEFINES["CT_SNAT_OUT"] else "in"
            becomes = _endpoint(v["nat_addr"], v["nat_port"])
            if half == "in" and v["flags"] & DEFINES["CT_F_HAIRPIN"]:
                # a hairpin flow's answer goes back to the client (snat_*), from the frontend (nat_*)
                becomes = f"{_endpoint(v['snat_addr'], v['snat_port'])} from {becomes}"
            out.append({"half": half, "proto": proto, "from": _endpoint(k["saddr"], k["sport"]),
                        "to": _endpoint(k["daddr"], k["dport"]), "becomes": becomes,
                        "flags": _flags(v["flags"], CT_FLAGS), "state": _state(proto, v["flags"]),
                        "remaining": max(0, (v["expires"] - now) // 10**9), "expired": v["expires"] <= now})
        return sorted(out, key=lambda m: (m["half"] != "out", m["from"], m["to"]))

    def nosnat(self) -> list[dict]:
        """Reply tuples of UDP flows a remote began to a pod: the pod's answers are never masqueraded."""
        now = self.now()
        return sorted(({"tuple": f"{_endpoint(e['key']['saddr'], e['key']['sport'])} -> "
                                 f"{_endpoint(e['key']['daddr'], e['key']['dport'])}",
                        "remaining": max(0, (e["value"]["expires"] - now) // 10**9)}
                       for e in self.raw("nosnat")), key=lambda r: r["tuple"])

    def affinity_match(self) -> list[dict]:
        """Which backends count for each service port with affinity (a remembered backend not here
        is not chosen again)."""
        by_id = self._services_by_id()
        backends = {e["key"]: e["value"] for e in self.raw("backends")}
        rows = {}
        for e in self.raw("affinity_match"):
            k = e["key"]
            b = backends.get(k["backend_id"])
            svc = by_id.get(k["svc_id"], {})
            row = rows.setdefault(k["svc_id"], {"svc_id": k["svc_id"], "service": svc.get("service") or svc.get("frontend"),
                                                "eligible": []})
            row["eligible"].append(_endpoint(b["addr"], b["port"]) if b else f"backend {k['backend_id']}")
        return [dict(r, eligible=sorted(r["eligible"])) for _, r in sorted(rows.items())]

    def sock_revnat(self) -> list[dict]:
        """Node processes' sockets sent to a backend by the socket hooks: the frontend they asked for."""
        return sorted(({"cookie": e["key"]["cookie"], "backend": _endpoint(e["key"]["addr"], e["key"]["port"]),
                        "frontend": f"{_endpoint(e['value']['addr'], e['value']['port'])}/"
                                    f"{PROTOCOLS.get(e['value']['proto'], e['value']['proto'])}"}
                       for e in self.raw("sock_revnat")), key=lambda r: r["cookie"])

    def frags(self) -> list[dict]:
        """Fragmented datagrams in flight: the first fragment's ports, for the later ones."""
        return [{"datagram": f"{_ip(e['key']['saddr'])} -> {_ip(e['key']['daddr'])} id {socket.ntohs(e['key']['id'])} "
                             f"proto {e['key']['proto']}",
                 "ports": f"{_port(e['value']['sport'])} -> {_port(e['value']['dport'])}"} for e in self.raw("frags")]

    def affinity(self) -> list[dict]:
        now = self.now()
        by_id = self._services_by_id()
        backends = {e["key"]: e["value"] for e in self.raw("backends")}
        out = []
        for e in self.raw("affinity"):
            k, v = e["key"], e["value"]
            svc = by_id.get(k["svc_id"], {})
            b = backends.get(v["backend_id"])
            timeout = svc.get("affinity_timeout") or 0
            idle = max(0, (now - v["last_used"]) // 10**9)
            out.append({"client": _ip(k["client"]), "svc_id": k["svc_id"],
                        "service": svc.get("service") or svc.get("frontend"),
                        "backend": _endpoint(b["addr"], b["port"]) if b else None, "idle": idle,
                        "remaining": max(0, timeout - idle)})
        return sorted(out, key=lambda a: (a["svc_id"], a["client"]))

    def lb_sources(self) -> list[dict]:
        by_id = self._services_by_id()
        out = []
        for e in self.raw("lb_sources"):
            k = e["key"]
            svc = by_id.get(k["svc_id"], {})
            out.append({"svc_id": k["svc_id"], "service": svc.get("service") or svc.get("frontend"),
                        "admits": f"{_ip(k['addr'])}/{k['prefixlen'] - 32}"})
        return sorted(out, key=lambda s: (s["svc_id"], s["admits"]))

    def nonmasq(self) -> list[str]:
        return sorted(f"{_ip(e['key']['addr'])}/{e['key']['prefixlen']}" for e in self.raw("nonmasq"))

    def addresses(self) -> list[dict]:
        kinds = {DEFINES["ADDR_F_FRONTEND"]: "frontend", DEFINES["ADDR_F_ENDPOINT"]: "endpoint"}
        return sorted(({"address": _ip(e["key"]), "is": _flags(e["value"], kinds)} for e in self.raw("addresses")),
                      key=lambda a: ipaddress.IPv4Address(a["address"]))

    def config_view(self) -> dict:
        c = dict(self.config())
        for f in ("node_ip", "cluster_net", "cluster_mask"):
            c[f] = _ip(c[f])
        c.pop("pad0", None)
        c.pop("pad1", None)
        c["trace"] = bool(self.raw("trace_control")[0]["value"])     # a `dataplane trace` is attached
        return c

    def metrics(self) -> dict:
        out = {}
        for e in self.raw("metrics"):
            total = sum(cpu["value"] for cpu in e["values"]) if "values" in e else e["value"]
            if total and e["key"] < len(METRICS):
                out[METRICS[e["key"]]] = total
        return out

    def section(self, name: str):
        return {"services": self.services, "conntrack": self.conntrack, "snat": self.snat, "nosnat": self.nosnat,
                "affinity": self.affinity, "affinity_match": self.affinity_match, "sock_revnat": self.sock_revnat,
                "frags": self.frags, "lb_sources": self.lb_sources, "nonmasq": self.nonmasq,
                "addresses": self.addresses, "config": self.config_view, "metrics": self.metrics}[name]()


def _state(proto: str, flags: int) -> str:
    """A flow's state in conntrack's words. The programs track state for TCP only: a UDP flow
    lives by its lifetime, renewed by every packet either way (lib/conntrack.h)."""
    if proto != "TCP":
        return "live (no state kept for UDP)"
    if flags & DEFINES["CT_F_RST"]:
        return "reset"
    closing = flags & (DEFINES["CT_F_FIN_ORIG"] | DEFINES["CT_F_FIN_REPLY"])
    if closing == DEFINES["CT_F_FIN_ORIG"] | DEFINES["CT_F_FIN_REPLY"]:
        return "closed"
    if closing:
        return "closing"
    return "established" if flags & DEFINES["CT_F_SEEN_REPLY"] else "syn-sent"


def read(lab: str, node: str, frontends: dict, sections=SECTIONS) -> dict:
    view = NodeMapsView(lab, node, frontends)
    return {name: view.section(name) for name in sections}


def format_text(node: str, pins: str, data: dict) -> str:
    """The sections of `read`, for a terminal."""
    lines = [f"# eBPF maps of {node} (bpftool map dump pinned {pins}/<map>)"]
    for name, rows in data.items():
        lines.append(f"## {name}")
        lines += _FORMAT[name](rows) or ["(none)"]
    return "\n".join(lines) + "\n"


def _fmt_services(rows):
    out = []
    for s in rows:
        who = " from pods" if s["scope"] == "pods" else ""
        flags = s["flags"][:]
        if s["affinity_timeout"] is not None:
            flags[flags.index("affinity")] = f"affinity {s['affinity_timeout']}s"
        head = f"{s['frontend']}{who} [{s['service'] or 'id ' + str(s['svc_id'])}"
        head += f"; id {s['svc_id']}" if s["service"] else ""
        head += f"; {', '.join(flags)}]" if flags else "]"
        eps = ", ".join(f"{b['slot']}:{b['endpoint'] or '(missing)'}" for b in s["backends"])
        out.append(f"{head} -> {eps or s['empty']}")
    return out


def _fmt_conntrack(rows):
    return [f"{f['entry']:7} {f['proto']} {f['tuple']} => {f['nat']}  {f['state']}, {f['remaining']}s left"
            f"{' (expired)' if f['expired'] else ''}  [{f['service'] or 'id ' + str(f['svc_id'])}]"
            + (f" masqueraded as {f['masqueraded_as']}" if f.get("masqueraded_as") else "") for f in rows]


def _fmt_snat(rows):
    return [f"{m['half']:3} {m['proto']} {m['from']} -> {m['to']} "
            f"{'leaves as' if m['half'] == 'out' else 'goes to'} {m['becomes']}  {m['state']}, {m['remaining']}s left"
            f"{' (expired)' if m['expired'] else ''}" for m in rows]


def _fmt_nosnat(rows):
    return [f"{r['tuple']}  (answers never masqueraded), {r['remaining']}s left" for r in rows]


def _fmt_affinity_match(rows):
    return [f"{r['service'] or 'id ' + str(r['svc_id'])}: {', '.join(r['eligible'])}" for r in rows]


def _fmt_sock_revnat(rows):
    return [f"socket {r['cookie']} -> {r['backend']} shown as {r['frontend']}" for r in rows]


def _fmt_frags(rows):
    return [f"{r['datagram']}: ports {r['ports']}" for r in rows]


def _fmt_affinity(rows):
    return [f"{a['client']} -> {a['service'] or 'id ' + str(a['svc_id'])}: {a['backend'] or '(gone)'}, "
            f"used {a['idle']}s ago, {a['remaining']}s left" for a in rows]


def _fmt_lb_sources(rows):
    return [f"{s['service'] or 'id ' + str(s['svc_id'])} admits {s['admits']}" for s in rows]


def _fmt_list(rows):
    return [str(r) for r in rows]


def _fmt_addresses(rows):
    return [f"{a['address']} {'+'.join(a['is'])}" for a in rows]


def _fmt_dict(d):
    return [f"{k} {v}" for k, v in d.items()]


_FORMAT = {"services": _fmt_services, "conntrack": _fmt_conntrack, "snat": _fmt_snat, "nosnat": _fmt_nosnat,
           "affinity_match": _fmt_affinity_match, "sock_revnat": _fmt_sock_revnat, "frags": _fmt_frags,
           "affinity": _fmt_affinity,
           "lb_sources": _fmt_lb_sources, "nonmasq": _fmt_list, "addresses": _fmt_addresses, "config": _fmt_dict,
           "metrics": _fmt_dict}
