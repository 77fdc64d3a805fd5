"""One node's BPF programs: compile with bcc, attach with TC (pyroute2), pin maps, detach.

Each lab node gets its own compiled instance, so its maps (services, conntrack, affinity) are its
own, as on a real node. Programs attach to the node side of every pod veth: from_pod on TC ingress,
to_pod on TC egress. A live node's maps are pinned under /sys/fs/bpf/dp-<lab>/<node>/ by the build
itself (bpf/include/pinning.h), so a later build (`dataplane reload`) reuses them after checking
their layout stamp (layout.py), and replaces the programs in place: the same TC filter (priority
and handle) gets the new program in one netlink request, the cgroup hooks are re-attached (an
attach without BPF_F_ALLOW_MULTI replaces the program there). No packet meets an empty map or a
missing hook.
"""
from __future__ import annotations

import json
import os
import socket
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from ...errors import DataplaneError
from ...lab import netns
from ...lab.names import PIN_ROOT
from ...contract.limits import CtTimeouts, MapSizes
from .layout import LayoutMismatch, changed_maps, describe, stamp
from .source import assemble

TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"
MAP_NAMES = ("services", "backends", "conntrack", "affinity", "affinity_match", "nosnat", "frags", "sock_revnat",
             "metrics", "config", "nonmasq", "lb_sources", "addresses", "address_filter", "trace_scratch",
             "trace_control", "trace_events", "layout")
TC_PARENTS = {TC_INGRESS: 0xFFFFFFF2, TC_EGRESS: 0xFFFFFFF3}
ENTRY_POINTS = ("from_pod", "to_pod", "from_netdev", "to_netdev")
# The node's socket hooks (cgroup/connect4 and friends): entry point -> its attach type
# (BPF_CGROUP_INET4_CONNECT, _UDP4_SENDMSG, _UDP4_RECVMSG, _INET4_GETPEERNAME).
SOCK_HOOKS = {"sock_connect4": 10, "sock_sendmsg4": 14, "sock_recvmsg4": 19, "sock_getpeername4": 29}



def be32(ip) -> int:
    """An IPv4 address as the u32 whose memory holds it in network order (what BPF compares)."""
    if not isinstance(ip, IPv4Address):
        ip = IPv4Address(ip)             # IPv4Address(an IPv4Address) parses its text again: slow
    return struct.unpack("=I", ip.packed)[0]


def from_be32(value: int) -> IPv4Address:
    return IPv4Address(struct.pack("=I", value))


def be16(port: int) -> int:
    return socket.htons(port)


@dataclass
class NodeProgram:
    node: str
    netns: str
    node_ip: IPv4Address
    sizes: MapSizes = field(default_factory=MapSizes)
    timeouts: CtTimeouts = field(default_factory=CtTimeouts)
    bpf: object = None
    fns: dict = field(default_factory=dict)
    attached: list = field(default_factory=list)     # ifnames with our clsact
    cgroup_fd: int | None = None                      # the node's cgroup, while our socket hooks are on it
    cgroup_path: str = ""
    pin_dir: str | None = None
    address_filter: object = None    # address_filter.AddressFilter: built on first use after a load

    def load(self, seed: int, clock_offset: int = 0, pin_dir: str | None = None,
             layout_file: str | None = None, configure: bool = True, origins: list | None = None,
             without_tracing: bool = False) -> bool:
        """Compile and load. With `pin_dir`, the maps live there: created and pinned, or, if an
        earlier build pinned them, reused once their layout stamp matches this build's (True then).
        `layout_file` keeps the description of a new layout, so that a later mismatch can name the
        maps that changed. A refused build leaves the pinned maps as they were. Without
        `configure`, the config map (shared with the running programs, when reused) is left for
        the caller to write once every node's build has passed. `origins` (a list, filled in):
        build from a text without #line markers, for a profiler (source.assemble).
        `without_tracing`: a build with no trace code at all (DP_TRACE_COMPILED_OUT), for
        `bench kernel` to time beside a normal one; never for a lab."""
        from bcc import BPF
        defines = self.sizes.defines()
        if without_tracing:
            if pin_dir:
                raise DataplaneError("a build without tracing is for benchmarks: it cannot serve a lab")
            defines["DP_TRACE_COMPILED_OUT"] = 1
        existed = set()
        if pin_dir:
            os.makedirs(pin_dir, exist_ok=True)
            existed = set(os.listdir(pin_dir))
            defines["DP_PIN_DIR"] = json.dumps(pin_dir)      # a C string literal
        self.address_filter = None
        try:
            self.bpf = BPF(text=assemble("dataplane.c", defines, origins).encode(), cflags=["-w"])
            self.fns = {n: self.bpf.load_func(n.encode(), BPF.SCHED_CLS) for n in ENTRY_POINTS}
            for n, attach_type in SOCK_HOOKS.items():
                self.fns[n] = self.bpf.load_func(n.encode(), BPF.CGROUP_SOCK_ADDR, attach_type=attach_type)
        except Exception as exc:
            self._abandon(pin_dir, existed)
            raise DataplaneError(f"compiling or loading bpf/dataplane.c for node {self.node} failed: {exc}") from exc
        if pin_dir:
            try:
                self._check_layout(pin_dir, bool(existed), layout_file)
            except LayoutMismatch:
                self._abandon(pin_dir, existed)
                raise
            self.pin_dir = pin_dir
        if configure:
            self.set_config(seed=seed, clock_offset=clock_offset)
        return bool(existed)

    def _check_layout(self, pin_dir: str, reused: bool, layout_file: str | None) -> None:
        desc = describe(self.bpf, MAP_NAMES)
        mine = stamp(desc)
        t = self.table("layout")
        if not reused:
            t[t.Key(0)] = t.Leaf(mine)
            if layout_file:
                with open(layout_file, "w") as f:
                    json.dump(desc, f, indent=1, sort_keys=True)
            return
        pinned = t[t.Key(0)].value
        if pinned == mine:
            return
        if pinned == 0:
            why = "they carry no layout stamp (pinned by a version before stamps, or not by dataplane)"
        else:
            why = f"their layout stamp is {pinned:#018x}, this build's is {mine:#018x}"
            try:
                with open(layout_file or "") as f:
                    changed = changed_maps(json.load(f), desc)
                why += f"; changed: {'; '.join(changed)}"
            except (OSError, ValueError):
                pass
        raise LayoutMismatch(
            f"node {self.node}: the maps pinned under {pin_dir} do not have this build's layout: {why}. "
            f"Reusing them would misread every entry, so nothing was replaced. A change to "
            f"bpf/include/types.h, a map declaration or --map-size needs a new lab "
            f"(`dataplane down` and `up`: connections are lost); the old programs keep serving meanwhile.")

    def _abandon(self, pin_dir: str | None, existed: set) -> None:
        """Undo a load that will not be used: its programs freed, the pins it created removed."""
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
            self.fns = {}
        if pin_dir and os.path.isdir(pin_dir):
            for name in set(os.listdir(pin_dir)) - existed:
                os.unlink(os.path.join(pin_dir, name))
            if not existed:
                os.rmdir(pin_dir)

    def table(self, name: str):
        return self.bpf[name.encode()]

    def set_node_config(self, cfg) -> None:
        """Masquerade settings and the non-masquerade CIDRs (a render.NodeConfig)."""
        self.node_ip = cfg.node_ip
        t = self.table("config")
        cur = t[t.Key(0)]
        cur.cluster_net = be32(cfg.cluster_cidr.network_address)
        cur.cluster_mask = be32(cfg.cluster_cidr.netmask)
        cur.masquerade, cur.masq_link_local = int(cfg.masquerade), int(cfg.masq_link_local)
        cur.snat_lo, cur.snat_hi = cfg.snat_range
        t[t.Key(0)] = cur
        nm = self.table("nonmasq")
        # only the difference: a reload rewrites this over live traffic
        want = {(net.prefixlen, be32(net.network_address)) for net in cfg.non_masquerade}
        have = {(k.prefixlen, k.addr) for k in nm.keys()}
        for prefixlen, addr in have - want:
            k = nm.Key()
            k.prefixlen, k.addr = prefixlen, addr
            nm.pop(k, None)
        for prefixlen, addr in want - have:
            k = nm.Key()
            k.prefixlen, k.addr = prefixlen, addr
            nm[k] = nm.Leaf(1)
        self.set_config()

    def set_config(self, seed: int | None = None, clock_offset: int | None = None) -> None:
        t = self.table("config")
        cur = t[t.Key(0)]
        if seed is not None:
            cur.seed = seed
        if clock_offset is not None:
            cur.clock_offset = clock_offset
        cur.node_ip = be32(self.node_ip)
        cur.ct_syn, cur.ct_tcp = self.timeouts.syn, self.timeouts.tcp
        cur.ct_close, cur.ct_udp = self.timeouts.close, self.timeouts.udp
        cur.ct_close_wait = self.timeouts.close_wait
        t[t.Key(0)] = cur

    def trace_flag(self, on: bool | None = None) -> int:
        """Is a trace reader attached (trace_control)? `dataplane trace` sets it from its own
        process; this is for the agent, which clears it when no reader holds the lab's trace lock,
        and for tests. The whole value is written: nothing else shares the map."""
        t = self.table("trace_control")
        if on is not None:
            t[t.Key(0)] = t.Leaf(int(on))
        return t[t.Key(0)].value

    def now(self) -> int:
        """The dataplane clock: CLOCK_MONOTONIC (bpf_ktime_get_ns) plus the configured offset."""
        import time
        t = self.table("config")
        return time.monotonic_ns() + t[t.Key(0)].clock_offset

    def collect(self) -> int:
        """Delete expired conntrack entries (the programs ignore them; this frees their room)."""
        ct = self.table("conntrack")
        now = self.now()
        dead = [k for k, v in ct.items() if v.expires <= now]
        removed = 0
        for k in dead:
            # read again just before: a new flow may have taken the key since the listing
            try:
                if ct[k].expires > now:
                    continue
                del ct[k]
                removed += 1
            except KeyError:
                pass
        return removed

    def attach(self, ifname: str, ingress: str = "from_pod", egress: str = "to_pod") -> None:
        """Our programs on the interface's TC ingress and egress; where a filter of ours is already
        there (a previous build's), it is replaced in place: same priority and handle, new program,
        one netlink request, so every packet meets either the old program or the new one."""
        with netns.ipr(self.netns) as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            try:
                ipr.tc("add", "clsact", idx)
            except Exception as exc:
                if getattr(exc, "code", None) != 17:      # EEXIST: kept from the previous build
                    raise
            self.attached.append(ifname)
            for fn, parent in ((ingress, TC_INGRESS), (egress, TC_EGRESS)):
                f = self.fns[fn]
                found = _our_filter(ipr, idx, TC_PARENTS[parent])
                if found is None:
                    ipr.tc("add-filter", "bpf", idx, ":1", fd=f.fd, name=fn, parent=parent,
                           classid=1, direct_action=True)
                else:
                    prio, handle = found
                    ipr.tc("replace-filter", "bpf", idx, handle, fd=f.fd, name=fn, parent=parent, prio=prio,
                           classid=1, direct_action=True)

    def filters_present(self) -> list[str]:
        """Attached interfaces whose ingress or egress lost our filter (deleted behind our back)."""
        missing = []
        with netns.ipr(self.netns) as ipr:
            for ifname in self.attached:
                found = ipr.link_lookup(ifname=ifname)
                if not found:
                    continue
                for parent in TC_PARENTS.values():
                    try:
                        ours = _our_filter(ipr, found[0], parent)
                    except Exception:
                        ours = None
                    if ours is None:
                        missing.append(ifname)
                        break
        return missing

    def attach_cgroup(self, path: str | None) -> None:
        """The socket hooks on the node's cgroup (one the lab made: cgroups.py); None: the same
        cgroup again. Attached without BPF_F_ALLOW_MULTI, so a previous build's hooks there are
        replaced, not joined."""
        from bcc import BPF
        if path is not None:
            if self.cgroup_fd is not None:
                os.close(self.cgroup_fd)
            self.cgroup_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            self.cgroup_path = path
        for n, attach_type in SOCK_HOOKS.items():
            BPF.attach_func(self.fns[n], self.cgroup_fd, attach_type)

    def cgroup_hooks_present(self) -> bool:
        """Are our four socket hooks still on the node's cgroup (bpftool cgroup show)?"""
        import subprocess
        proc = subprocess.run(["bpftool", "-j", "cgroup", "show", self.cgroup_path], capture_output=True, text=True)
        if proc.returncode != 0:
            return True      # cannot tell (the cgroup is going away with the lab): leave it
        try:
            names = {p.get("name") for p in json.loads(proc.stdout or "[]")}
        except ValueError:
            return True
        # bpftool names a program from its BTF (whole), else as the kernel keeps it (15 characters)
        return all(n in names or n[:15] in names for n in SOCK_HOOKS)

    def config_drift(self, cfg) -> bool:
        """Does the config or nonmasq map differ from what `cfg` and this program's settings
        say (changed behind our back)?"""
        t = self.table("config")
        cur = t[t.Key(0)]
        want = {"node_ip": be32(cfg.node_ip), "cluster_net": be32(cfg.cluster_cidr.network_address),
                "cluster_mask": be32(cfg.cluster_cidr.netmask), "masquerade": int(cfg.masquerade),
                "masq_link_local": int(cfg.masq_link_local), "snat_lo": cfg.snat_range[0],
                "snat_hi": cfg.snat_range[1], "ct_syn": self.timeouts.syn, "ct_tcp": self.timeouts.tcp,
                "ct_close": self.timeouts.close, "ct_udp": self.timeouts.udp,
                "ct_close_wait": self.timeouts.close_wait}
        if any(getattr(cur, k) != v for k, v in want.items()):
            return True
        nets = {(net.prefixlen, be32(net.network_address)) for net in cfg.non_masquerade}
        return nets != {(k.prefixlen, k.addr) for k in self.table("nonmasq").keys()}

    def detach_cgroup(self) -> None:
        if self.cgroup_fd is None:
            return
        from bcc import BPF
        for n, attach_type in SOCK_HOOKS.items():
            try:
                BPF.detach_func(self.fns[n], self.cgroup_fd, attach_type)
            except Exception:
                pass   # the cgroup went first: the kernel detached them with it
        os.close(self.cgroup_fd)
        self.cgroup_fd = None

    def detach_all(self) -> None:
        if not self.attached or not netns.exists(self.netns):
            self.attached.clear()
            return
        with netns.ipr(self.netns) as ipr:
            for ifname in self.attached:
                found = ipr.link_lookup(ifname=ifname)
                if found:
                    try:
                        ipr.tc("del", "clsact", found[0])
                    except Exception:
                        pass   # already gone with its link
        self.attached.clear()

    def unpin(self) -> None:
        if self.pin_dir and os.path.isdir(self.pin_dir):
            for name in os.listdir(self.pin_dir):
                os.unlink(os.path.join(self.pin_dir, name))
            os.rmdir(self.pin_dir)
        self.pin_dir = None

    def release(self) -> None:
        """Let go of this build without touching the dataplane: hooks keep their programs (TC
        filters and cgroup attachments hold references), pins keep the maps."""
        if self.cgroup_fd is not None:
            os.close(self.cgroup_fd)
            self.cgroup_fd = None
        self.attached.clear()
        self.pin_dir = None
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
            self.fns = {}

    def close(self) -> None:
        self.detach_all()
        self.detach_cgroup()
        self.unpin()
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
            self.fns = {}

    def metrics(self) -> dict:
        from ...contract.consts import METRICS
        t = self.table("metrics")
        return {name: sum(t[t.Key(i)]) for i, name in enumerate(METRICS)}


def _our_filter(ipr, idx: int, parent: int):
    """(priority, handle) of the bpf filter on a clsact parent, or None."""
    for m in ipr.get_filters(idx, parent=parent):
        if m["handle"] and m.get_attr("TCA_KIND") == "bpf":
            return m["info"] >> 16, m["handle"]
    return None
