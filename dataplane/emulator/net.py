"""A simulated lab: the same LabPlan as the live lab, run in Python.

Namespaces route as the kernel does for this lab (connected and planned routes, longest prefix,
forwarding on or off, TTL, martian sources refused, ICMP network unreachable from routers), links
carry Ethernet frames, and the oracle runs where the BPF programs sit: from_pod on the
ingress of each node-side pod veth, to_pod on its egress. Links have MTUs: a host fragments a
datagram larger than its route's MTU, a router fragments what it must forward (or, with DF set,
answers ICMP fragmentation needed), and the receiver reassembles. Servers answer like the lab's netexec
server and clients ask like its client (lab/workload; here transport.py), so `judge.checks.evaluate`
judges both labs alike.
"""
from __future__ import annotations

import copy
import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from ..contract.render import Ids, render_config, render_node
from ..lab.plan import LabPlan, mac_for
from ..contract.limits import CtTimeouts
from ..oracle.datapath import Datapath, NodeState
from ..oracle.frontends import frontends
from .packets import ETH_P_IP, ICMP, Ip, ether, icmp, mac_str
from .transport import Transport

MAX_EVENTS = 10_000


@dataclass
class Iface:
    ns: str
    name: str
    mac: str
    addrs: list = field(default_factory=list)     # IPv4Interface
    peer: tuple | None = None                     # (ns, ifname) of a veth peer
    segment: str | None = None                    # bridge segment id
    mtu: int = 1500


@dataclass
class SimNS:
    name: str
    obj: str
    role: str
    ifaces: dict = field(default_factory=dict)     # name -> Iface
    routes: list = field(default_factory=list)     # (IPv4Network, gateway or None, ifname)
    forward: bool = False
    listeners: dict = field(default_factory=dict)  # (proto, port) -> server name
    sockets: dict = field(default_factory=dict)    # (proto, local port) -> transport.Socket (clients)
    conns: dict = field(default_factory=dict)      # (port, client ip, client port) -> transport.Conn
    closed: set = field(default_factory=set)       # connections' tuples closed both ways (TIME_WAIT)
    datapath: Datapath | None = None               # on node namespaces
    health: dict = field(default_factory=dict)     # health-check node port -> (service, count)
    pmtu: dict = field(default_factory=dict)       # destination -> path MTU learned from ICMP
    fragments: dict = field(default_factory=dict)  # (src, dst, id, proto) -> {offset: (bytes, more)}
    ip_id: itertools.count = field(default_factory=lambda: itertools.count(1))
    _local_ips: set | None = None

    def local_ips(self) -> set:
        if self._local_ips is None:       # addresses never change once the lab is built
            self._local_ips = {a.ip for i in self.ifaces.values() for a in i.addrs}
        return self._local_ips

    def route(self, dst: IPv4Address):
        best = None
        for net, gw, ifname in self.routes:
            if dst in net and (best is None or net.prefixlen > best[0].prefixlen):
                best = (net, gw, ifname)
        return best


class SimNet(Transport):
    def __init__(self, plan: LabPlan, table, seed: int, timeouts=None):
        self.plan, self.seed = plan, seed
        self.timeouts = timeouts or CtTimeouts()
        self.seen: dict = {}                       # what servers saw of the current request
        self.ids: dict = {}                        # node -> Ids, stable across updates
        self.flushed: dict = {}                    # node -> entries the last update forgot
        self.cookies = 0                           # sockets opened: each one's cookie
        self.recording: dict | None = None         # netns -> frames on pod eth0s, while capturing
        self.table = None
        self.rng = random.Random(seed)
        self.now = 10 ** 12                        # ns on the dataplane clock
        self.ns: dict[str, SimNS] = {}
        self.events: deque = deque()
        self.timers: list = []                     # heap of (ns, n, callable): answers sent later
        self._timer_n = itertools.count()
        self.segments: dict[str, list] = {}        # segment id -> [(ns, ifname)]
        self._build(plan)
        self.program(table)

    # -- construction from the plan ----------------------------------------------------------------

    def _build(self, plan: LabPlan) -> None:
        for n in plan.namespaces:
            self.ns[n.name] = SimNS(n.name, n.obj, n.role)
        mtu = plan.spec.mtu
        for v in plan.veths:
            self.ns[v.ns].ifaces[v.ifname] = Iface(v.ns, v.ifname, v.mac, peer=(v.peer_ns, v.peer_ifname),
                                                   mtu=v.mtu or mtu)
            self.ns[v.peer_ns].ifaces[v.peer_ifname] = Iface(v.peer_ns, v.peer_ifname, v.peer_mac,
                                                             peer=(v.ns, v.ifname), mtu=v.peer_mtu or mtu)
        for b in plan.bridges:
            seg = f"{b.ns}/{b.ifname}"
            self.ns[b.ns].ifaces[b.ifname] = Iface(b.ns, b.ifname, mac_for(plan.lab, b.ns, b.ifname), segment=seg,
                                                   mtu=b.mtu or mtu)
            members = [(b.ns, b.ifname)]
            for port in b.ports:
                peer = self.ns[b.ns].ifaces[port].peer
                member = self.ns[peer[0]].ifaces[peer[1]]
                member.segment, member.peer = seg, None
                members.append(peer)
                del self.ns[b.ns].ifaces[port]     # a bridge port is not an L3 interface
            self.segments[seg] = members
        for a in plan.addresses:
            iface = IPv4Interface(a.cidr)
            self.ns[a.ns].ifaces[a.ifname].addrs.append(iface)
            if iface.network.prefixlen < 32:
                self.ns[a.ns].routes.append((iface.network, None, a.ifname))
        for r in plan.routes:
            dst = IPv4Network("0.0.0.0/0" if r.dst == "default" else r.dst)
            self.ns[r.ns].routes.append((dst, IPv4Address(r.gateway) if r.gateway else None, r.ifname))
        for ns, key, value in plan.sysctls:
            if key == "net.ipv4.ip_forward":
                self.ns[ns].forward = value == "1"
        spec = plan.spec
        for obj in (*spec.pods, *spec.nodes, *spec.hosts):
            sim = self.ns[plan.netns_of(obj.name)]
            for p in obj.ports:
                sim.listeners[(6 if p.protocol == "TCP" else 17, p.port)] = obj.name

    def program(self, table, update=None) -> None:
        """Program every node's oracle datapath from the table (its frontends); `update(state,
        frontends)` applies an update to a node already programmed. The table is rendered for the
        maps first, only to refuse what the eBPF maps cannot hold as the ebpf backend does."""
        from ..spec.policy import health_checks
        # every node rendered first, as the ebpf backend does: a table that cannot be written
        # changes nothing
        ids = {node.name: copy.deepcopy(self.ids.get(node.name, Ids())) for node in self.plan.spec.nodes}
        for node in self.plan.spec.nodes:
            render_node(table, node.name, ids[node.name], node.ip)
        self.ids.update(ids)
        self.table = table
        for node in self.plan.spec.nodes:
            self.ns[self.plan.netns_of(node.name)].health = health_checks(table, node.name)
        for node in self.plan.spec.nodes:
            sim = self.ns[self.plan.netns_of(node.name)]
            wanted = frontends(table, node.name, node.ip)
            if sim.datapath is None:
                sim.datapath = Datapath(NodeState(frontends=wanted, node_ip=node.ip, seed=self.seed,
                                                  timeouts=self.timeouts,
                                                  config=render_config(self.plan.spec, node.name),
                                                  node_sockets=lambda *t, sim=sim: self.socket_holds(sim, *t)))
            elif update is not None:
                self.flushed[node.name] = update(sim.datapath.s, wanted)
            else:
                sim.datapath.s.frontends = wanted

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)

    def collect(self) -> int:
        """Garbage-collect expired flows on every node (as the live run does between steps)."""
        return sum(n.datapath.s.collect(self.now) for n in self.ns.values() if n.datapath is not None)

    def sync(self, table) -> list[str]:
        """An update: reprogram every node and flush the flows of endpoints that left."""
        from ..spec.policy import flow_keep
        keep = flow_keep(table)
        self.program(table, update=lambda state, wanted: state.sync(wanted, keep))
        out = []
        for node in self.plan.spec.nodes:
            flushed = self.flushed.pop(node.name, 0)
            if flushed:
                out.append(f"{node.name}: {flushed} conntrack/affinity entries flushed")
        return out

    # -- moving frames -------------------------------------------------------------------------------

    def _hooks(self, ns: str, ifname: str):
        """(datapath, ingress hook, egress hook) where the BPF programs sit, else None."""
        sim = self.ns[ns]
        if sim.role != "node" or sim.datapath is None:
            return None
        if ifname.startswith("v-"):
            return sim.datapath, sim.datapath.from_pod, sim.datapath.to_pod
        if ifname == "eth0":
            return sim.datapath, sim.datapath.from_netdev, sim.datapath.to_netdev
        return None

    def transmit(self, ns: str, ifname: str, frame: bytes, next_hop: IPv4Address | None) -> None:
        """Send a frame out of (ns, ifname) toward next_hop (None: to the frame's destination MAC,
        for frames a hook sends straight back); egress hooks run here."""
        hooks = self._hooks(ns, ifname)
        if hooks is not None:
            r = hooks[2](frame, self.now)
            if r.verdict == "drop":
                return
            frame = r.data
        iface = self.ns[ns].ifaces[ifname]
        self._record(ns, frame)
        if iface.peer is not None:
            self._record(iface.peer[0], frame)
            self.events.append(("rx", iface.peer[0], iface.peer[1], frame))
            return
        dst_mac = mac_str(frame[0:6]) if next_hop is None else None
        for mns, mif in self.segments.get(iface.segment, ()):
            member = self.ns[mns].ifaces[mif]
            if (mns, mif) == (ns, ifname):
                continue
            if (next_hop is not None and next_hop in {a.ip for a in member.addrs}) or member.mac == dst_mac:
                self.events.append(("rx", mns, mif, frame))
                return
        # nobody on the segment has that address: ARP fails, the frame is lost

    def _record(self, ns: str, frame: bytes) -> None:
        """A capture on a pod's eth0 sees what the pod sends and receives."""
        if self.recording is not None and self.ns[ns].role == "pod":
            self.recording.setdefault(ns, []).append(bytes(frame))

    def _receive(self, ns: str, ifname: str, frame: bytes) -> None:
        hooks = self._hooks(ns, ifname)
        if hooks is not None:
            r = hooks[1](frame, self.now)
            if r.verdict == "drop":
                return
            if r.verdict == "redirect":      # back out the same link, through its egress hook
                self.transmit(ns, ifname, r.data, None)
                return
            frame = r.data
        if len(frame) < 34 or int.from_bytes(frame[12:14], "big") != ETH_P_IP:
            return
        ip = Ip.parse(frame[14:])
        if ip is None:
            return
        sim = self.ns[ns]
        locals_ = sim.local_ips()
        if ip.src in locals_:
            return                            # martian source: the kernel refuses it on input
        if ip.dst in locals_:
            whole = self._reassemble(sim, ip)
            if whole is not None:
                self._local(sim, whole)
            return
        if not sim.forward:
            return                            # not a router: silently dropped
        if ip.ttl <= 1:
            return
        route = sim.route(ip.dst)
        if route is None:
            self._icmp_error(sim, ifname, ip, 3, 0)       # network unreachable
            return
        ip.ttl -= 1
        out_mtu = sim.ifaces[route[2]].mtu
        if len(ip) > out_mtu and ip.df:
            # too big to forward and not to be fragmented: fragmentation needed, with our MTU
            self._icmp_error(sim, ifname, ip, 3, 4, rest=out_mtu)
            return
        self._route_out(sim, route, ip.dst, ip)

    def _route_out(self, sim: SimNS, route, dst: IPv4Address, ip: Ip) -> None:
        _, gw, out = route
        iface = sim.ifaces[out]
        nh = gw or dst
        peer_mac = self._neighbour_mac(sim.name, out, nh)
        pieces = [ip] if len(ip) <= iface.mtu else ip.fragments(iface.mtu)
        for piece in pieces:
            self.transmit(sim.name, out, ether(iface.mac, peer_mac, piece.build()), nh)

    def _neighbour_mac(self, ns: str, ifname: str, nh: IPv4Address) -> str:
        iface = self.ns[ns].ifaces[ifname]
        if iface.peer is not None:
            return self.ns[iface.peer[0]].ifaces[iface.peer[1]].mac
        for mns, mif in self.segments.get(iface.segment, ()):
            if nh in {a.ip for a in self.ns[mns].ifaces[mif].addrs}:
                return self.ns[mns].ifaces[mif].mac
        return "ff:ff:ff:ff:ff:ff"

    def _icmp_error(self, sim: SimNS, in_ifname: str, ip: Ip, type_: int, code: int, rest: int = 0) -> None:
        """An ICMP error about `ip` (as received), from this namespace's address on the link it
        came in by (RFC 1812: a router's own address), quoting its header and 8 bytes."""
        addrs = sim.ifaces[in_ifname].addrs or [a for i in sim.ifaces.values() for a in i.addrs]
        if not addrs:
            return
        quote = ip.build()[:28]
        self.originate(sim, Ip(addrs[0].ip, ip.src, ICMP, icmp(type_, code, rest, quote)))

    def _reassemble(self, sim: SimNS, ip: Ip) -> Ip | None:
        """A packet for this namespace, whole: itself, or once its last fragment arrived (None
        until then)."""
        if not ip.fragment:
            return ip
        key = (ip.src, ip.dst, ip.ident, ip.proto)
        parts = sim.fragments.setdefault(key, {})
        parts[ip.offset] = (ip.payload, ip.mf)
        data, at = b"", 0
        while at in parts:
            chunk, more = parts[at]
            data += chunk
            at += len(chunk)
            if not more:
                del sim.fragments[key]
                return Ip(ip.src, ip.dst, ip.proto, data, ip.ttl, ip.ident)
        return None

    def path_mtu(self, sim: SimNS, dst: IPv4Address) -> int:
        route = sim.route(dst)
        mtu = sim.ifaces[route[2]].mtu if route else 65535
        return min(mtu, sim.pmtu.get(dst, mtu))

    def originate(self, sim: SimNS, ip: Ip) -> bool:
        """Send an IP packet from a namespace's own stack; False if it has no route (ENETUNREACH).
        A datagram larger than the route's MTU leaves in fragments (TCP never is: its segments
        fit the path). `ip.src` None: the route's source address."""
        ip.ident = next(sim.ip_id) & 0xFFFF
        if ip.dst in sim.local_ips():
            self._local(sim, ip if ip.src is not None else Ip(ip.dst, ip.dst, ip.proto, ip.payload))
            return True
        route = sim.route(ip.dst)
        if route is None:
            return False
        if ip.src is None:
            ip.src = self.source_for(sim, route)
        self._route_out(sim, route, ip.dst, ip)
        return True

    @staticmethod
    def source_for(sim: SimNS, route) -> IPv4Address:
        iface = sim.ifaces[route[2]]
        if iface.addrs:
            return iface.addrs[0].ip
        return next(a.ip for i in sim.ifaces.values() for a in i.addrs)

    def schedule(self, at: int, action) -> None:
        """Run `action` when the clock reaches `at` (ns): a server that answers later."""
        heapq.heappush(self.timers, (at, next(self._timer_n), action))

    def run(self, until: int | None = None, done=lambda: False) -> None:
        """Deliver frames until none is left; then, while `done()` is false, move the clock to the
        next timer due by `until` (ns) and fire it."""
        for _ in range(MAX_EVENTS):
            if self.events:
                _, ns, ifname, frame = self.events.popleft()
                self._receive(ns, ifname, frame)
                continue
            if done() or not self.timers or until is None or self.timers[0][0] > until:
                return
            at, _, action = heapq.heappop(self.timers)
            self.now = max(self.now, at)
            action()
        raise RuntimeError("emulator: packet storm (more than 10000 frames for one request)")
