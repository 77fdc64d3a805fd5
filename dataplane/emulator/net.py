"""A simulated lab: the same LabPlan as the live lab, run in Python.

Namespaces route as the kernel does for this lab (connected and planned routes, longest prefix,
forwarding on or off, TTL, martian sources refused, ICMP network unreachable from routers), links
carry Ethernet frames, and the reference model runs where the BPF programs sit: from_pod on the
ingress of each node-side pod veth, to_pod on its egress. Servers answer like the netexec agent;
clients make the same requests as the client agent and report results in its format, so
`checks.evaluate` judges both labs alike.
"""
from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from ..backends.ebpf.render import Ids, render_config, render_node
from ..lab.plan import LabPlan, mac_for
from ..refmodel.datapath import Datapath, NodeState, Timeouts

MAX_EVENTS = 10_000
EPHEMERAL = (32768, 60999)


@dataclass
class Iface:
    ns: str
    name: str
    mac: str
    addrs: list = field(default_factory=list)     # IPv4Interface
    peer: tuple | None = None                     # (ns, ifname) of a veth peer
    segment: str | None = None                    # bridge segment id


@dataclass
class Socket:
    proto: int
    local: tuple          # (ip, port)
    remote: tuple         # (ip, port)
    answers: list = field(default_factory=list)
    error: str | None = None
    established: bool = False


@dataclass
class SimNS:
    name: str
    obj: str
    role: str
    ifaces: dict = field(default_factory=dict)     # name -> Iface
    routes: list = field(default_factory=list)     # (IPv4Network, gateway or None, ifname)
    forward: bool = False
    listeners: dict = field(default_factory=dict)  # (proto, port) -> server name
    sockets: dict = field(default_factory=dict)    # (proto, local port) -> Socket
    datapath: Datapath | None = None               # on node namespaces
    health: dict = field(default_factory=dict)     # health-check node port -> (service, count)

    def local_ips(self) -> set:
        return {a.ip for i in self.ifaces.values() for a in i.addrs}

    def route(self, dst: IPv4Address):
        best = None
        for net, gw, ifname in self.routes:
            if dst in net and (best is None or net.prefixlen > best[0].prefixlen):
                best = (net, gw, ifname)
        return best


class SimNet:
    def __init__(self, plan: LabPlan, table, seed: int, timeouts=None):
        self.plan, self.seed = plan, seed
        self.timeouts = Timeouts(**({k: getattr(timeouts, k) for k in ("syn", "tcp", "close", "udp")}
                                    if timeouts else {}))
        self.seen: dict = {}                       # what servers saw of the current request
        self.ids: dict = {}                        # node -> Ids, stable across updates
        self.recording: dict | None = None         # netns -> frames on pod eth0s, while capturing
        self.table = None
        self.rng = random.Random(seed)
        self.now = 10 ** 12                        # ns on the dataplane clock
        self.ns: dict[str, SimNS] = {}
        self.events: deque = deque()
        self.segments: dict[str, list] = {}        # segment id -> [(ns, ifname)]
        self._build(plan)
        self.program(table)

    # -- construction from the plan ----------------------------------------------------------------

    def _build(self, plan: LabPlan) -> None:
        for n in plan.namespaces:
            self.ns[n.name] = SimNS(n.name, n.obj, n.role)
        for v in plan.veths:
            self.ns[v.ns].ifaces[v.ifname] = Iface(v.ns, v.ifname, v.mac, peer=(v.peer_ns, v.peer_ifname))
            self.ns[v.peer_ns].ifaces[v.peer_ifname] = Iface(v.peer_ns, v.peer_ifname, v.peer_mac, peer=(v.ns, v.ifname))
        for b in plan.bridges:
            seg = f"{b.ns}/{b.ifname}"
            self.ns[b.ns].ifaces[b.ifname] = Iface(b.ns, b.ifname, mac_for(plan.lab, b.ns, b.ifname), segment=seg)
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

    def program(self, table) -> None:
        """Program every node's model datapath from the table (render, as the ebpf backend does)."""
        from ..policy import health_checks
        self.table = table
        for node in self.plan.spec.nodes:
            self.ns[self.plan.netns_of(node.name)].health = health_checks(table, node.name)
        for node in self.plan.spec.nodes:
            sim = self.ns[self.plan.netns_of(node.name)]
            maps = render_node(table, node.name, self.ids.setdefault(node.name, Ids()), node.ip)
            if sim.datapath is None:
                sim.datapath = Datapath(NodeState(maps=maps, node_ip=node.ip, seed=self.seed,
                                                  timeouts=self.timeouts,
                                                  config=render_config(self.plan.spec, node.name)))
            else:
                sim.datapath.s.maps = maps

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)

    def collect(self) -> int:
        """Garbage-collect expired flows on every node (as the live run does between steps)."""
        return sum(n.datapath.s.collect(self.now) for n in self.ns.values() if n.datapath is not None)

    def sync(self, table) -> list[str]:
        """An update: reprogram every node and flush the flows of endpoints that left."""
        from ..policy import stale_targets
        stale = stale_targets(self.table, table)
        self.program(table)
        out = []
        for node in self.plan.spec.nodes:
            flushed = self.ns[self.plan.netns_of(node.name)].datapath.s.flush(stale) if stale else 0
            if flushed:
                out.append(f"{node.name}: {flushed} conntrack/affinity entries of removed endpoints flushed")
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
        dst_mac = Ether(frame).dst if next_hop is None else None
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
        pkt = Ether(frame)
        if IP not in pkt:
            return
        sim = self.ns[ns]
        ip = pkt[IP]
        src, dst = IPv4Address(ip.src), IPv4Address(ip.dst)
        if src in sim.local_ips():
            return                            # martian source: the kernel refuses it on input
        if dst in sim.local_ips():
            self._local(sim, ip)
            return
        if not sim.forward:
            return                            # not a router: silently dropped
        if ip.ttl <= 1:
            return
        route = sim.route(dst)
        if route is None:
            self._icmp_error(sim, ifname, ip, code=0)   # network unreachable
            return
        ip.ttl -= 1
        del ip.chksum
        self._route_out(sim, route, dst, bytes(ip))

    def _route_out(self, sim: SimNS, route, dst: IPv4Address, ip_bytes: bytes) -> None:
        _, gw, out = route
        iface = sim.ifaces[out]
        nh = gw or dst
        peer_mac = self._neighbour_mac(sim.name, out, nh)
        self.transmit(sim.name, out, bytes(Ether(src=iface.mac, dst=peer_mac) / IP(ip_bytes)), nh)

    def _neighbour_mac(self, ns: str, ifname: str, nh: IPv4Address) -> str:
        iface = self.ns[ns].ifaces[ifname]
        if iface.peer is not None:
            return self.ns[iface.peer[0]].ifaces[iface.peer[1]].mac
        for mns, mif in self.segments.get(iface.segment, ()):
            if nh in {a.ip for a in self.ns[mns].ifaces[mif].addrs}:
                return self.ns[mns].ifaces[mif].mac
        return "ff:ff:ff:ff:ff:ff"

    def _icmp_error(self, sim: SimNS, in_ifname: str, ip, code: int) -> None:
        addrs = sim.ifaces[in_ifname].addrs or [a for i in sim.ifaces.values() for a in i.addrs]
        if not addrs:
            return
        quote = bytes(ip)[:28]
        self.originate(sim, IP(src=str(addrs[0].ip), dst=ip.src) / ICMP(type=3, code=code) / quote)

    def originate(self, sim: SimNS, ip) -> bool:
        """Send an IP packet from a namespace's own stack; False if it has no route (ENETUNREACH)."""
        dst = IPv4Address(ip.dst)
        if dst in sim.local_ips():
            self._local(sim, IP(bytes(ip)))
            return True
        route = sim.route(dst)
        if route is None:
            return False
        if ip.src is None or ip.src == "0.0.0.0":
            ip.src = str(self.source_for(sim, route))
        self._route_out(sim, route, dst, bytes(ip))
        return True

    @staticmethod
    def source_for(sim: SimNS, route) -> IPv4Address:
        iface = sim.ifaces[route[2]]
        if iface.addrs:
            return iface.addrs[0].ip
        return next(a.ip for i in sim.ifaces.values() for a in i.addrs)

    def run(self) -> None:
        for _ in range(MAX_EVENTS):
            if not self.events:
                return
            _, ns, ifname, frame = self.events.popleft()
            self._receive(ns, ifname, frame)
        raise RuntimeError("emulator: packet storm (more than 10000 frames for one request)")

    # -- transport: servers and client sockets -----------------------------------------------------------

    def _local(self, sim: SimNS, ip) -> None:
        proto = ip.proto
        if proto == 6:
            self._tcp_in(sim, ip)
        elif proto == 17:
            self._udp_in(sim, ip)
        elif proto == 1:
            self._icmp_in(sim, ip)

    def _reply(self, sim: SimNS, ip, l4) -> None:
        self.originate(sim, IP(src=ip.dst, dst=ip.src) / l4)

    def _tcp_in(self, sim: SimNS, ip) -> None:
        t = ip[TCP]
        sock = sim.sockets.get((6, t.dport))
        if sock is not None and (str(ip.src), t.sport) == (str(sock.remote[0]), sock.remote[1]):
            if t.flags & 0x04:                          # RST
                sock.error = "ECONNREFUSED"
            elif t.flags & 0x12 == 0x12 and not sock.established:   # SYN-ACK
                sock.established = True
                self._reply(sim, ip, TCP(sport=t.dport, dport=t.sport, flags="A", seq=t.ack, ack=t.seq + 1))
            return
        if t.flags & 0x01:                              # a FIN: the peer closes, so do we
            self._reply(sim, ip, TCP(sport=t.dport, dport=t.sport, flags="FA", seq=7001, ack=t.seq + 1))
            return
        if t.flags & 0x02 and not t.flags & 0x10:       # a SYN
            name = sim.listeners.get((6, t.dport)) or (sim.obj if t.dport in sim.health else None)
            if name is None:
                self._reply(sim, ip, TCP(sport=t.dport, dport=t.sport, flags="RA", ack=t.seq + 1))
                return
            self.seen[(str(ip.dst), t.dport, str(ip.src), t.sport)] = (name, f"{ip.src}:{t.sport}", sim, t.dport)
            self._reply(sim, ip, TCP(sport=t.dport, dport=t.sport, flags="SA", seq=7000, ack=t.seq + 1))

    def _udp_in(self, sim: SimNS, ip) -> None:
        u = ip[UDP]
        sock = sim.sockets.get((17, u.dport))
        if sock is not None and (str(ip.src), u.sport) == (str(sock.remote[0]), sock.remote[1]):
            sock.answers.append(bytes(u.payload).decode())
            return
        name = sim.listeners.get((17, u.dport))
        if name is None:
            self.originate(sim, IP(src=ip.dst, dst=ip.src) / ICMP(type=3, code=3) / bytes(ip)[:28])
            return
        req = bytes(u.payload).decode(errors="replace").strip()
        answer = name if req == "hostname" else f"{ip.src}:{u.sport}" if req == "clientip" else None
        if answer is not None:
            self._reply(sim, ip, UDP(sport=u.dport, dport=u.sport) / answer.encode())

    def _icmp_in(self, sim: SimNS, ip) -> None:
        icmp = ip[ICMP]
        if icmp.type != 3:
            return
        quote = bytes(icmp.payload)
        if len(quote) < 28:
            return
        proto = quote[9]
        src, dst = IPv4Address(quote[12:16]), IPv4Address(quote[16:20])
        sport, dport = struct.unpack("!HH", quote[20:24])
        sock = sim.sockets.get((proto, sport))
        if sock is None or (src, dst, dport) != (IPv4Address(sock.local[0]), IPv4Address(sock.remote[0]), sock.remote[1]):
            return                            # the quoted packet is not this socket's
        sock.error = {3: "ECONNREFUSED", 0: "ENETUNREACH", 1: "EHOSTUNREACH"}.get(icmp.code, "EHOSTUNREACH")

    # -- the client agent, emulated -------------------------------------------------------------------------

    def request(self, client_ns: str, dst: IPv4Address, port: int, protocol: str,
                source_port: int | None = None, http_get: str | None = None) -> dict:
        """One request as dataplane.agent.client makes it; the same result format."""
        self.seen = {}
        sim = self.ns[client_ns]
        self.now += 1_000_000     # 1 ms per request
        proto = 6 if protocol == "TCP" else 17
        sport = source_port or self.rng.randint(*EPHEMERAL)
        while (proto, sport) in sim.sockets:
            sport = self.rng.randint(*EPHEMERAL)
        route = sim.route(dst)
        if route is None and dst not in sim.local_ips():
            return _result("dropped", error="ENETUNREACH")
        src = dst if dst in sim.local_ips() else self.source_for(sim, route)
        sock = Socket(proto, (src, sport), (dst, port))
        sim.sockets[(proto, sport)] = sock
        try:
            if proto == 6:
                self.originate(sim, IP(src=str(src), dst=str(dst)) / TCP(sport=sport, dport=port, flags="S", seq=1000))
                self.run()
                if sock.established:
                    result = self._http(http_get) if http_get is not None else _result(
                        "reachable", *self._server_view())
                    # close as the client agent does, so conntrack sees the flow end (FIN)
                    self.originate(sim, IP(src=str(src), dst=str(dst)) /
                                   TCP(sport=sport, dport=port, flags="FA", seq=1001, ack=7001))
                    self.run()
                    return result
            else:
                for req in ("hostname", "clientip"):
                    self.originate(sim, IP(src=str(src), dst=str(dst)) / UDP(sport=sport, dport=port) / req.encode())
                    self.run()
                    if sock.error:
                        break
                if len(sock.answers) == 2:
                    return _result("reachable", sock.answers[0], sock.answers[1])
            if sock.error == "ECONNREFUSED":
                return _result("refused", error="ECONNREFUSED")
            return _result("dropped", error=sock.error or "timeout")
        finally:
            del sim.sockets[(proto, sport)]

    def _server_view(self):
        if len(self.seen) != 1:
            return None, None
        return next(iter(self.seen.values()))[:2]

    def _http(self, path: str) -> dict:
        """The answer of whatever accepted the connection: a health-check port or netexec."""
        import json
        name, clientip, sim, port = next(iter(self.seen.values()))
        if port in sim.health and (6, port) not in sim.listeners:
            key, count = sim.health[port]
            ns, _, svc = key.partition("/")
            status = 200 if count > 0 else 503
            body = json.dumps({"service": {"namespace": ns, "name": svc}, "localEndpoints": count,
                               "serviceProxyHealthy": True})
        else:
            from ..agent.netexec import answer
            text = answer(name, path, clientip.rsplit(":", 1))
            status, body = (200, text) if text is not None else (404, "not found")
        out = _result("reachable")
        out["status"], out["body"] = status, body
        return out


def _result(outcome, hostname=None, clientip=None, error=None) -> dict:
    return {"outcome": outcome, "hostname": hostname, "clientip": clientip, "error": error, "ms": 0.0}
