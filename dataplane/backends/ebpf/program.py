"""One node's BPF programs: compile with bcc, attach with TC (pyroute2), pin maps, detach.

Each lab node gets its own compiled instance, so its maps (services, conntrack, affinity) are its
own, as on a real node. Programs attach to the node side of every pod veth: from_pod on TC ingress,
to_pod on TC egress. Maps are pinned under /sys/fs/bpf/dp-<lab>/<node>/ for inspection.
"""
from __future__ import annotations

import ctypes
import os
import socket
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from ...errors import DataplaneError
from ...lab import netns
from ...contract.limits import CtTimeouts, MapSizes
from .source import assemble

TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"
PIN_ROOT = "/sys/fs/bpf"
MAP_NAMES = ("services", "backends", "conntrack", "affinity", "affinity_match", "nosnat", "frags", "sock_revnat",
             "metrics", "config", "nonmasq", "lb_sources")
ENTRY_POINTS = ("from_pod", "to_pod", "from_netdev", "to_netdev")
# The node's socket hooks (cgroup/connect4 and friends): entry point -> its attach type
# (BPF_CGROUP_INET4_CONNECT, _UDP4_SENDMSG, _UDP4_RECVMSG, _INET4_GETPEERNAME).
SOCK_HOOKS = {"sock_connect4": 10, "sock_sendmsg4": 14, "sock_recvmsg4": 19, "sock_getpeername4": 29}



def be32(ip) -> int:
    """An IPv4 address as the u32 whose memory holds it in network order (what BPF compares)."""
    return struct.unpack("=I", IPv4Address(ip).packed)[0]


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
    pin_dir: str | None = None

    def load(self, seed: int, clock_offset: int = 0) -> None:
        from bcc import BPF
        try:
            self.bpf = BPF(text=assemble("dataplane.c", self.sizes.defines()).encode(), cflags=["-w"])
            self.fns = {n: self.bpf.load_func(n.encode(), BPF.SCHED_CLS) for n in ENTRY_POINTS}
            for n, attach_type in SOCK_HOOKS.items():
                self.fns[n] = self.bpf.load_func(n.encode(), BPF.CGROUP_SOCK_ADDR, attach_type=attach_type)
        except Exception as exc:
            raise DataplaneError(f"compiling or loading bpf/dataplane.c for node {self.node} failed: {exc}") from exc
        self.set_config(seed=seed, clock_offset=clock_offset)

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
        for k in list(nm.keys()):
            nm.pop(k, None)
        for net in cfg.non_masquerade:
            k = nm.Key()
            k.prefixlen, k.addr = net.prefixlen, be32(net.network_address)
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
        with netns.ipr(self.netns) as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            ipr.tc("add", "clsact", idx)
            self.attached.append(ifname)
            for fn, parent in ((ingress, TC_INGRESS), (egress, TC_EGRESS)):
                f = self.fns[fn]
                ipr.tc("add-filter", "bpf", idx, ":1", fd=f.fd, name=fn, parent=parent,
                       classid=1, direct_action=True)

    def attach_cgroup(self, path: str) -> None:
        """The socket hooks on the node's cgroup (one the lab made: cgroups.py)."""
        from bcc import BPF
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        self.cgroup_fd = fd
        for n, attach_type in SOCK_HOOKS.items():
            BPF.attach_func(self.fns[n], fd, attach_type)

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

    def pin(self, directory: str) -> None:
        from bcc.libbcc import lib
        os.makedirs(directory, exist_ok=True)
        self.pin_dir = directory
        for name in MAP_NAMES:
            path = os.path.join(directory, name)
            if lib.bpf_obj_pin(self.table(name).map_fd, path.encode()) != 0:
                raise DataplaneError(f"pinning map {name} at {path} failed: {os.strerror(ctypes.get_errno())}")

    def unpin(self) -> None:
        if self.pin_dir and os.path.isdir(self.pin_dir):
            for name in os.listdir(self.pin_dir):
                os.unlink(os.path.join(self.pin_dir, name))
            os.rmdir(self.pin_dir)
        self.pin_dir = None

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
