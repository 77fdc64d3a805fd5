"""The eBPF programs' own trace events (bpf/lib/trace.h), read from each node's pinned ring buffer.

Attaching sets each node's `trace_control` flag (a map of tracing's own: the agent's config writes
never race it), which turns the programs' notes on; detaching clears it, and then a packet costs
the programs a byte test per note. One reader per lab at a time (the session's lock: two readers
of one ring buffer would each see half of the events); the lab's agent clears a flag that no
reader holds the lock for (a reader killed with SIGKILL), so a lost reader costs little for long. The ring buffer's callback only copies; events are decoded (and the maps
read for names) in poll(). Events the programs could not write (the ring buffer full) are counted
by the programs (M_TRACE_LOST) and reported by `lost()`.

The event's layout comes from bcc's generated type of `struct trace_event` (bpf/include/types.h,
compiled here in a program of types only) and is checked against the layout the lab's programs
were built with (the description kept beside the lab's record at load): a lab whose programs
predate a change of the struct is refused, not misread.
"""
from __future__ import annotations

import ctypes as ct
import ipaddress
import json
import os
import socket
import struct
import time

from ...backends.ebpf.dump import pinned_entries
from ...backends.ebpf.layout import _ctype
from ...contract.consts import DEFINES, METRICS
from ...contract.headers import BPF_DIR
from ...errors import DataplaneError, LabError
from ...lab import netns, state
from ...lab.names import pin_dir

HOOKS = {DEFINES[f"TRACE_HOOK_{h.upper()}"]: h for h in
         ("from_pod", "to_pod", "from_netdev", "to_netdev", "sock_connect", "sock_sendmsg")}
CT_ENTRIES = {DEFINES[k]: k for k in ("CT_SERVICE", "CT_REPLY", "CT_SNAT_OUT", "CT_SNAT_IN")}
CT_FLAGS = {v: k[len("CT_F_"):].lower() for k, v in DEFINES.items()
            if k.startswith("CT_F_") and k != "CT_F_CLOSED_BOTH"}
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP"}
TCP_FLAGS = ((0x02, "S"), (0x01, "F"), (0x04, "R"), (0x08, "P"), (0x10, "."))   # as tcpdump prints them
# What a packet's outcome is, of everything it counted: the first of these (a drop wins over all).
OUTCOMES = ("REJECT_NO_ENDPOINTS", "REJECT_PORT_UNSERVED", "M_DNAT_NEW", "M_DNAT", "M_REVNAT", "M_ICMP_REVNAT",
            "M_SNAT_NEW", "M_SNAT", "M_UNSNAT", "M_SOCK_LB")
# What each outcome did, in words (the rest are drops, named by their reason).
DOES = {"M_DNAT_NEW": "new flow", "M_DNAT": "DNAT (known flow)", "M_REVNAT": "reverse NAT (reply)",
        "M_ICMP_REVNAT": "ICMP error translated", "M_SNAT_NEW": "new masquerade", "M_SNAT": "masquerade (known flow)",
        "M_UNSNAT": "un-masquerade (reply)", "M_SOCK_LB": "socket sent to backend",
        "REJECT_NO_ENDPOINTS": "REJECT: no endpoints, ICMP port unreachable sent back",
        "REJECT_PORT_UNSERVED": "REJECT: port not served, ICMP port unreachable sent back"}
TYPES_SOURCE = '#include "types.h"\nBPF_ARRAY(trace_event_type, struct trace_event, 1);\n'
RING_TIMEOUT_MS = 200


def _libbpf():
    lib = ct.CDLL("libbpf.so.1", use_errno=True)
    lib.bpf_obj_get.argtypes = [ct.c_char_p]
    lib.bpf_obj_get.restype = ct.c_int
    return lib


def event_type():
    """struct trace_event as bcc generates it from bpf/include/types.h."""
    from bcc import BPF
    b = BPF(text=TYPES_SOURCE.encode(), cflags=["-w", f"-I{BPF_DIR / 'include'}"])
    try:
        return b["trace_event_type"].Leaf
    finally:
        b.cleanup()


def check_layout(lab: str, node: str, event_type) -> None:
    """The event layout of this build against the one the node's programs were loaded with."""
    path = os.path.join(state.lab_files(lab, create=False), f"layout-{node}.json")
    try:
        with open(path) as f:
            loaded = json.load(f).get("trace_scratch", {}).get("value")
    except (OSError, ValueError) as exc:
        raise LabError(f"lab {lab}: cannot read the layout its programs were built with ({path}: {exc})") from exc
    if loaded is None:
        raise LabError(f"lab {lab}: node {node}'s programs were built before tracing existed; bring the lab "
                       f"down and up again (`dataplane down {lab}`, then `up`) to trace it")
    if loaded != _ctype(event_type):
        raise LabError(f"lab {lab}: node {node}'s programs send trace events of another layout than this "
                       f"version's bpf/include/types.h; bring the lab down and up again to trace it")


class _PinnedMap:
    """One pinned map by path, read and written whole-value by fd (libbpf's syscalls)."""

    def __init__(self, lib, path: str):
        self.lib = lib
        self.fd = lib.bpf_obj_get(path.encode())
        if self.fd < 0:
            raise LabError(f"cannot open the pinned map {path}: {os.strerror(ct.get_errno())}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _TraceControl(_PinnedMap):
    """A node's trace_control map: index 0, 1 while a reader is attached. Written whole."""

    def set(self, on: bool) -> None:
        from bcc.libbcc import lib as bcc
        key, value = ct.c_uint32(0), ct.c_uint32(int(on))
        if bcc.bpf_update_elem(self.fd, ct.byref(key), ct.byref(value), 0) < 0:
            raise LabError(f"cannot write a node's trace_control map: {os.strerror(ct.get_errno())}")

    def get(self) -> int:
        from bcc.libbcc import lib as bcc
        key, value = ct.c_uint32(0), ct.c_uint32(0)
        if bcc.bpf_lookup_elem(self.fd, ct.byref(key), ct.byref(value)) < 0:
            raise LabError(f"cannot read a node's trace_control map: {os.strerror(ct.get_errno())}")
        return value.value


def _ip(be32: int) -> str:
    return str(ipaddress.IPv4Address(struct.pack("=I", be32)))


def _port(be16: int) -> int:
    return socket.ntohs(be16)


def _tcp_flags(bits: int) -> str:
    return "".join(ch for bit, ch in TCP_FLAGS if bits & bit)


class NodeNames:
    """What a node's ids and interfaces stand for: svc_id -> frontend, backend id -> address,
    ifindex -> interface, read from the pinned maps and the node's namespace, again when an event
    names one not known yet (at most once a second)."""

    def __init__(self, pins: str, ns: str, frontends: dict):
        self.pins, self.ns, self.frontends = pins, ns, frontends
        self.services: dict[int, str] = {}
        self.backends: dict[int, str] = {}
        self.interfaces: dict[int, str] = {}
        self.read_at = 0.0
        self.refresh()

    def refresh(self) -> None:
        if time.monotonic() - self.read_at < 1.0:
            return
        self.read_at = time.monotonic()
        for e in pinned_entries(os.path.join(self.pins, "services")):
            k, v = e["key"], e["value"]
            if k["slot"] == 0 and k["port"]:
                proto = PROTOCOLS.get(k["proto"], str(k["proto"]))
                self.services[v["svc_id"]] = f"{_ip(k['vip'])}:{_port(k['port'])}/{proto}"
        self.backends = {e["key"]: f"{_ip(e['value']['addr'])}:{_port(e['value']['port'])}"
                         for e in pinned_entries(os.path.join(self.pins, "backends"))}
        try:
            with netns.ipr(self.ns) as ipr:
                self.interfaces = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        except Exception:
            pass     # the namespace is going away with the lab: events keep their ifindex

    def frontend(self, svc_id: int) -> tuple[str | None, str | None]:
        """(frontend "ip:port/PROTO", service "ns/name:port (kind)") of a service port id."""
        if svc_id and svc_id not in self.services:
            self.refresh()
        fe = self.services.get(svc_id)
        if fe is None:
            return None, None
        addr, rest = fe.split(":", 1)
        port, proto = rest.split("/")
        return fe, self.frontends.get((addr, int(port), proto))

    def backend(self, backend_id: int) -> str | None:
        if backend_id and backend_id not in self.backends:
            self.refresh()
        return self.backends.get(backend_id)

    def interface(self, ifindex: int) -> str:
        if ifindex and ifindex not in self.interfaces:
            self.refresh()
        return self.interfaces.get(ifindex, f"if{ifindex}") if ifindex else "socket"


def decode(ev, node: str, names: NodeNames) -> dict:
    """One trace_event as a plain dict (JSON-ready), with its one-line text. Its time is
    CLOCK_MONOTONIC seconds, as every trace source's."""
    counted = [m for i, m in enumerate(METRICS) if ev.counted >> i & 1]
    drop = METRICS[ev.drop] if ev.drop else None
    outcome = drop or next((m for m in OUTCOMES if m in counted), counted[0] if counted else "M_PASS")
    proto = PROTOCOLS.get(ev.proto, str(ev.proto))
    before = {"src": _ip(ev.saddr), "sport": _port(ev.sport), "dst": _ip(ev.daddr), "dport": _port(ev.dport),
              "proto": proto}
    if ev.proto == 6:
        before["flags"] = _tcp_flags(ev.tcp_flags)
    after = None
    if not drop and ev.new_saddr:
        after = {"src": _ip(ev.new_saddr), "sport": _port(ev.new_sport), "dst": _ip(ev.new_daddr),
                 "dport": _port(ev.new_dport), "proto": PROTOCOLS.get(ev.new_proto, str(ev.new_proto))}
    frontend, service = names.frontend(ev.svc_id)
    out = {"time": ev.time / 1e9, "node": node, "source": "bpf", "hook": HOOKS.get(ev.hook, str(ev.hook)),
           "interface": names.interface(ev.ifindex), "before": before, "after": after, "outcome": outcome,
           "drop": drop, "also": [m for m in counted if m != outcome], "svc_id": ev.svc_id, "frontend": frontend,
           "service": service, "backend_id": ev.backend_id, "backend": names.backend(ev.backend_id)}
    if ev.ct_dir:
        out["conntrack"] = {"entry": CT_ENTRIES.get(ev.ct_dir, str(ev.ct_dir)),
                            "flags": [n for bit, n in sorted(CT_FLAGS.items()) if ev.ct_flags & bit],
                            "remaining": ev.ct_remaining}
    elif outcome in ("M_DNAT_NEW", "M_SOCK_LB"):
        out["choice"] = {"by": "affinity" if ev.slot == 0 else "hash", "hash": ev.hash, "slot": ev.slot,
                         "count": ev.count}
    if ev.snat_port:
        out["snat"] = {"port": _port(ev.snat_port), "tries": ev.snat_tries}
    out["text"] = describe(out)
    return out


def clock_text(monotonic: float) -> str:
    """A CLOCK_MONOTONIC time as the wall clock's time of day, to the microsecond."""
    wall = monotonic + time.time() - time.monotonic()
    return time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall % 1 * 1e6):06d}"


def _tuple(t: dict) -> str:
    flags = f" [{t['flags']}]" if t.get("flags") else ""
    if t["proto"] in ("TCP", "UDP"):
        return f"{t['proto']} {t['src']}:{t['sport']} -> {t['dst']}:{t['dport']}{flags}"
    return f"{t['proto']} {t['src']} -> {t['dst']}"


def describe(e: dict) -> str:
    """The event's line: what met the hook, the decision and why, what left."""
    what = DOES.get(e["outcome"], f"DROP {e['outcome']}" if e["drop"] else e["outcome"])
    why = []
    if e.get("service") or e.get("frontend"):
        why.append(e.get("service") or e["frontend"])
    if "choice" in e:
        c = e["choice"]
        how = "by session affinity" if c["by"] == "affinity" else f"hash {c['hash']:#010x} slot {c['slot']}/{c['count']}"
        why.append(f"backend {e['backend'] or e['backend_id']} {how}")
    elif "conntrack" in e:
        c = e["conntrack"]
        to = f" -> {e['backend'] or e['backend_id']}" if e["backend_id"] else ""     # a masquerade has none
        why.append(f"{c['entry']}{to}, {','.join(c['flags']) or 'no reply yet'}, {c['remaining']}s left")
    if "snat" in e:
        why.append(f"node port {e['snat']['port']} after {e['snat']['tries']} tries" if e["snat"]["tries"]
                   else f"node port {e['snat']['port']}")
    extras = [m[2:].lower() if m.startswith("M_") else m for m in e["also"]]
    if extras:
        why.append("also " + ", ".join(extras))
    stamp = clock_text(e["time"])
    line = f"{stamp} {e['node']} {e['hook']}({e['interface']}) {_tuple(e['before'])}: {what}"
    if why:
        line += f" ({'; '.join(why)})"
    if e["after"] and e["after"] != {k: v for k, v in e["before"].items() if k != "flags"}:
        line += f" => {_tuple(e['after'])}"
    return line


class BpfTrace:
    """Trace events of the lab's eBPF programs on `nodes` ({node: its namespace}), as dicts."""

    def __init__(self, lab: str, nodes: dict, frontends: dict):
        self.lab, self.nodes, self.frontends = lab, nodes, frontends
        self.controls: dict[str, _TraceControl] = {}
        self.rings: list[_PinnedMap] = []
        self.names: dict[str, NodeNames] = {}
        self.ring = None
        self.raw: list[tuple[str, bytes]] = []       # (node, event bytes), copied by the callback
        self.callback = None
        self.lost_at_start: dict[str, int] = {}

    def start(self) -> None:
        try:
            self.started_ns = time.monotonic_ns()
            self.event_type = event_type()
            lib = _libbpf()
            for node in self.nodes:
                check_layout(self.lab, node, self.event_type)
            self.callback = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_int)(self._on_event)
            for i, (node, ns) in enumerate(self.nodes.items()):
                pins = os.path.join(pin_dir(self.lab), node)
                if not os.path.isdir(pins):
                    raise LabError(f"no pinned eBPF maps for {node} under {pins}")
                self.names[node] = NodeNames(pins, ns, self.frontends)
                ring = _PinnedMap(lib, os.path.join(pins, "trace_events"))
                self.rings.append(ring)
                self._add_ring(ring.fd, i)
                self.controls[node] = _TraceControl(lib, os.path.join(pins, "trace_control"))
            self.lost_at_start = self.lost()
            for control in self.controls.values():
                control.set(True)
        except BaseException:
            self.close()
            raise

    def _add_ring(self, fd: int, index: int) -> None:
        from bcc.libbcc import lib as bcc
        if self.ring is None:
            self.ring = bcc.bpf_new_ringbuf(fd, self.callback, ct.c_void_p(index + 1))
            ok = bool(self.ring)
        else:
            ok = bcc.bpf_add_ringbuf(self.ring, fd, self.callback, ct.c_void_p(index + 1)) >= 0
        if not ok:
            raise DataplaneError(f"cannot read the trace ring buffer of lab {self.lab}: {os.strerror(ct.get_errno())}")

    def _on_event(self, ctx, data, size) -> int:
        # only a copy here: an exception in a ring buffer callback is swallowed by libbpf's caller
        self.raw.append((list(self.nodes)[(ctx or 1) - 1], ct.string_at(data, min(size, ct.sizeof(self.event_type)))))
        return 0

    def poll(self, timeout_ms: int = RING_TIMEOUT_MS) -> list[dict]:
        """Events that arrived (waiting up to timeout_ms for the first), decoded; not those an
        earlier reader left in the ring buffer unread."""
        from bcc.libbcc import lib as bcc
        bcc.bpf_poll_ringbuf(self.ring, timeout_ms)
        raw, self.raw = self.raw, []
        out = []
        for node, data in raw:
            ev = self.event_type.from_buffer_copy(data)
            if ev.time >= self.started_ns:
                out.append(decode(ev, node, self.names[node]))
        return out

    def lost(self) -> dict:
        """Per node: events the programs could not write (M_TRACE_LOST, since the lab started)."""
        from ...contract.consts import INDEX
        out = {}
        for node in self.nodes:
            path = os.path.join(pin_dir(self.lab), node, "metrics")
            for e in pinned_entries(path):
                if e["key"] == INDEX["M_TRACE_LOST"]:
                    out[node] = sum(cpu["value"] for cpu in e["values"]) if "values" in e else e["value"]
        return out

    def lost_since_start(self) -> int:
        return sum(n - self.lost_at_start.get(node, 0) for node, n in self.lost().items())

    def close(self) -> None:
        """Flags cleared, ring buffers and maps let go. Idempotent."""
        from bcc.libbcc import lib as bcc
        for control in self.controls.values():
            try:
                control.set(False)
            except LabError:
                pass      # the lab went away first
            control.close()
        self.controls.clear()
        if self.ring is not None:
            bcc.bpf_free_ringbuf(self.ring)
            self.ring = None
        for ring in self.rings:
            ring.close()
        self.rings.clear()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()
