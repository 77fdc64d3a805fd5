"""The reference model of the pod-veth datapath: frame bytes in, verdict and frame bytes out.

Written from the specification in docs/datapath.md, not from the C: it parses with `struct`,
recomputes checksums in full (the C updates them incrementally), and keeps its state in plain
dicts. It is the oracle the BPF programs are checked against (tests/bpf), and the packet engine of
the emulator (`--backend model`). Every result says why, step by step.
"""
from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network

from ..contract.consts import (CT_DEFAULT_CLOSE, CT_DEFAULT_CLOSE_WAIT, CT_DEFAULT_SYN, CT_DEFAULT_TCP,
                               CT_DEFAULT_UDP, SCOPE_EXTERNAL, SCOPE_POD, SVC_F_AFFINITY, SVC_F_LOCAL_ONLY,
                               SVC_F_MASQ, SVC_F_POD_SCOPE, SVC_F_SRC_RANGES)
from ..contract.render import NodeMaps, SvcKey

ETH_HLEN = 14
ETH_P_IP = 0x0800
TCP, UDP, ICMP = 6, 17, 1
ICMP_ERRORS = (3, 4, 11, 12)   # destination unreachable, source quench, time exceeded, parameter problem
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
NS = 1_000_000_000
SERVICE, REPLY, SNAT_OUT, SNAT_IN, NO_SNAT = 1, 2, 3, 4, 5   # conntrack directions
SNAT_RETRIES = 32
LINK_LOCAL = IPv4Network("169.254.0.0/16")


@dataclass(frozen=True)
class CtKey:
    saddr: IPv4Address
    daddr: IPv4Address
    sport: int
    dport: int
    proto: int
    dir: int


@dataclass
class CtEntry:
    expires: int
    nat_addr: IPv4Address
    nat_port: int
    hairpin: bool = False
    snat_addr: IPv4Address = IPv4Address(0)
    snat_port: int = 0
    backend_id: int = 0
    svc_id: int = 0
    seen_reply: bool = False     # TCP: a packet in the reply direction was seen
    fin_orig: bool = False       # TCP: the original direction (client, masqueraded pod) sent FIN
    fin_reply: bool = False      # TCP: the reply direction (backend, remote) sent FIN
    rst: bool = False            # TCP: a RST was seen
    egress: bool = False         # reverse NAT to the node's own address: egress hooks only

    @property
    def closed(self) -> bool:
        """Both directions sent their FIN, or either reset."""
        return self.rst or (self.fin_orig and self.fin_reply)

    def share_state(self, other: "CtEntry") -> None:
        self.seen_reply, self.fin_orig, self.fin_reply = other.seen_reply, other.fin_orig, other.fin_reply
        self.rst, self.expires = other.rst, other.expires


@dataclass
class Timeouts:
    """Conntrack lifetimes in seconds (the dataplane's config)."""
    syn: int = CT_DEFAULT_SYN
    tcp: int = CT_DEFAULT_TCP
    close_wait: int = CT_DEFAULT_CLOSE_WAIT
    close: int = CT_DEFAULT_CLOSE
    udp: int = CT_DEFAULT_UDP


@dataclass
class NodeState:
    """One node's tables, as the BPF maps of that node hold them."""
    maps: NodeMaps
    node_ip: IPv4Address
    seed: int
    conntrack: dict = field(default_factory=dict)   # CtKey -> CtEntry
    affinity: dict = field(default_factory=dict)    # (client, svc_id) -> (last_used, backend_id)
    metrics: Counter = field(default_factory=Counter)
    timeouts: Timeouts = field(default_factory=Timeouts)
    config: object = None                           # render.NodeConfig: masquerade settings
    nosnat: dict = field(default_factory=dict)      # reply tuple (CtKey, dir NO_SNAT) -> expires
    frags: dict = field(default_factory=dict)       # (saddr, daddr, IP id, proto) -> first fragment's ports
    # Does a socket of the node's own hold remote:rport <-> node IP:port (proto, remote, rport,
    # port)? What the BPF programs ask the kernel; the emulator answers from its node stack.
    node_sockets: object = None

    def collect(self, now: int) -> int:
        """Forget expired flows (what the agent's garbage collection does to the BPF map)."""
        dead = [k for k, e in self.conntrack.items() if e.expires <= now]
        for k in dead:
            del self.conntrack[k]
        return len(dead)


    def sync(self, maps, keep) -> int:
        """An update, as the ebpf backend's sync_node: the new tables, then the flows the new
        table no longer lets live (policy.FlowKeep) and the affinities no longer eligible
        forgotten. Entries forgotten."""
        self.maps = maps
        return self.flush(keep) + self.forget_affinities()

    def flush(self, keep) -> int:
        """Forget each flow to a frontend that `keep` (policy.FlowKeep) no longer lets live: its
        SERVICE entry, the reply entry paired with it, and its masquerade mapping if it was
        masqueraded to the node."""
        doomed = set()
        for k, e in self.conntrack.items():
            if k.dir == SERVICE:
                frontend, backend, client = (k.daddr, k.dport), (e.nat_addr, e.nat_port), (k.saddr, k.sport)
            elif k.dir == REPLY or (k.dir == SNAT_IN and e.hairpin):   # the other half, should SERVICE be gone
                frontend, backend = (e.nat_addr, e.nat_port), (k.saddr, k.sport)
                client = (e.snat_addr, e.snat_port) if e.hairpin else (k.daddr, k.dport)
            else:
                continue
            if keep.keeps(k.proto, frontend[0], frontend[1], backend[0], backend[1], self.node_ip):
                continue
            doomed.add(CtKey(client[0], frontend[0], client[1], frontend[1], k.proto, SERVICE))
            if e.hairpin:
                mapping = (e.snat_addr, e.snat_port) if k.dir == SERVICE else (k.daddr, k.dport)
                doomed.add(CtKey(backend[0], mapping[0], backend[1], mapping[1], k.proto, SNAT_IN))
                continue
            doomed.add(CtKey(backend[0], client[0], backend[1], client[1], k.proto, REPLY))
            if e.egress:
                out_key = CtKey(client[0], backend[0], client[1], backend[1], k.proto, SNAT_OUT)
                out = self.conntrack.get(out_key)
                if out is not None:
                    doomed |= {out_key, CtKey(backend[0], out.nat_addr, backend[1], out.nat_port, k.proto, SNAT_IN)}
        return sum(self.conntrack.pop(k, None) is not None for k in doomed)

    def eligible(self, svc_key) -> set:
        """The backend ids in the slots of a service port (its slot-0 key): those eligible now."""
        head = self.maps.services.get(svc_key)
        if head is None:
            return set()
        slots = (self.maps.services.get(SvcKey(svc_key.vip, svc_key.port, svc_key.proto, i, svc_key.scope))
                 for i in range(1, head.count + 1))
        return {v.backend_id for v in slots if v is not None}

    def forget_affinities(self) -> int:
        """Forget remembered backends no longer eligible for their service port (or of service
        ports gone, or without affinity now)."""
        heads = {v.svc_id: k for k, v in self.maps.services.items() if k.slot == 0 and v.flags & SVC_F_AFFINITY}
        gone = [k for k, (_, bid) in self.affinity.items()
                if k[1] not in heads or bid not in self.eligible(heads[k[1]])]
        for k in gone:
            del self.affinity[k]
        return len(gone)


@dataclass
class Result:
    verdict: str                 # pass | drop | redirect (back out the interface it came in on)
    data: bytes
    reason: str | None = None    # the counter this packet incremented
    why: list = field(default_factory=list)


# -- checksums ---------------------------------------------------------------------------------

def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def csum_update(check: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3 for a field that cannot be summed in full (a quoted, truncated header)."""
    s = ~check & 0xFFFF
    for i in range(0, len(old), 2):
        s += (~struct.unpack("!H", old[i:i + 2])[0] & 0xFFFF) + struct.unpack("!H", new[i:i + 2])[0]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# -- the flow hash of the specification ----------------------------------------------------------

def _mix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def flow_hash(saddr: bytes, daddr: bytes, sport: bytes, dport: bytes, proto: int, seed: int) -> int:
    """Each field as its bytes sit in the packet, read as a little-endian word."""
    le = lambda b: int.from_bytes(b, "little")  # noqa: E731
    h = _mix32(seed ^ le(saddr))
    h = _mix32(h ^ le(daddr))
    h = _mix32(h ^ (le(sport) | le(dport) << 16))
    return _mix32(h ^ proto)


# -- parsing -------------------------------------------------------------------------------------

@dataclass
class Packet:
    frame: bytearray
    ihl: int
    total: int
    proto: int
    saddr: IPv4Address
    daddr: IPv4Address
    fragment: bool
    later_fragment: bool
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    icmp_type: int | None = None
    ident: int = 0                 # the IPv4 identification: ties fragments together
    has_ports: bool = False        # ports known: parsed, or a later fragment's from its first
    orig: tuple = ()               # (saddr, daddr, sport, dport) as parsed: for incremental checksums

    @property
    def l4(self) -> int:
        return ETH_HLEN + self.ihl

    @property
    def options(self) -> bool:
        return self.ihl > 20


def parse(frame: bytes):
    """(Packet, None), (None, None) for a frame that is not IPv4, or (None, reason) if malformed."""
    if len(frame) < ETH_HLEN or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
        return None, None
    if len(frame) < ETH_HLEN + 20:
        return None, "DROP_BAD_IHL"
    vihl = frame[ETH_HLEN]
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20:
        return None, "DROP_BAD_IHL"
    total = struct.unpack("!H", frame[ETH_HLEN + 2:ETH_HLEN + 4])[0]
    if total < ihl or ETH_HLEN + total > len(frame):
        return None, "DROP_BAD_IHL" if ETH_HLEN + ihl > len(frame) else "DROP_BAD_LEN"
    frag = struct.unpack("!H", frame[ETH_HLEN + 6:ETH_HLEN + 8])[0]
    p = Packet(bytearray(frame), ihl, total, frame[ETH_HLEN + 9],
               IPv4Address(frame[ETH_HLEN + 12:ETH_HLEN + 16]), IPv4Address(frame[ETH_HLEN + 16:ETH_HLEN + 20]),
               fragment=bool(frag & 0x3FFF), later_fragment=bool(frag & 0x1FFF),
               ident=struct.unpack("!H", frame[ETH_HLEN + 4:ETH_HLEN + 6])[0])
    p.orig = (p.saddr, p.daddr, 0, 0)
    if p.later_fragment:
        return p, None
    l4len, o = total - ihl, p.l4
    need = {TCP: 20, UDP: 8, ICMP: 8}.get(p.proto, 0)
    if l4len < need:
        return None, "DROP_TRUNCATED_L4"
    if p.proto in (TCP, UDP):
        p.sport, p.dport = struct.unpack("!HH", frame[o:o + 4])
        p.has_ports, p.orig = True, (p.saddr, p.daddr, p.sport, p.dport)
        if p.proto == TCP:
            p.tcp_flags = frame[o + 13]
    elif p.proto == ICMP:
        p.icmp_type = frame[o]
    return p, None


# -- rewriting (full checksum recomputation) -------------------------------------------------------

def _finish(p: Packet) -> bytes:
    f = p.frame
    ip = ETH_HLEN
    f[ip + 12:ip + 16] = p.saddr.packed
    f[ip + 16:ip + 20] = p.daddr.packed
    f[ip + 10:ip + 12] = b"\0\0"
    f[ip + 10:ip + 12] = struct.pack("!H", csum(bytes(f[ip:ip + p.ihl])))
    if p.later_fragment:
        return bytes(f)                # no L4 header here: its first fragment carried the rest
    if p.fragment and p.proto in (TCP, UDP):
        # the L4 checksum covers the whole datagram, which no single fragment holds: updated for
        # the changed addresses and ports (RFC 1624), not recomputed
        o = p.l4
        f[o:o + 4] = struct.pack("!HH", p.sport, p.dport)
        off = o + (16 if p.proto == TCP else 6)
        old = struct.unpack("!H", f[off:off + 2])[0]
        if p.proto == UDP and old == 0:
            return bytes(f)
        osa, oda, osp, odp = p.orig
        c = csum_update(old, osa.packed + oda.packed + struct.pack("!HH", osp, odp),
                        p.saddr.packed + p.daddr.packed + struct.pack("!HH", p.sport, p.dport))
        if p.proto == UDP and c == 0:
            c = 0xFFFF
        f[off:off + 2] = struct.pack("!H", c)
        return bytes(f)
    if p.proto in (TCP, UDP):
        o, end = p.l4, ETH_HLEN + p.total
        f[o:o + 4] = struct.pack("!HH", p.sport, p.dport)
        off = o + (16 if p.proto == TCP else 6)
        if p.proto == UDP and f[off:off + 2] == b"\0\0":
            return bytes(f)            # UDP without checksum stays without
        f[off:off + 2] = b"\0\0"
        pseudo = p.saddr.packed + p.daddr.packed + struct.pack("!BBH", 0, p.proto, end - o)
        c = csum(pseudo + bytes(f[o:end]))
        if p.proto == UDP and c == 0:
            c = 0xFFFF
        f[off:off + 2] = struct.pack("!H", c)
    return bytes(f)


def _swap_macs(frame: bytearray) -> None:
    frame[0:12] = frame[6:12] + frame[0:6]


# -- the datapath ----------------------------------------------------------------------------------

class PodHooks:
    """from_pod / to_pod of one node. `now` is ns on the dataplane clock."""

    def __init__(self, state: NodeState):
        self.s = state

    def _count(self, name: str) -> None:
        self.s.metrics[name] += 1

    def _svc(self, vip, port, proto, slot=0, scope=SCOPE_EXTERNAL):
        return self.s.maps.services.get(SvcKey(vip, port, proto, slot, scope))

    def _is_vip(self, addr) -> bool:
        return self._svc(addr, 0, 0) is not None

    def _result(self, verdict, data, reason, why) -> Result:
        self._count(reason)
        return Result(verdict, bytes(data), reason, why)

    def from_pod(self, frame: bytes, now: int) -> Result:
        return self._handle(frame, now, service_hook=True)

    def to_pod(self, frame: bytes, now: int) -> Result:
        return self._handle(frame, now, service_hook=False)

    def _lookup(self, key: CtKey, now: int):
        e = self.s.conntrack.get(key)
        if e is not None and e.expires <= now:
            del self.s.conntrack[key]
            return None
        return e

    def _lifetime(self, proto: int, e: CtEntry) -> int:
        """Closed: close. Never answered: syn. Closed one way only: close_wait. Else tcp."""
        t = self.s.timeouts
        if proto != TCP:
            return t.udp * NS
        if e.closed:
            return t.close * NS
        if not e.seen_reply:
            return t.syn * NS
        return (t.close_wait if e.fin_orig or e.fin_reply else t.tcp) * NS

    @staticmethod
    def _peer(key: CtKey, e: CtEntry) -> CtKey:
        """The other direction of the flow an entry belongs to."""
        if key.dir == SERVICE and e.hairpin:   # client -> VIP; peer: its mapping, backend -> node IP:port
            return CtKey(e.nat_addr, e.snat_addr, e.nat_port, e.snat_port, key.proto, SNAT_IN)
        if key.dir == SNAT_IN and e.hairpin:   # the mapping; peer: client -> VIP
            return CtKey(e.snat_addr, e.nat_addr, e.snat_port, e.nat_port, key.proto, SERVICE)
        if key.dir == SNAT_OUT:      # pod -> remote; peer: remote -> node IP:port
            return CtKey(key.daddr, e.nat_addr, key.dport, e.nat_port, key.proto, SNAT_IN)
        if key.dir == SNAT_IN:       # remote -> node IP:port; peer: pod -> remote
            return CtKey(e.nat_addr, key.saddr, e.nat_port, key.sport, key.proto, SNAT_OUT)
        if key.dir == SERVICE:
            return CtKey(e.nat_addr, key.saddr, e.nat_port, key.sport, key.proto, REPLY)
        return CtKey(key.daddr, e.nat_addr, key.dport, e.nat_port, key.proto, SERVICE)

    def _update(self, key: CtKey, e: CtEntry, p: Packet, now: int) -> None:
        """A packet of the flow passed in direction key.dir: both entries take the new state."""
        if p.proto == TCP:
            reply = key.dir in (REPLY, SNAT_IN)
            if p.tcp_flags & RST:
                e.rst = True
            else:
                e.seen_reply |= reply
                if p.tcp_flags & FIN:
                    if reply:
                        e.fin_reply = True
                    else:
                        e.fin_orig = True
        e.expires = now + self._lifetime(p.proto, e)
        peer_key = self._peer(key, e)
        peer = self.s.conntrack.get(peer_key)
        if peer is not None:
            if self._peer(peer_key, peer) == key:    # this flow's other half, not a reused key
                peer.share_state(e)
            return
        # the other half is gone (a full table evicted it): written again from this one
        self.s.conntrack[peer_key] = self._peer_entry(key, e)
        self._count("M_CT_RESTORED")

    @staticmethod
    def _peer_entry(key: CtKey, e: CtEntry) -> CtEntry:
        """The other direction's entry, rebuilt from an entry and its own key."""
        pe = replace(e)
        if key.dir == SERVICE or (key.dir == SNAT_IN and not e.hairpin):
            pe.nat_addr, pe.nat_port = key.daddr, key.dport
            if e.hairpin:
                pe.snat_addr, pe.snat_port = key.saddr, key.sport
        else:
            pe.nat_addr, pe.nat_port = key.saddr, key.sport
            if e.hairpin:
                pe.snat_addr, pe.snat_port = key.daddr, key.dport
        if not e.hairpin:
            pe.snat_addr, pe.snat_port = IPv4Address(0), 0
        return pe

    def _forget(self, key: CtKey, e: CtEntry) -> None:
        """A flow ends: this entry, and its other half if the key there is still this flow's."""
        peer_key = self._peer(key, e)
        peer = self.s.conntrack.get(peer_key)
        if peer is not None and self._peer(peer_key, peer) == key:
            del self.s.conntrack[peer_key]
        self.s.conntrack.pop(key, None)

    def _flow(self, p: Packet, direction: int, now: int, why: list):
        """(key, live entry or None) of the flow this packet starts or continues; a bare SYN on a
        closed flow's tuple ends that flow, so a new connection is chosen afresh."""
        key = CtKey(p.saddr, p.daddr, p.sport, p.dport, p.proto, direction)
        e = self._lookup(key, now)
        if e is not None and e.closed and self._bare_syn(p):
            self._forget(key, e)
            why.append("a new SYN on the tuple of a closed flow: a fresh flow")
            return key, None
        return key, e

    def _reply(self, p: Packet, direction: int, now: int, why: list):
        """(key, live entry or None) of the flow this packet answers (REPLY or SNAT_IN). A bare
        SYN answers nothing; a SYN-ACK on a closed flow's tuple answers a new connection that
        reuses it, so the old flow is forgotten rather than allowed to translate it."""
        key = CtKey(p.saddr, p.daddr, p.sport, p.dport, p.proto, direction)
        if self._bare_syn(p):
            return key, None
        e = self._lookup(key, now)
        if e is not None and e.closed and self._syn_ack(p):
            self._forget(key, e)
            why.append("a SYN-ACK on the tuple of a closed flow: a new connection, not a reply of ours")
            return key, None
        return key, e

    def _release_reused(self, p: Packet, now: int, why: list) -> None:
        """A bare SYN no flow of ours handles, whose reply tuple a closed flow's REPLY entry still
        holds: forget that flow, so it cannot rewrite the new connection's answers."""
        if not self._bare_syn(p):
            return
        key = CtKey(p.daddr, p.saddr, p.dport, p.sport, p.proto, REPLY)
        e = self._lookup(key, now)
        if e is not None and e.closed:
            self._forget(key, e)
            why.append(f"a new connection reuses the reply tuple of a closed flow to {e.nat_addr}: flow forgotten")

    @staticmethod
    def _bare_syn(p: Packet) -> bool:
        return p.proto == TCP and bool(p.tcp_flags & SYN) and not p.tcp_flags & ACK

    @staticmethod
    def _syn_ack(p: Packet) -> bool:
        return p.proto == TCP and bool(p.tcp_flags & SYN) and bool(p.tcp_flags & ACK)

    def _handle(self, frame: bytes, now: int, service_hook: bool) -> Result:
        why = []
        p, bad = parse(frame)
        if bad:
            return self._result("drop", frame, bad, [f"malformed IPv4: {bad}"])
        if p is None:
            return self._result("pass", frame, "M_PASS", ["not IPv4"])
        self._frag_ports(p, why)
        vip_dst = service_hook and self._is_vip(p.daddr)
        if p.proto == ICMP:
            if p.icmp_type in ICMP_ERRORS:
                r = self._icmp_error(p, now, why, egress=not service_hook, may_bounce=service_hook)
                if r is not None:
                    return r
            if vip_dst:
                return self._result("drop", frame, "DROP_UNKNOWN_L4", [f"ICMP to VIP {p.daddr}"])
            return self._result("pass", frame, "M_PASS", ["ICMP not about a flow of ours"])
        if p.proto not in (TCP, UDP):
            if vip_dst:
                return self._result("drop", frame, "DROP_UNKNOWN_L4", [f"protocol {p.proto} to VIP {p.daddr}"])
            return self._result("pass", frame, "M_PASS", [f"protocol {p.proto}"])
        if not p.has_ports:
            if vip_dst:
                return self._result("drop", frame, "DROP_FRAGMENT", ["later fragment to a VIP, its first unseen"])
            return self._result("pass", frame, "M_PASS", ["later fragment, its first unseen, not to a VIP"])
        unsupported = "DROP_IP_OPTIONS" if p.options else None

        key, e = self._reply(p, REPLY, now, why)
        if e is not None and not (service_hook and e.egress):
            if unsupported:
                return self._result("drop", frame, unsupported, ["reply of a NATed flow, unsupported header"])
            self._update(key, e, p, now)
            why.append(f"reply of a flow to {e.nat_addr}:{e.nat_port}: source becomes the VIP")
            p.saddr, p.sport = e.nat_addr, e.nat_port
            if e.hairpin:
                why.append(f"hairpin: destination back to the client {e.snat_addr}:{e.snat_port}")
                p.daddr, p.dport = e.snat_addr, e.snat_port
            return self._out(p, e.hairpin, "M_REVNAT", why)
        # a NodePort flow masqueraded to a backend on this node
        key, e = self._reply(p, SNAT_IN, now, why) if service_hook else self._flow(p, SNAT_OUT, now, why)
        if e is not None:
            if unsupported:
                return self._result("drop", frame, unsupported, ["masqueraded flow, unsupported header"])
            self._update(key, e, p, now)
            if e.hairpin:
                p.saddr, p.sport, p.daddr, p.dport = e.nat_addr, e.nat_port, e.snat_addr, e.snat_port
                return self._out(p, True, "M_REVNAT", why + [
                    f"reply of a hairpin flow: from the VIP {e.nat_addr}:{e.nat_port} back to the client"])
            if service_hook:
                p.daddr, p.dport = e.nat_addr, e.nat_port
                return self._out(p, False, "M_UNSNAT", [f"reply to a masqueraded NodePort flow: to {e.nat_addr}"])
            p.saddr, p.sport = e.nat_addr, e.nat_port
            return self._out(p, False, "M_SNAT", [f"NodePort flow masqueraded as {e.nat_addr}:{e.nat_port}"])
        if not service_hook:
            return self._result("pass", frame, "M_PASS", ["no flow of ours"])
        if self._orphan(p):
            return self._result("drop", frame, "DROP_CT_LOST", why + ["to a NAT port of the node no mapping holds"])

        key, e = self._flow(p, SERVICE, now, why)
        if e is not None:
            if unsupported:
                return self._result("drop", frame, unsupported, ["packet of a NATed flow, unsupported header"])
            self._update(key, e, p, now)
            self._heal_mapping(p, e, why)
            why.append(f"known flow to backend {e.nat_addr}:{e.nat_port}")
            return self._out(self._dnat(p, e), e.hairpin, "M_DNAT", why)

        # a pod's entry for an external frontend first (externalTrafficPolicy Local: every
        # endpoint, kube-proxy's short-circuit), then the one everybody uses
        svc = self._svc(p.daddr, p.dport, p.proto, scope=SCOPE_POD) or self._svc(p.daddr, p.dport, p.proto)
        if svc is None:
            if not self._is_vip(p.daddr):
                self._release_reused(p, now, why)
                return self._result("pass", frame, "M_PASS", why + ["not service traffic"])
            if unsupported:
                return self._result("drop", frame, unsupported, ["VIP, unsupported header"])
            if p.later_fragment:
                return self._result("drop", frame, "DROP_FRAGMENT", why + ["a later fragment cannot be rejected"])
            return self._reject(p, "REJECT_PORT_UNSERVED", [f"VIP {p.daddr} serves no {p.dport}/{p.proto}"])
        if unsupported:
            return self._result("drop", frame, unsupported, ["service traffic with an unsupported header"])
        if p.later_fragment:
            return self._result("drop", frame, "DROP_FRAGMENT", why + ["a later fragment never starts a flow"])
        return self._new_flow(p, svc, now, why)

    def _frag_ports(self, p: Packet, why: list) -> None:
        """A fragmented TCP/UDP datagram: its first fragment's ports remembered by (source,
        destination, IP id, protocol) as seen at this hook; a later fragment takes them."""
        if not p.fragment or p.proto not in (TCP, UDP):
            return
        key = (p.saddr, p.daddr, p.ident, p.proto)
        if not p.later_fragment:
            self.s.frags[key] = (p.sport, p.dport)
            return
        ports = self.s.frags.get(key)
        if ports is not None:
            p.sport, p.dport = ports
            p.has_ports = True
            why.append(f"a later fragment of {p.saddr}:{p.sport} -> {p.daddr}:{p.dport} (ports from its first)")

    def _choose(self, svc, client, h: int, vip, port: int, proto: int, now: int, why: list) -> int:
        """A backend for a service port: with affinity, the client's remembered backend if used
        within the timeout and still eligible here, else the slot hash h picks; with affinity the
        choice is remembered. For packets and sockets alike. The backend id, 0 if none."""
        bid = 0
        scope = SCOPE_POD if svc.flags & SVC_F_POD_SCOPE else SCOPE_EXTERNAL
        if svc.flags & SVC_F_AFFINITY:
            hit = self.s.affinity.get((client, svc.svc_id))
            if hit and now - hit[0] <= svc.affinity_timeout * NS and \
                    hit[1] in self.s.eligible(SvcKey(vip, port, proto, 0, scope)):
                bid = hit[1]
                self._count("M_AFFINITY_HIT")
                why.append(f"session affinity: client {client} keeps backend {bid}")
            elif hit:
                why.append(f"session affinity: backend {hit[1]} expired or no longer eligible here")
        if not bid:
            slot = h % svc.count + 1
            sv = self._svc(vip, port, proto, slot, scope)
            bid = sv.backend_id if sv else 0
            why.append(f"hash {h:#010x} picks slot {slot} of {svc.count}: backend {bid}")
        if svc.flags & SVC_F_AFFINITY:
            self.s.affinity[(client, svc.svc_id)] = (now, bid)
        return bid

    def _select(self, p: Packet, svc, now: int, why: list) -> int:
        f, ip, o = p.frame, ETH_HLEN, p.l4
        h = flow_hash(f[ip + 12:ip + 16], f[ip + 16:ip + 20], f[o:o + 2], f[o + 2:o + 4], p.proto, self.s.seed)
        return self._choose(svc, p.saddr, h, p.daddr, p.dport, p.proto, now, why)

    def _flow_backend(self, p: Packet, svc, now: int, why: list):
        """A new flow to a frontend: (backend id, backend), or the Result that ends it here."""
        if p.proto == TCP and not self._bare_syn(p):
            return self._result("drop", p.frame, "DROP_CT_LOST",
                                ["TCP to a frontend, not a SYN, and no flow: a lost flow (expired, evicted or flushed)"])
        if svc.flags & SVC_F_SRC_RANGES and not any(
                sid == svc.svc_id and p.saddr in net for sid, net in self.s.maps.lb_sources):
            return self._result("drop", p.frame, "DROP_SOURCE_RANGE",
                                [f"{p.saddr} is outside the LoadBalancer's source ranges"])
        if svc.count == 0:
            if svc.flags & SVC_F_LOCAL_ONLY:
                return self._result("drop", p.frame, "DROP_NO_LOCAL_ENDPOINT",
                                    ["traffic policy Local: no endpoint on this node"])
            return self._reject(p, "REJECT_NO_ENDPOINTS", ["service has no eligible endpoint"])
        bid = self._select(p, svc, now, why)
        be = self.s.maps.backends.get(bid)
        if be is None:
            return self._result("drop", p.frame, "DROP_NO_BACKEND", why + ["no such backend"])
        return bid, be

    def _new_flow(self, p: Packet, svc, now: int, why: list) -> Result:
        chosen = self._flow_backend(p, svc, now, why)
        if isinstance(chosen, Result):
            return chosen
        bid, be = chosen
        life = now + self._lifetime(p.proto, CtEntry(0, be.addr, be.port))
        fwd = CtEntry(life, be.addr, be.port, backend_id=bid, svc_id=svc.svc_id)
        rev = CtEntry(life, p.daddr, p.dport, backend_id=bid, svc_id=svc.svc_id)
        reply_dst = p.saddr
        if be.addr == p.saddr:
            # hairpin: masqueraded as the node with an allocated port; the reply entry is the
            # mapping's SNAT_IN entry, restoring the frontend and the client
            rev = replace(rev, hairpin=True, snat_addr=p.saddr, snat_port=p.sport)
            port = self._claim(self._after_dnat(p, be), now, why, p.sport, rev)
            if port is None:
                return self._result("drop", p.frame, "DROP_SNAT_EXHAUSTED", why + ["no free port for the hairpin"])
            fwd = replace(fwd, hairpin=True, snat_addr=self.s.node_ip, snat_port=port)
            self._count("M_HAIRPIN")
            why.append(f"hairpin: the client is its own backend, masqueraded as the node {self.s.node_ip}:{port}")
        else:
            if svc.flags & SVC_F_MASQ:
                port = self._map(self._after_dnat(p, be), now, why)
                if port is None:
                    return self._result("drop", p.frame, "DROP_SNAT_EXHAUSTED", why + ["no free port to masquerade"])
                why.append("externalTrafficPolicy Cluster: masqueraded to the node IP on the way to the backend")
                fwd = replace(fwd, egress=True, snat_addr=self.s.node_ip, snat_port=port)
                rev = replace(rev, egress=True)
            elif p.daddr == self.s.node_ip:
                fwd, rev = replace(fwd, egress=True), replace(rev, egress=True)
                why.append("this node's own node port: the reply is translated on egress")
            self.s.conntrack[CtKey(be.addr, p.saddr, be.port, p.sport, p.proto, REPLY)] = rev
        self.s.conntrack[CtKey(p.saddr, p.daddr, p.sport, p.dport, p.proto, SERVICE)] = fwd
        why.append(f"DNAT {p.daddr}:{p.dport} -> {be.addr}:{be.port}")
        return self._out(self._dnat(p, fwd), fwd.hairpin, "M_DNAT_NEW", why)

    def _heal_mapping(self, p: Packet, e: CtEntry, why: list) -> None:
        """A packet of a flow masqueraded on its way (its SERVICE entry holds the node IP:port):
        the mapping's SNAT_OUT half, if the table lost it, written again (its SNAT_IN too if that
        key is free, not if another flow holds it now)."""
        if not e.egress or e.hairpin or not e.snat_port:
            return
        out_key = CtKey(p.saddr, e.nat_addr, p.sport, e.nat_port, p.proto, SNAT_OUT)
        if out_key in self.s.conntrack:
            return
        in_key = CtKey(e.nat_addr, e.snat_addr, e.nat_port, e.snat_port, p.proto, SNAT_IN)
        held = self.s.conntrack.get(in_key)
        state = dict(seen_reply=e.seen_reply, fin_orig=e.fin_orig, fin_reply=e.fin_reply, rst=e.rst)
        if held is not None:
            if self._peer(in_key, held) != out_key:
                return
        else:
            self.s.conntrack[in_key] = CtEntry(e.expires, p.saddr, p.sport, **state)
        self.s.conntrack[out_key] = CtEntry(e.expires, e.snat_addr, e.snat_port, **state)
        self._count("M_CT_RESTORED")
        why.append(f"the flow's mapping {e.snat_addr}:{e.snat_port} was lost: written again")

    def _orphan(self, p: Packet) -> bool:
        """A packet to the node's address on a NAT port no mapping and no node socket holds."""
        c = self.s.config
        return (c is not None and p.daddr == c.node_ip and p.proto in (TCP, UDP)
                and c.snat_range[0] <= p.dport <= c.snat_range[1]
                and not self._socket_holds(p.proto, p.saddr, p.sport, p.dport))

    @staticmethod
    def _after_dnat(p: Packet, be) -> Packet:
        """The flow as it will look after DNAT (client -> backend), for the allocator."""
        after = Packet(p.frame, p.ihl, p.total, p.proto, p.saddr, be.addr, p.fragment, p.later_fragment,
                       p.sport, be.port, p.tcp_flags)
        # the hash reads the frame: show it the flow as it will be after DNAT
        f = bytearray(p.frame)
        f[ETH_HLEN + 16:ETH_HLEN + 20] = be.addr.packed
        f[p.l4 + 2:p.l4 + 4] = struct.pack("!H", be.port)
        after.frame = f
        return after

    def _dnat(self, p: Packet, e: CtEntry) -> Packet:
        p.daddr, p.dport = e.nat_addr, e.nat_port
        if e.hairpin:
            p.saddr, p.sport = e.snat_addr, e.snat_port
        return p

    def _out(self, p: Packet, bounce: bool, reason: str, why: list) -> Result:
        data = bytearray(_finish(p))
        if bounce:
            _swap_macs(data)
            why.append("sent straight back to the pod it came from")
            return self._result("redirect", data, reason, why)
        return self._result("pass", data, reason, why)

    def _reject(self, p: Packet, reason: str, why: list) -> Result:
        if p.options:
            return self._result("drop", p.frame, "DROP_REJECT_FAILED", why + ["cannot quote a header with options"])
        quote = bytes(p.frame[ETH_HLEN:ETH_HLEN + 28])
        icmp = bytearray(struct.pack("!BBHI", 3, 3, 0, 0) + quote)
        icmp[2:4] = struct.pack("!H", csum(bytes(icmp)))
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, ICMP, 0,
                                   p.daddr.packed, p.saddr.packed))
        ip[10:12] = struct.pack("!H", csum(bytes(ip)))
        frame = bytearray(p.frame[:ETH_HLEN]) + ip + icmp
        _swap_macs(frame)
        return self._result("redirect", frame, reason,
                            why + ["rejected: ICMP port unreachable from the VIP, back to the client"])

    @staticmethod
    def _quoted(p: Packet):
        """The packet an ICMP error quotes, if it is an IPv4 header without options and TCP or UDP
        with the 8 bytes RFC 792 requires: (quote, src, dst, sport, dport), else None."""
        at = p.l4 + 8
        if p.options or ETH_HLEN + p.total < at + 28:
            return None
        inner = bytes(p.frame[at:at + 28])
        if inner[0] != 0x45 or inner[9] not in (TCP, UDP):
            return None
        if struct.unpack("!H", inner[6:8])[0] & 0x1FFF:
            return None                 # a later fragment quoted: no ports in its first 8 bytes
        return (inner, IPv4Address(inner[12:16]), IPv4Address(inner[16:20]),
                *struct.unpack("!HH", inner[20:24]))

    @staticmethod
    def _requote(p: Packet, inner: bytes, new: bytearray) -> bytearray:
        """Write a rewritten quote back: inner IP checksum in full, inner UDP checksum per RFC 1624
        (the quote is truncated; 0 stays 0), the ICMP checksum in full, then the outer header as
        p now says (addresses and IP checksum)."""
        f, o = p.frame, p.l4
        new[10:12] = b"\0\0"
        new[10:12] = struct.pack("!H", csum(bytes(new[:20])))
        if inner[9] == UDP and inner[26:28] != b"\0\0":
            c = csum_update(struct.unpack("!H", inner[26:28])[0], inner[12:24], bytes(new[12:24])) or 0xFFFF
            new[26:28] = struct.pack("!H", c)
        f[o + 8:o + 36] = new
        f[o + 2:o + 4] = b"\0\0"
        f[o + 2:o + 4] = struct.pack("!H", csum(bytes(f[o:ETH_HLEN + p.total])))
        ip = ETH_HLEN
        f[ip + 12:ip + 16], f[ip + 16:ip + 20] = p.saddr.packed, p.daddr.packed
        f[ip + 10:ip + 12] = b"\0\0"
        f[ip + 10:ip + 12] = struct.pack("!H", csum(bytes(f[ip:ip + p.ihl])))
        return f

    def _icmp_error(self, p: Packet, now: int, why: list, egress: bool, may_bounce: bool = True):
        """An ICMP error about one of our flows (docs/datapath.md, "ICMP errors"): the quote
        becomes what its sender sent, the error goes to that sender; the outer source becomes the
        frontend when the translated end sent it (on egress when that is the node's address). A
        Result, or None if the error is not about a flow of ours."""
        q = self._quoted(p)
        if q is None:
            return None
        inner, isrc, idst, isport, idport = q
        proto = inner[9]
        src, dst, sport, dport = isrc, idst, isport, idport
        osrc, odst, found, bounce = p.saddr, p.daddr, False, False

        def reversed_key(direction):
            return self._lookup(CtKey(dst, src, dport, sport, proto, direction), now)

        e = reversed_key(SNAT_IN)                   # forward: the masquerade, then the DNAT
        if e is not None and e.hairpin:
            if osrc == dst:
                osrc = e.nat_addr
            src, sport, dst, dport = e.snat_addr, e.snat_port, e.nat_addr, e.nat_port
            odst, found, bounce = e.snat_addr, True, True
            why.append(f"about a hairpin flow: quotes {src}:{sport} -> {dst}:{dport}, back to the pod")
        elif e is not None:
            src, sport, odst, found = e.nat_addr, e.nat_port, e.nat_addr, True
            why.append(f"about a masqueraded packet: back to {src}:{sport}")
        if not bounce:
            e = reversed_key(REPLY)
            if e is not None:
                if osrc == dst and not e.egress:
                    osrc = e.nat_addr
                    why.append("sent by the backend itself: from the frontend")
                dst, dport, found = e.nat_addr, e.nat_port, True
                why.append(f"about a packet to a backend: quotes the frontend {dst}:{dport}")
        if not found:                                # reverse: a translated reply
            e = reversed_key(SERVICE)
            if e is not None and not e.hairpin:
                client, cport = dst, dport
                src, sport, odst, found = e.nat_addr, e.nat_port, e.nat_addr, True
                o = self._lookup(CtKey(client, e.nat_addr, cport, e.nat_port, proto, SNAT_OUT), now)
                if o is not None:
                    dst, dport = o.nat_addr, o.nat_port
                why.append(f"about a reply to {client}:{cport}: to the backend {src}:{sport} that sent it")
            else:
                e = reversed_key(SNAT_OUT)
                if e is not None:
                    dst, dport, found = e.nat_addr, e.nat_port, True
                    why.append(f"about a reply to a masqueraded flow: quotes {dst}:{dport}")
        if found:
            new = bytearray(inner)
            new[12:16], new[16:20] = src.packed, dst.packed
            new[20:24] = struct.pack("!HH", sport, dport)
            p.saddr, p.daddr = osrc, odst
            p.frame = self._requote(p, inner, new)
            inner = bytes(new)
        if egress and not bounce:
            found |= self._icmp_source(p, inner, now, why)
        if not found:
            return None
        if bounce and may_bounce:
            _swap_macs(p.frame)
            return self._result("redirect", p.frame, "M_ICMP_REVNAT", why)
        return self._result("pass", p.frame, "M_ICMP_REVNAT", why)

    def _icmp_source(self, p: Packet, inner: bytes, now: int, why: list) -> bool:
        """On egress: the error came from the translated end of a flow whose frontend (or
        masquerade address) is the node's own: from that address now."""
        proto = inner[9]
        src, dst = IPv4Address(inner[12:16]), IPv4Address(inner[16:20])
        sport, dport = struct.unpack("!HH", inner[20:24])
        e = self._lookup(CtKey(src, dst, sport, dport, proto, SERVICE), now)
        if e is None or e.hairpin:
            e = self._lookup(CtKey(src, dst, sport, dport, proto, SNAT_IN), now)
            if e is not None and e.hairpin:
                e = None
        if e is None or p.saddr != e.nat_addr:
            return False
        p.saddr = dst
        ip = ETH_HLEN
        f = p.frame
        f[ip + 12:ip + 16] = p.saddr.packed
        f[ip + 10:ip + 12] = b"\0\0"
        f[ip + 10:ip + 12] = struct.pack("!H", csum(bytes(f[ip:ip + p.ihl])))
        why.append(f"sent by the end behind {dst}: from {dst}")
        return True


# -- the uplink: egress masquerade (docs/datapath.md, "The node uplink") -----------------------

class Datapath(PodHooks):
    """All four hooks of one node, on one state: from_pod / to_pod (PodHooks) and the uplink's
    to_netdev / from_netdev (egress masquerade)."""

    def _masq_pair(self, pod: IPv4Address, remote: IPv4Address) -> bool:
        c = self.s.config
        if c is None or not c.masquerade or pod not in c.cluster_cidr:
            return False
        if not c.masq_link_local and remote in LINK_LOCAL:
            return False
        return not any(remote in net for net in c.non_masquerade)

    def _masquerade(self, p: Packet, now: int) -> bool:
        """Only the start of a connection is masqueraded: a TCP SYN, or a UDP datagram that does
        not answer one that came in from outside."""
        if not self._masq_pair(p.saddr, p.daddr):
            return False
        if p.proto == TCP:
            return self._bare_syn(p)
        marker = CtKey(p.saddr, p.daddr, p.sport, p.dport, p.proto, NO_SNAT)
        expires = self.s.nosnat.get(marker)
        if expires is not None and expires <= now:
            del self.s.nosnat[marker]           # an expired marker is no marker
            expires = None
        return expires is None

    def _candidate(self, p: Packet, attempt: int, keep: int):
        """Attempt 0: the flow's own port, if in the range (else none); then hashed ports."""
        lo, hi = self.s.config.snat_range
        if attempt == 0:
            return keep if lo <= keep <= hi else None
        f, ip, o = p.frame, ETH_HLEN, p.l4
        h = flow_hash(f[ip + 12:ip + 16], f[ip + 16:ip + 20], f[o:o + 2], f[o + 2:o + 4], p.proto, self.s.seed)
        return lo + _mix32(h ^ attempt) % (hi - lo + 1)

    def _socket_holds(self, proto: int, remote, rport: int, port: int) -> bool:
        return bool(self.s.node_sockets and self.s.node_sockets(proto, remote, rport, port))

    def _claim(self, p: Packet, now: int, why: list, keep: int, entry: CtEntry):
        """The node-IP allocator: a port for flow p (source -> remote as it leaves), whose SNAT_IN
        entry (remote -> node IP:port) `entry` becomes. Free: no live SNAT_IN entry holds it and no
        node socket does. The port, or None if every try failed."""
        node_ip = self.s.config.node_ip
        for attempt in range(SNAT_RETRIES + 1):
            port = self._candidate(p, attempt, keep)
            if port is None:
                continue
            ki = CtKey(p.daddr, node_ip, p.dport, port, p.proto, SNAT_IN)
            self._lookup(ki, now)                       # an expired mapping is free again
            if ki in self.s.conntrack:
                continue
            if self._socket_holds(p.proto, p.daddr, p.dport, port):
                why.append(f"port {port} is held by a socket of the node's own")
                continue
            break
        else:
            return None
        if attempt and self._candidate(p, 0, keep) is not None:
            self._count("M_SNAT_PORT_MOVED")
            why.append(f"source port {keep} taken for this destination: port {port} (try {attempt})")
        elif attempt:
            why.append(f"source port {keep} is outside the NAT range: port {port} (try {attempt})")
        entry.expires = now + self._lifetime(p.proto, CtEntry(0, node_ip, port))
        self.s.conntrack[ki] = entry
        return port

    def _map(self, p: Packet, now: int, why: list):
        """A masquerade mapping for flow p: its SNAT_IN entry claimed, its SNAT_OUT entry; the port
        or None. A mapping an earlier flow on this tuple left goes first, with its SNAT_IN."""
        out_key = CtKey(p.saddr, p.daddr, p.sport, p.dport, p.proto, SNAT_OUT)
        old = self.s.conntrack.get(out_key)
        if old is not None:
            self._forget(out_key, old)
            why.append(f"the mapping an earlier flow on this tuple left ({old.nat_addr}:{old.nat_port}) goes")
        node_ip = self.s.config.node_ip
        port = self._claim(p, now, why, p.sport, CtEntry(0, p.saddr, p.sport))
        if port is None:
            return None
        life = self.s.conntrack[CtKey(p.daddr, node_ip, p.dport, port, p.proto, SNAT_IN)].expires
        self.s.conntrack[CtKey(p.saddr, p.daddr, p.sport, p.dport, p.proto, SNAT_OUT)] = CtEntry(life, node_ip, port)
        return port

    def to_netdev(self, frame: bytes, now: int) -> Result:
        p, bad = parse(frame)
        if bad:
            return self._result("drop", frame, bad, [f"malformed IPv4: {bad}"])
        why = []
        if p is not None:
            self._frag_ports(p, why)
        if p is not None and p.proto == ICMP and p.icmp_type in ICMP_ERRORS and self.s.config is not None:
            r = self._icmp_error(p, now, [], egress=True, may_bounce=False)
            return r or self._result("pass", frame, "M_PASS", ["ICMP error not about a flow of ours"])
        if p is None or p.proto not in (TCP, UDP) or not p.has_ports or self.s.config is None:
            return self._result("pass", frame, "M_PASS", ["not masquerade traffic"])
        key, e = self._reply(p, REPLY, now, [])
        if e is not None and e.egress:
            if p.options:
                return self._result("drop", frame, "DROP_IP_OPTIONS", ["NodePort reply, unsupported header"])
            self._update(key, e, p, now)
            p.saddr, p.sport = e.nat_addr, e.nat_port
            return self._out(p, False, "M_REVNAT", [f"reply of a NodePort flow: from {e.nat_addr}:{e.nat_port}"])
        key, e = self._flow(p, SNAT_OUT, now, why)
        unsupported = "DROP_IP_OPTIONS" if p.options else None
        if e is not None:
            if unsupported:
                return self._result("drop", frame, unsupported, ["masqueraded flow, unsupported header"])
            self._update(key, e, p, now)
            p.saddr, p.sport = e.nat_addr, e.nat_port
            return self._out(p, False, "M_SNAT", why + [f"masqueraded flow: source {e.nat_addr}:{e.nat_port}"])
        if p.saddr == self.s.config.node_ip and self._is_vip(p.daddr):
            svc = self._svc(p.daddr, p.dport, p.proto)
            if svc is not None and svc.count == 0 and svc.flags & SVC_F_LOCAL_ONLY:
                return self._result("drop", frame, "DROP_NO_LOCAL_ENDPOINT",
                                    why + ["a node process to a cluster IP with no local endpoint"])
        if not self._masquerade(p, now):
            return self._result("pass", frame, "M_PASS", why + ["no masquerade for this source/destination"])
        if unsupported:
            return self._result("drop", frame, unsupported, ["to be masqueraded, unsupported header"])
        if p.later_fragment:
            return self._result("drop", frame, "DROP_FRAGMENT", why + ["a later fragment of an unmapped flow"])
        node_ip = self.s.config.node_ip
        port = self._map(p, now, why)
        if port is None:
            return self._result("drop", frame, "DROP_SNAT_EXHAUSTED",
                                why + [f"no free port on {node_ip} for {p.daddr}:{p.dport}"])
        why.append(f"masquerade {p.saddr}:{p.sport} as {node_ip}:{port}")
        p.saddr, p.sport = node_ip, port
        return self._out(p, False, "M_SNAT_NEW", why)

    def from_netdev(self, frame: bytes, now: int) -> Result:
        p, bad = parse(frame)
        if bad:
            return self._result("drop", frame, bad, [f"malformed IPv4: {bad}"])
        if p is None:
            return self._result("pass", frame, "M_PASS", ["not IPv4"])
        why = []
        self._frag_ports(p, why)
        if p.proto == ICMP and p.icmp_type in ICMP_ERRORS:
            r = self._icmp_error(p, now, [], egress=False, may_bounce=False)
            return r or self._result("pass", frame, "M_PASS", ["ICMP error not about a flow of ours"])
        if p.proto not in (TCP, UDP) or not p.has_ports:
            return self._result("pass", frame, "M_PASS", ["not a reply to masquerade"])
        key, e = self._reply(p, SNAT_IN, now, why)
        if e is None:
            r = self._nodeport(p, frame, now)
            if r is not None:
                return r
            if self._orphan(p):
                return self._result("drop", frame, "DROP_CT_LOST", why + ["to a NAT port of the node no mapping holds"])
            if p.proto == UDP and self._masq_pair(p.daddr, p.saddr):
                # its answers are replies, not new flows to masquerade
                self.s.nosnat[CtKey(p.daddr, p.saddr, p.dport, p.sport, UDP, NO_SNAT)] = \
                    now + self.s.timeouts.udp * NS
            self._release_reused(p, now, why)
            return self._result("pass", frame, "M_PASS", why + ["no masqueraded flow"])
        if p.options:
            return self._result("drop", frame, "DROP_IP_OPTIONS", ["reply to masquerade, unsupported header"])
        self._update(key, e, p, now)
        p.daddr, p.dport = e.nat_addr, e.nat_port
        return self._out(p, False, "M_UNSNAT", [f"reply to a masqueraded flow: back to {e.nat_addr}:{e.nat_port}"])

    def _nodeport(self, p: Packet, frame: bytes, now: int):
        """NodePort, LoadBalancer and external IP frontends (docs/datapath.md); None if not one."""
        unsupported = "DROP_IP_OPTIONS" if p.options else None
        why = []
        key, e = self._flow(p, SERVICE, now, why)
        if e is not None:
            if unsupported:
                return self._result("drop", frame, unsupported, ["NodePort flow, unsupported header"])
            self._update(key, e, p, now)
            self._heal_mapping(p, e, why)
            return self._out(self._dnat(p, e), False, "M_DNAT", why + [f"known NodePort flow to {e.nat_addr}:{e.nat_port}"])
        svc = self._svc(p.daddr, p.dport, p.proto)
        if svc is None and not self._is_vip(p.daddr):
            return None
        if unsupported:
            return self._result("drop", frame, unsupported, ["external frontend, unsupported header"])
        if p.later_fragment:
            return self._result("drop", frame, "DROP_FRAGMENT", ["a later fragment never starts a flow"])
        if svc is None:
            return self._reject(p, "REJECT_PORT_UNSERVED", [f"{p.daddr} serves no {p.dport}/{p.proto}"])
        chosen = self._flow_backend(p, svc, now, why)
        if isinstance(chosen, Result):
            return chosen
        bid, be = chosen
        life = now + self._lifetime(p.proto, CtEntry(0, be.addr, be.port))
        fwd = CtEntry(life, be.addr, be.port, backend_id=bid, svc_id=svc.svc_id, egress=True)
        rev = CtEntry(life, p.daddr, p.dport, backend_id=bid, svc_id=svc.svc_id, egress=True)
        off_cluster = self._is_vip(p.daddr) and p.saddr not in self.s.config.cluster_cidr
        if svc.flags & SVC_F_MASQ or off_cluster:
            port = self._map(self._after_dnat(p, be), now, why)
            if port is None:
                return self._result("drop", p.frame, "DROP_SNAT_EXHAUSTED", why + ["no free port to masquerade"])
            fwd.snat_addr, fwd.snat_port = self.s.config.node_ip, port
            why.append(("a client outside the cluster reaching a cluster IP" if off_cluster else
                        "externalTrafficPolicy Cluster") + ": masqueraded to the node IP on the way to the backend")
        self.s.conntrack[key] = fwd
        self.s.conntrack[CtKey(be.addr, p.saddr, be.port, p.sport, p.proto, REPLY)] = rev
        why.append(f"external frontend {p.daddr}:{p.dport}: DNAT to {be.addr}:{be.port}")
        return self._out(self._dnat(p, fwd), False, "M_DNAT_NEW", why)

    # -- the node's own sockets (docs/datapath.md, "Host-network clients") ------------------------

    def sock_connect(self, proto: int, daddr: IPv4Address, dport: int, cookie: int, now: int):
        """connect() (or an unconnected UDP send) of a node process to daddr:dport: where the
        socket really goes, (address, port); or "refused" (ECONNREFUSED)."""
        svc = self._svc(daddr, dport, proto, scope=SCOPE_POD) or self._svc(daddr, dport, proto)
        if svc is None:
            if self._is_vip(daddr):
                self._count("REJECT_PORT_UNSERVED")
                return "refused"
            return daddr, dport
        node_ip = self.s.config.node_ip
        if svc.flags & SVC_F_SRC_RANGES and not any(
                sid == svc.svc_id and node_ip in net for sid, net in self.s.maps.lb_sources):
            return daddr, dport
        if svc.count == 0:
            if svc.flags & SVC_F_LOCAL_ONLY:
                return daddr, dport
            self._count("REJECT_NO_ENDPOINTS")
            return "refused"
        le = lambda b: int.from_bytes(b, "little")  # noqa: E731
        h = _mix32(self.s.seed ^ (cookie & 0xFFFFFFFF))     # the seed, the socket's cookie, the frontend
        h = _mix32(h ^ (cookie >> 32))
        h = _mix32(h ^ le(daddr.packed))
        h = _mix32(h ^ (le(struct.pack("!H", dport)) | proto << 16))
        bid = self._choose(svc, node_ip, h, daddr, dport, proto, now, [])
        be = self.s.maps.backends.get(bid)
        if be is None:
            return daddr, dport
        self._count("M_SOCK_LB")
        return be.addr, be.port

