"""`dataplane trace --drops`: the kernel's drops of lab packets, each with the kernel's own reason.

Owns: the skb:kfree_skb reader (KernelDrops), the walk of the running kernel's BTF that gives it
the kernel struct offsets it reads at (kernel_layout), and the drop reasons' names.

Why a BTF walk: bcc compiles against whatever kernel headers the machine has (Debian's 6.1 here,
under a 6.18 kernel), so an `skb->dev` through bcc's header types reads at the wrong offset. The
running kernel describes its own structs in /sys/kernel/btf/vmlinux; bpftool dumps that, and the
offsets found there are handed to the program as -D defines, read with bpf_probe_read_kernel at
base + offset. No kernel struct type is ever used in the BPF text.

Why tracepoint arguments are safe: the tracepoint's record (skbaddr, location, protocol, reason,
rx_sk on newer kernels) is laid out by the kernel's own format file, which bcc reads when it
builds TRACEPOINT_PROBE's `args` struct.

Cost: skb:kfree_skb fires on every freed-as-dropped skb on the machine. The program is compiled,
loaded and attached only while a reader is open (`dataplane trace --drops` running); a drop outside
the lab's namespaces costs two or three probe reads and one hash lookup. close() leaves nothing:
no pin, no attachment.
"""
from __future__ import annotations

import ctypes
import functools
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass

from ...errors import DataplaneError, PrerequisiteError

BTF_VMLINUX = "/sys/kernel/btf/vmlinux"
TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
TRACEPOINT = "events/skb/kfree_skb/format"
ETH_P_IP = 0x0800
IP_PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 132: "sctp"}
ETHERTYPES = {0x0806: "arp", 0x86DD: "ipv6", 0x8100: "vlan"}
REASON_SUBSYS_SHIFT = 16             # include/net/dropreason.h: a subsystem's reasons carry its id up here

# define -> (struct, member path): what the program reads, found in the running kernel's BTF.
OFFSETS = {
    "SKB_SK": ("sk_buff", "sk"),
    "SKB_DEV": ("sk_buff", "dev"),
    "SKB_HEAD": ("sk_buff", "head"),
    "SKB_NETWORK_HEADER": ("sk_buff", "network_header"),
    "SKB_TRANSPORT_HEADER": ("sk_buff", "transport_header"),
    "DEV_NET": ("net_device", "nd_net.net"),          # possible_net_t: a struct holding `net` (CONFIG_NET_NS)
    "SK_NET": ("sock", "__sk_common.skc_net.net"),
    "NET_INUM": ("net", "ns.inum"),
}
# Kinds that only qualify or rename a type: the member's layout is the type beneath.
QUALIFIERS = {"TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"}


# --- the kernel's BTF -------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """Where a member lies in its outermost struct: bit offset, bitfield width (0: not a bitfield),
    and the byte size of its type."""
    bit_offset: int
    bitfield: int
    size: int

    @property
    def offset(self) -> int:
        if self.bitfield or self.bit_offset % 8:
            raise DataplaneError(f"a bitfield (bit {self.bit_offset}, {self.bitfield} bits) has no byte offset")
        return self.bit_offset // 8


class Btf:
    """The types of one BTF dump (bpftool's `format raw -j`), looked up by name and member path."""

    def __init__(self, dump: dict):
        self.types = {t["id"]: t for t in dump["types"]}
        self.named: dict[tuple[str, str], dict] = {}
        for t in dump["types"]:
            # the first complete definition of a name wins (a FWD of it has no members)
            self.named.setdefault((t["kind"], t.get("name", "")), t)

    def resolve(self, type_id: int) -> dict:
        t = self.types[type_id]
        while t["kind"] in QUALIFIERS:
            t = self.types[t["type_id"]]
        return t

    def struct(self, name: str) -> dict:
        for kind in ("STRUCT", "UNION"):
            if (kind, name) in self.named:
                return self.named[(kind, name)]
        raise DataplaneError(f"the kernel's BTF has no struct {name}")

    def field(self, struct_name: str, path: str) -> Field:
        """A member by dotted path ("nd_net.net"); anonymous structs and unions on the way (6.x's
        struct_group `headers` in sk_buff, the union around sk_buff.dev) are searched through."""
        t, bits = self.struct(struct_name), 0
        for name in path.split("."):
            if t["kind"] not in ("STRUCT", "UNION"):
                raise DataplaneError(f"{struct_name}.{path}: {name} is looked up in a {t['kind']}")
            found = self._member(t, name)
            if found is None:
                raise DataplaneError(f"the kernel's struct {struct_name} has no member {path}")
            member, at = found
            bits += at
            t = self.resolve(member["type_id"])
        width = member.get("bitfield_size", 0)
        if t["kind"] == "INT" and not width and t.get("nr_bits", t["size"] * 8) != t["size"] * 8:
            # a bitfield of a struct without kind_flag: its width and shift sit in the INT type
            width, bits = t["nr_bits"], bits + t.get("bits_offset", 0)
        return Field(bits, width, t.get("size", 8 if t["kind"] == "PTR" else 0))

    def _member(self, t: dict, name: str) -> tuple[dict, int] | None:
        """The member `name` of struct/union t and its bit offset in t, looking inside t's
        anonymous members (depth first, in order, as C's name lookup does)."""
        for m in t.get("members", []):
            if m["name"] == name:
                return m, m["bits_offset"]
        for m in t.get("members", []):
            inner = self.resolve(m["type_id"])
            if m["name"] in ("(anon)", "") and inner["kind"] in ("STRUCT", "UNION"):
                found = self._member(inner, name)
                if found:
                    return found[0], m["bits_offset"] + found[1]
        return None

    def enum(self, name: str) -> dict[int, str]:
        for kind in ("ENUM", "ENUM64"):
            if (kind, name) in self.named:
                return {v["val"]: v["name"] for v in self.named[(kind, name)]["values"]}
        raise DataplaneError(f"the kernel's BTF has no enum {name}")


def load_btf(path: str = BTF_VMLINUX) -> Btf:
    """The running kernel's BTF, parsed (about 17 MB of JSON: callers keep what they need)."""
    if not os.path.exists(path):
        raise PrerequisiteError(f"no kernel BTF at {path}: the kernel's struct offsets cannot be known",
                                "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's are)")
    if not shutil.which("bpftool"):
        raise PrerequisiteError("bpftool is not installed: it reads the kernel's BTF", "apt-get install bpftool")
    proc = subprocess.run(["bpftool", "btf", "dump", "file", path, "format", "raw", "-j"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataplaneError(f"bpftool could not dump the BTF at {path}: {proc.stderr.strip()}")
    return Btf(json.loads(proc.stdout))


@dataclass(frozen=True)
class KernelLayout:
    offsets: dict[str, int]            # OFFSETS' define -> byte offset
    reasons: dict[int, str]            # enum skb_drop_reason, prefixes stripped
    subsystems: dict[int, str]         # enum skb_drop_reason_subsys (empty before 6.8)


def reason_name(value: str) -> str:
    for prefix in ("SKB_DROP_REASON_SUBSYS_", "SKB_DROP_REASON_", "SKB_"):
        if value.startswith(prefix):
            return value[len(prefix):]
    return value


def layout_from(btf: Btf) -> KernelLayout:
    offsets = {define: btf.field(s, path).offset for define, (s, path) in OFFSETS.items()}
    try:
        subsystems = {k: reason_name(v) for k, v in btf.enum("skb_drop_reason_subsys").items()}
    except DataplaneError:
        subsystems = {}
    return KernelLayout(offsets, {k: reason_name(v) for k, v in btf.enum("skb_drop_reason").items()}, subsystems)


@functools.lru_cache(maxsize=None)
def kernel_layout(path: str = BTF_VMLINUX) -> KernelLayout:
    """The offsets and reason names of the running kernel, computed once per process (the BTF
    parse is the expensive part, and it is dropped once they are taken)."""
    return layout_from(load_btf(path))


# --- the tracepoint ---------------------------------------------------------------------------

def tracepoint_format() -> str:
    """skb:kfree_skb's format file; bcc needs tracefs mounted to attach tracepoints at all."""
    for root in TRACEFS:
        try:
            with open(os.path.join(root, TRACEPOINT)) as f:
                return f.read()
        except FileNotFoundError:
            continue
    if not any(os.path.exists(os.path.join(root, "events")) for root in TRACEFS):
        raise PrerequisiteError("tracefs is not mounted: tracepoints cannot be attached",
                                "mount -t tracefs nodev /sys/kernel/tracing")
    raise PrerequisiteError("this kernel has no skb:kfree_skb tracepoint: its drops cannot be seen",
                            "use a kernel of 5.17 or later (drop reasons) with CONFIG_TRACEPOINTS")


def tracepoint_fields(text: str) -> dict[str, str]:
    """field name -> C type, from a format file ("field:void * skbaddr;\toffset:8;...")."""
    fields = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("field:"):
            decl = line[len("field:"):].split(";", 1)[0].strip()
            ctype, _, name = decl.rpartition(" ")
            fields[name.split("[", 1)[0]] = ctype.strip()
    return fields


# The program: bpf/kernel_drops.c (struct drop_event: bpf/include/types.h), built with these defines.
PROGRAM = "kernel_drops.c"


def cflags(layout: KernelLayout, fields: dict[str, str]) -> list[str]:
    consumed = next((k for k, v in layout.reasons.items() if v == "CONSUMED"), 0xFFFFFFFF)
    flags = ["-w", f"-DREASON_CONSUMED={consumed}", f"-DETH_P_IP={ETH_P_IP}"]
    flags += [f"-D{define}={offset}" for define, offset in layout.offsets.items()]
    if "rx_sk" in fields:
        flags.append("-DHAVE_RX_SK")
    return flags


# --- the reader -------------------------------------------------------------------------------

class KernelDrops:
    """The kernel's drops of packets in the given network namespaces (inode -> name to print).

    `addresses`: if given, only IPv4 drops with a source or destination among them are kept
    (filtered here, after the namespace filter in the kernel). Poll for events; close() (or the
    end of a `with`) detaches and frees the program."""

    def __init__(self, namespaces: dict[int, str], addresses: set[str] | None = None):
        fields = tracepoint_fields(tracepoint_format())
        missing = {"skbaddr", "location", "protocol", "reason"} - set(fields)
        if missing:
            raise PrerequisiteError(f"skb:kfree_skb on this kernel lacks {', '.join(sorted(missing))}",
                                    "use a kernel of 5.17 or later (drop reasons in kfree_skb)")
        self.layout = kernel_layout()
        self.namespaces = dict(namespaces)
        self.addresses = {str(ipaddress.IPv4Address(a)) for a in addresses} if addresses is not None else None
        self._pending: list = []
        self.bpf = self._load(fields)

    def _load(self, fields: dict[str, str]):
        try:
            from bcc import BPF
        except ImportError as exc:
            raise PrerequisiteError(f"bcc cannot be imported ({exc})", "apt-get install python3-bpfcc") from exc
        try:
            from ...backends.ebpf.source import assemble
            bpf = BPF(text=assemble(PROGRAM).encode(), cflags=cflags(self.layout, fields))   # attaches TRACEPOINT_PROBE
        except Exception as exc:
            raise DataplaneError(f"compiling or attaching the skb:kfree_skb program failed: {exc}") from exc
        try:
            table = bpf[b"netns"]
            for inode in self.namespaces:
                table[table.Key(inode)] = table.Leaf(1)
            # The callback only copies: bcc prints and swallows an exception raised in it.
            ring = bpf[b"drops"]
            self._event_type = bpf[b"drop_scratch"].sLeaf     # bcc's type of struct drop_event
            ring.open_ring_buffer(lambda _ctx, data, size: self._pending.append(
                self._event_type.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(self._event_type)))))
        except BaseException:
            bpf.cleanup()
            raise
        return bpf

    def poll(self, timeout_ms: int = 0) -> list[dict]:
        """The drops seen since the last poll, waiting up to timeout_ms for the first."""
        if self.bpf is None:
            raise DataplaneError("the kernel drops reader is closed")
        self.bpf.ring_buffer_poll(timeout_ms)
        raw, self._pending = self._pending, []
        events = (self._event(r) for r in raw)
        return [e for e in events if self._wanted(e)]

    @property
    def lost(self) -> int:
        """Drops not reported because the ring buffer was full (0 once closed: nothing to ask)."""
        if self.bpf is None:
            return 0
        t = self.bpf[b"lost"]
        return t[t.Key(0)].value

    def _wanted(self, event: dict) -> bool:
        return self.addresses is None or bool({event["src"], event["dst"]} & self.addresses)

    def _event(self, e) -> dict:
        ports = e.ipv4 and e.ipproto in (6, 17)
        return {
            "time": e.time / 1e9,
            "netns": self.namespaces.get(e.netns, str(e.netns)),
            "reason": self.reason(e.reason),
            "location": symbol(e.location),
            "src": str(ipaddress.IPv4Address(struct.pack("=I", e.saddr))) if e.ipv4 else None,
            "dst": str(ipaddress.IPv4Address(struct.pack("=I", e.daddr))) if e.ipv4 else None,
            "proto": IP_PROTOS.get(e.ipproto, str(e.ipproto)) if e.ipv4
            else ETHERTYPES.get(e.ethertype, f"0x{e.ethertype:04x}"),
            "sport": socket.ntohs(e.sport) if ports else None,
            "dport": socket.ntohs(e.dport) if ports else None,
        }

    def reason(self, value: int) -> str:
        """The kernel's name for a reason; a subsystem's own (mac80211, openvswitch) as SUBSYS:code."""
        if value in self.layout.reasons:
            return self.layout.reasons[value]
        subsys = value >> REASON_SUBSYS_SHIFT
        if subsys:
            return f"{self.layout.subsystems.get(subsys, subsys)}:{value & 0xFFFF}"
        return str(value)

    def close(self) -> None:
        if self.bpf is not None:
            bpf, self.bpf = self.bpf, None
            bpf.cleanup()          # detaches the tracepoint, closes the program and maps

    def __enter__(self) -> "KernelDrops":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def symbol(address: int) -> str:
    """symbol+0xoffset from /proc/kallsyms (bcc's cache of it), or the bare address."""
    from bcc import BPF
    name = BPF.ksym(address, show_offset=True)
    text = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return f"{address:#x}" if text.startswith("[unknown]") else text
