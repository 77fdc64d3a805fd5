"""The oracle: the reference datapath of every hook, frame bytes in, verdict and frame bytes out.

Written from the specification in docs/datapath.md. It decides from the service table in
Kubernetes' terms (frontends.py: which endpoints are eligible for this node and client, affinity,
traffic policies, masquerade), never from the BPF map encoding: it imports nothing of contract/
or of any backend, so a wrong rendering of the maps shows up as a disagreement. It follows the
C's structure (one method per C function of bpf/, of the same name: docs/ebpf.md, "Conventions")
but not its arithmetic: it parses and sums with `struct` (checksums updated for what changed,
RFC 1624, so a wrong one stays wrong; docs/datapath.md), and keeps its state in plain
dicts keyed by what things are (addresses, ports, frontends), not by ids. It is the oracle the BPF programs are checked against (tests/bpf, `dataplane
fuzz packets`), and the packet engine of the emulator (`--backend emulator`). Every result says
why, step by step.

C functions without a twin of their own: the rewrites nat4_set_src/nat4_set_dst and
__lb4_xlate/__lb4_xlate_metric are inlined in _lb4_known_flow (XLATE_METRIC), the scope argument
of lb4_lookup_service_scope is Frontends.for_pod, lb4_lookup_backend is a Frontend's targets,
dp_verdict is _dp_drop plus Result, the maps' own operations (ct4_get/ct4_store/ct4_claim/
ct4_remove, config_get) are dict operations, and the socket hooks (sock.c) are the emulator's
(sock_connect), not this module's.
"""
from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network

from .frontends import Backend, Frontend, Frontends

ETH_HLEN = 14
ETH_P_IP = 0x0800
TCP, UDP, ICMP = 6, 17, 1
ICMP_ERRORS = (3, 4, 11, 12)   # destination unreachable, source quench, time exceeded, parameter problem
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
NS = 1_000_000_000
SERVICE, REPLY, SNAT_OUT, SNAT_IN, NO_SNAT = 1, 2, 3, 4, 5   # conntrack directions
CT_DIRS = {SERVICE: "SERVICE", REPLY: "REPLY", SNAT_OUT: "SNAT_OUT", SNAT_IN: "SNAT_IN"}
IPV4_HLEN = 20                 # an IPv4 header without options
ICMP_HLEN = 8                  # type, code, checksum, 4 bytes of the rest
QUOTE_LEN = IPV4_HLEN + 8      # what an ICMP error quotes: the header + the 8 bytes of L4 RFC 792 requires
ICMP_DEST_UNREACH, ICMP_PORT_UNREACH = 3, 3
REJECT_TTL = 64
L4_CSUM_OFF = {TCP: 16, UDP: 6}                   # the checksum's offset in a TCP / UDP header
L4_HLEN = {TCP: 20, UDP: 8, ICMP: ICMP_HLEN}       # what a packet must carry of its L4 header
# offsets in the IPv4 header (RFC 791), as the C's offsetof(struct iphdr, ...)
IP_TOT_LEN, IP_ID, IP_FRAG, IP_PROTO, IP_CSUM, IP_SRC, IP_DST = 2, 4, 6, 9, 10, 12, 16
IP_MF_OFFSET = 0x3FFF            # more-fragments flag and fragment offset: any fragment
IP_OFFMASK = 0x1FFF              # the fragment offset: a later fragment
IPV4_NO_OPTIONS = 0x45           # version 4, header of 5 words
TCP_FLAGS_OFF = 13               # the byte of FIN, SYN, RST, ACK in a TCP header
QUOTE_UDP_CSUM_OFF = IPV4_HLEN + L4_CSUM_OFF[UDP]  # in a quote: the quoted UDP header's checksum
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
    backend: Backend | None = None   # the backend chosen (a service flow)
    frontend: tuple = ()             # the Frontend.key it was chosen for (a service flow)
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
class NodeState:
    """One node's state: what it intercepts (its frontends, from the service table), and what
    its packets leave behind (flows, affinities, counters). `timeouts`: the conntrack lifetimes in
    seconds (syn, tcp, close_wait, close, udp)."""
    frontends: Frontends
    node_ip: IPv4Address
    seed: int
    timeouts: object
    conntrack: dict = field(default_factory=dict)   # CtKey -> CtEntry
    affinity: dict = field(default_factory=dict)    # (client, Frontend.key) -> (last_used, Backend)
    metrics: Counter = field(default_factory=Counter)
    config: object = None                           # render.NodeConfig: masquerade settings
    nosnat: dict = field(default_factory=dict)      # reply tuple (CtKey, dir NO_SNAT) -> expires
    frags: dict = field(default_factory=dict)       # (saddr, daddr, IP id, proto) -> first fragment's ports
    # Does a socket of the node's own hold remote:rport <-> node IP:port (proto, remote, rport,
    # port)? What the BPF programs ask the kernel; the emulator answers from its node stack.
    node_sockets: object = None

    def collect(self, now: int) -> int:
        """Forget expired flows (what the ebpf backend's collect() does to the BPF map)."""
        dead = [k for k, e in self.conntrack.items() if e.expires <= now]
        for k in dead:
            del self.conntrack[k]
        return len(dead)


    def sync(self, frontends: Frontends, keep) -> int:
        """An update: the new frontends, then the flows the new table no longer lets live
        (policy.FlowKeep) and the affinities no longer eligible forgotten. Entries forgotten."""
        self.frontends = frontends
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

    def forget_affinities(self) -> int:
        """Forget remembered backends no longer eligible for their service port (or of service
        ports gone, or without affinity now)."""
        by_key = self.frontends.by_key
        gone = [k for k, (_, backend) in self.affinity.items()
                if k[1] not in by_key or by_key[k[1]].affinity is None or backend not in by_key[k[1]].targets]
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

def hash_mix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def hash_flow4(saddr: bytes, daddr: bytes, sport: bytes, dport: bytes, proto: int, seed: int) -> int:
    """Each field as its bytes sit in the packet, read as a little-endian word."""
    le = lambda b: int.from_bytes(b, "little")  # noqa: E731
    h = hash_mix32(seed ^ le(saddr))
    h = hash_mix32(h ^ le(daddr))
    h = hash_mix32(h ^ (le(sport) | le(dport) << 16))
    return hash_mix32(h ^ proto)


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
        return self.ihl > IPV4_HLEN


def parse(frame: bytes):
    """(Packet, None), (None, None) for a frame that is not IPv4, or (None, reason) if malformed."""
    if len(frame) < ETH_HLEN or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
        return None, None
    if len(frame) < ETH_HLEN + IPV4_HLEN:
        return None, "DROP_BAD_IHL"
    vihl = frame[ETH_HLEN]
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < IPV4_HLEN:
        return None, "DROP_BAD_IHL"
    ip = ETH_HLEN
    total = struct.unpack("!H", frame[ip + IP_TOT_LEN:ip + IP_TOT_LEN + 2])[0]
    if total < ihl or ETH_HLEN + total > len(frame):
        return None, "DROP_BAD_IHL" if ETH_HLEN + ihl > len(frame) else "DROP_BAD_LEN"
    frag = struct.unpack("!H", frame[ip + IP_FRAG:ip + IP_FRAG + 2])[0]
    p = Packet(bytearray(frame), ihl, total, frame[ip + IP_PROTO],
               IPv4Address(frame[ip + IP_SRC:ip + IP_SRC + 4]), IPv4Address(frame[ip + IP_DST:ip + IP_DST + 4]),
               fragment=bool(frag & IP_MF_OFFSET), later_fragment=bool(frag & IP_OFFMASK),
               ident=struct.unpack("!H", frame[ip + IP_ID:ip + IP_ID + 2])[0])
    p.orig = (p.saddr, p.daddr, 0, 0)
    if p.later_fragment:
        return p, None
    l4len, o = total - ihl, p.l4
    need = L4_HLEN.get(p.proto, 0)
    if l4len < need:
        return None, "DROP_TRUNCATED_L4"
    if p.proto in (TCP, UDP):
        p.sport, p.dport = struct.unpack("!HH", frame[o:o + 4])
        p.has_ports, p.orig = True, (p.saddr, p.daddr, p.sport, p.dport)
        if p.proto == TCP:
            p.tcp_flags = frame[o + TCP_FLAGS_OFF]
    elif p.proto == ICMP:
        p.icmp_type = frame[o]
    return p, None


# -- rewriting (checksums updated for what changed, RFC 1624) ------------------------------------

def _finish(p: Packet) -> bytes:
    """The packet with its new addresses and ports, checksums updated for what changed (RFC 1624):
    a correct checksum stays correct, a wrong one stays exactly as wrong, so a corrupted packet
    is never made to look good (netfilter would not translate it at all: docs/differences.md)."""
    f = p.frame
    ip = ETH_HLEN
    osa, oda, osp, odp = p.orig
    old_addrs, new_addrs = osa.packed + oda.packed, p.saddr.packed + p.daddr.packed
    f[ip + IP_SRC:ip + IP_SRC + 4] = p.saddr.packed
    f[ip + IP_DST:ip + IP_DST + 4] = p.daddr.packed
    check = struct.unpack("!H", f[ip + IP_CSUM:ip + IP_CSUM + 2])[0]
    f[ip + IP_CSUM:ip + IP_CSUM + 2] = struct.pack("!H", csum_update(check, old_addrs, new_addrs))
    if p.later_fragment or p.proto not in (TCP, UDP):
        return bytes(f)                # no L4 header here: its first fragment carried the rest
    # the L4 checksum covers the pseudo-header's addresses and the ports (and, for a fragment,
    # a whole datagram no single fragment holds)
    o = p.l4
    f[o:o + 4] = struct.pack("!HH", p.sport, p.dport)
    off = o + L4_CSUM_OFF[p.proto]
    old = struct.unpack("!H", f[off:off + 2])[0]
    if p.proto == UDP and old == 0:
        return bytes(f)                # UDP without checksum stays without
    c = csum_update(old, old_addrs + struct.pack("!HH", osp, odp), new_addrs + struct.pack("!HH", p.sport, p.dport))
    if p.proto == UDP and c == 0:
        c = 0xFFFF
    f[off:off + 2] = struct.pack("!H", c)
    return bytes(f)


def _swap_macs(frame: bytearray) -> None:
    """l2_bounce: the frame goes back to where it came from."""
    frame[0:12] = frame[6:12] + frame[0:6]


def _set_outer(p: Packet) -> None:
    """An ICMP error's outer addresses as p says, the IP checksum updated for them (ICMP has no
    pseudo-header)."""
    f, ip = p.frame, ETH_HLEN
    old = bytes(f[ip + IP_SRC:ip + IP_DST + 4])
    f[ip + IP_SRC:ip + IP_SRC + 4], f[ip + IP_DST:ip + IP_DST + 4] = p.saddr.packed, p.daddr.packed
    check = struct.unpack("!H", f[ip + IP_CSUM:ip + IP_CSUM + 2])[0]
    f[ip + IP_CSUM:ip + IP_CSUM + 2] = struct.pack("!H", csum_update(check, old, bytes(f[ip + IP_SRC:ip + IP_DST + 4])))


# -- the datapath ----------------------------------------------------------------------------------
#
# One method per C function of bpf/, in the order of the headers that define them, named as the
# C function is (`_` + its name, a leading `__` of an inner helper becomes that `_`): put the C
# and its Python twin side by side. The C return convention (bpf/lib/verdict.h) becomes: a stage
# returns None (DP_CONTINUE) or the Result that ends the packet, a drop counted under its reason
# (`_dp_drop`); an operation that can fail returns its value or None.

AT_UPLINK, AT_POD = 0, 1                   # where a hook is: only a pod veth bounces hairpin packets
HOOK_INGRESS, HOOK_EGRESS = False, True
XLATE_DNAT, XLATE_REVNAT, XLATE_SNAT, XLATE_UNSNAT = 0, 1, 2, 3   # what a known flow's packet gets
XLATE_METRIC = {XLATE_DNAT: "M_DNAT", XLATE_REVNAT: "M_REVNAT", XLATE_SNAT: "M_SNAT", XLATE_UNSNAT: "M_UNSNAT"}
ICMP4_NOT_OURS, ICMP4_TRANSLATED, ICMP4_BOUNCE = 0, 1, 2


@dataclass
class Quote:
    """The addresses and ports an ICMP error quotes, as read or as they become (struct quote)."""
    saddr: IPv4Address
    daddr: IPv4Address
    sport: int
    dport: int
    proto: int


class PodHooks:
    """The datapath's library (bpf/lib) and from_pod / to_pod (bpf/pod.c) of one node. `now` is ns
    on the dataplane clock."""

    def __init__(self, state: NodeState):
        self.s = state

    # -- metrics.h, verdict.h ----------------------------------------------------------------------

    def _metrics_count(self, name: str) -> None:
        self.s.metrics[name] += 1

    def _result(self, verdict, data, reason, why) -> Result:
        self._metrics_count(reason)
        return Result(verdict, bytes(data), reason, why)

    def _dp_pass(self, data, why) -> Result:
        return self._result("pass", data, "M_PASS", why)

    def _dp_drop(self, data, reason: str, why) -> Result:
        return self._result("drop", data, reason, why)

    # -- parse.h -----------------------------------------------------------------------------------

    def _pkt4_begin(self, frame: bytes, why: list):
        """(Packet, None) to go on, or (None, the Result): malformed, or not IPv4."""
        p, bad = parse(frame)
        if bad:
            return None, self._dp_drop(frame, bad, [f"malformed IPv4: {bad}"])
        if p is None:
            return None, self._dp_pass(frame, ["not IPv4"])
        self._pkt4_frag_ports(p, why)
        return p, None

    def _pkt4_frag_ports(self, p: Packet, why: list) -> None:
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

    @staticmethod
    def _pkt4_bare_syn(p: Packet) -> bool:
        return p.proto == TCP and bool(p.tcp_flags & SYN) and not p.tcp_flags & ACK

    @staticmethod
    def _pkt4_syn_ack(p: Packet) -> bool:
        return p.proto == TCP and bool(p.tcp_flags & SYN) and bool(p.tcp_flags & ACK)

    @staticmethod
    def _pkt4_check_options(p: Packet):
        """None, or the drop reason of a packet to translate that has IPv4 options."""
        return "DROP_IP_OPTIONS" if p.options else None

    # -- conntrack.h -------------------------------------------------------------------------------

    def _ct4_lookup(self, key: CtKey, now: int):
        e = self.s.conntrack.get(key)
        if e is not None and e.expires <= now:
            del self.s.conntrack[key]
            return None
        return e

    def _ct4_lifetime(self, proto: int, e: CtEntry) -> int:
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
    def _ct4_peer_key(key: CtKey, e: CtEntry) -> CtKey:
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

    @staticmethod
    def _ct4_next_flags(e: CtEntry, p: Packet, direction: int) -> None:
        """The flow's state after this packet, travelling in `direction`."""
        if p.proto != TCP:
            return
        reply = direction in (REPLY, SNAT_IN)
        if p.tcp_flags & RST:
            e.rst = True
            return
        e.seen_reply |= reply
        if p.tcp_flags & FIN:
            if reply:
                e.fin_reply = True
            else:
                e.fin_orig = True

    def _ct4_update(self, key: CtKey, e: CtEntry, p: Packet, now: int) -> None:
        """A packet of the flow passed in direction key.dir: both entries take the new state."""
        self._ct4_next_flags(e, p, key.dir)
        e.expires = now + self._ct4_lifetime(p.proto, e)
        peer_key = self._ct4_peer_key(key, e)
        peer = self.s.conntrack.get(peer_key)
        if peer is not None:
            if self._ct4_peer_key(peer_key, peer) == key:    # this flow's other half, not a reused key
                peer.share_state(e)
            return
        # the other half is gone (a full table evicted it): written again from this one
        self.s.conntrack[peer_key] = self._ct4_peer_entry(key, e)
        self._metrics_count("M_CT_RESTORED")

    @staticmethod
    def _ct4_peer_entry(key: CtKey, e: CtEntry) -> CtEntry:
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

    def _ct4_delete(self, key: CtKey, e: CtEntry) -> None:
        """A flow ends: this entry, and its other half if the key there is still this flow's."""
        peer_key = self._ct4_peer_key(key, e)
        peer = self.s.conntrack.get(peer_key)
        if peer is not None and self._ct4_peer_key(peer_key, peer) == key:
            del self.s.conntrack[peer_key]
        self.s.conntrack.pop(key, None)

    def _ct4_lookup_flow(self, p: Packet, direction: int, now: int, why: list):
        """(key, live entry or None) of the flow this packet starts or continues; a bare SYN on a
        closed flow's tuple ends that flow, so a new connection is chosen afresh."""
        key = CtKey(p.saddr, p.daddr, p.sport, p.dport, p.proto, direction)
        e = self._ct4_lookup(key, now)
        if e is not None and e.closed and self._pkt4_bare_syn(p):
            self._ct4_delete(key, e)
            why.append("a new SYN on the tuple of a closed flow: a fresh flow")
            return key, None
        return key, e

    def _ct4_lookup_reply(self, p: Packet, direction: int, now: int, why: list):
        """(key, live entry or None) of the flow this packet answers (REPLY or SNAT_IN). A bare
        SYN answers nothing; a SYN-ACK on a closed flow's tuple answers a new connection that
        reuses it, so the old flow is forgotten rather than allowed to translate it."""
        key = CtKey(p.saddr, p.daddr, p.sport, p.dport, p.proto, direction)
        if self._pkt4_bare_syn(p):
            return key, None
        e = self._ct4_lookup(key, now)
        if e is not None and e.closed and self._pkt4_syn_ack(p):
            self._ct4_delete(key, e)
            why.append("a SYN-ACK on the tuple of a closed flow: a new connection, not a reply of ours")
            return key, None
        return key, e

    def _ct4_release_reused(self, p: Packet, now: int, why: list) -> None:
        """A bare SYN no flow of ours handles, whose reply tuple a closed flow's REPLY entry still
        holds: forget that flow, so it cannot rewrite the new connection's answers."""
        if not self._pkt4_bare_syn(p):
            return
        key = CtKey(p.daddr, p.saddr, p.dport, p.sport, p.proto, REPLY)
        e = self._ct4_lookup(key, now)
        if e is not None and e.closed:
            self._ct4_delete(key, e)
            why.append(f"a new connection reuses the reply tuple of a closed flow to {e.nat_addr}: flow forgotten")

    # -- lb.h --------------------------------------------------------------------------------------

    def _lb4_lookup_service(self, addr, port, proto) -> Frontend | None:
        return self.s.frontends.find(addr, port, proto)

    def _lb4_lookup_service_for_pod(self, addr, port, proto) -> Frontend | None:
        """A pod's own frontend of an externalTrafficPolicy Local external address first (every
        endpoint, kube-proxy's short-circuit), then the one everybody uses."""
        return self.s.frontends.for_pod(addr, port, proto)

    def _lb4_is_vip(self, addr) -> bool:
        return self.s.frontends.is_cluster_ip(addr)

    @staticmethod
    def _lb4_source_allowed(svc: Frontend, client) -> bool:
        return svc.admits(client)

    def _lb4_choose_backend(self, svc: Frontend, client, h: int, now: int, why: list) -> Backend:
        """A backend for a frontend with eligible endpoints: with affinity, the client's
        remembered backend if used within the timeout and still eligible for this frontend, else
        the eligible endpoint the hash h indexes (docs/datapath.md, "Frontends"); with affinity
        the choice is remembered. For packets and sockets alike."""
        chosen = None
        if svc.affinity is not None:
            hit = self.s.affinity.get((client, svc.key))
            if hit and now - hit[0] <= svc.affinity * NS and hit[1] in svc.targets:
                chosen = hit[1]
                self._metrics_count("M_AFFINITY_HIT")
                why.append(f"session affinity: client {client} keeps backend {chosen.addr}:{chosen.port}")
            elif hit:
                why.append(f"session affinity: backend {hit[1].addr}:{hit[1].port} expired or no longer eligible here")
        if chosen is None:
            n = len(svc.targets)
            chosen = svc.targets[h % n]
            why.append(f"hash {h:#010x} picks endpoint {h % n + 1} of {n}: {chosen.addr}:{chosen.port}")
        if svc.affinity is not None:
            self.s.affinity[(client, svc.key)] = (now, chosen)
        return chosen

    def _lb4_select_backend(self, p: Packet, svc: Frontend, now: int, why: list) -> Backend:
        f, ip, o = p.frame, ETH_HLEN, p.l4
        h = hash_flow4(f[ip + IP_SRC:ip + IP_SRC + 4], f[ip + IP_DST:ip + IP_DST + 4], f[o:o + 2], f[o + 2:o + 4],
                       p.proto, self.s.seed)
        return self._lb4_choose_backend(svc, p.saddr, h, now, why)

    # -- nat.h -------------------------------------------------------------------------------------

    @staticmethod
    def _nat4_dnat(p: Packet, e: CtEntry) -> Packet:
        """client -> VIP:port becomes client (or node IP, hairpin) -> backend:port."""
        p.daddr, p.dport = e.nat_addr, e.nat_port
        if e.hairpin:
            p.saddr, p.sport = e.snat_addr, e.snat_port
        return p

    @staticmethod
    def _nat4_rev_nat(p: Packet, e: CtEntry) -> Packet:
        """backend:port -> client becomes VIP:port -> client (the client's own address, hairpin)."""
        p.saddr, p.sport = e.nat_addr, e.nat_port
        if e.hairpin:
            p.daddr, p.dport = e.snat_addr, e.snat_port
        return p

    # -- snat.h ------------------------------------------------------------------------------------

    def _snat4_masq_pair(self, pod: IPv4Address, remote: IPv4Address) -> bool:
        c = self.s.config
        if c is None or not c.masquerade or pod not in c.cluster_cidr:
            return False
        if not c.masq_link_local and remote in LINK_LOCAL:
            return False
        return not any(remote in net for net in c.non_masquerade)

    def _snat4_should_masquerade(self, p: Packet, now: int) -> bool:
        """Only the start of a connection is masqueraded: a TCP SYN, or a UDP datagram that does
        not answer one that came in from outside."""
        if not self._snat4_masq_pair(p.saddr, p.daddr):
            return False
        if p.proto == TCP:
            return self._pkt4_bare_syn(p)
        marker = CtKey(p.saddr, p.daddr, p.sport, p.dport, p.proto, NO_SNAT)
        expires = self.s.nosnat.get(marker)
        if expires is not None and expires <= now:
            del self.s.nosnat[marker]           # an expired marker is no marker
            expires = None
        return expires is None

    def _snat4_note_inbound(self, p: Packet, now: int) -> None:
        """A UDP datagram from outside to a pod: its answers are replies, not new flows to
        masquerade."""
        if p.proto == UDP and self._snat4_masq_pair(p.daddr, p.saddr):
            self.s.nosnat[CtKey(p.daddr, p.saddr, p.dport, p.sport, UDP, NO_SNAT)] = now + self.s.timeouts.udp * NS

    def _snat4_socket_holds(self, proto: int, remote, rport: int, port: int) -> bool:
        return bool(self.s.node_sockets and self.s.node_sockets(proto, remote, rport, port))

    def _snat4_candidate(self, p: Packet, attempt: int, keep: int):
        """Attempt 0: the flow's own port, if in the range (else none); then hashed ports."""
        lo, hi = self.s.config.snat_range
        if attempt == 0:
            return keep if lo <= keep <= hi else None
        f, ip, o = p.frame, ETH_HLEN, p.l4
        h = hash_flow4(f[ip + IP_SRC:ip + IP_SRC + 4], f[ip + IP_DST:ip + IP_DST + 4], f[o:o + 2], f[o + 2:o + 4],
                       p.proto, self.s.seed)
        return lo + hash_mix32(h ^ attempt) % (hi - lo + 1)

    def _snat4_claim(self, p: Packet, now: int, why: list, keep: int, entry: CtEntry):
        """The node-IP allocator: a port for flow p (source -> remote as it leaves), whose SNAT_IN
        entry (remote -> node IP:port) `entry` becomes. Free: no live SNAT_IN entry holds it and no
        node socket does. The port, or None if every try failed."""
        node_ip = self.s.config.node_ip
        for attempt in range(SNAT_RETRIES + 1):
            port = self._snat4_candidate(p, attempt, keep)
            if port is None:
                continue
            ki = CtKey(p.daddr, node_ip, p.dport, port, p.proto, SNAT_IN)
            self._ct4_lookup(ki, now)                       # an expired mapping is free again
            if ki in self.s.conntrack:
                continue
            if self._snat4_socket_holds(p.proto, p.daddr, p.dport, port):
                why.append(f"port {port} is held by a socket of the node's own")
                continue
            break
        else:
            return None
        if attempt and self._snat4_candidate(p, 0, keep) is not None:
            self._metrics_count("M_SNAT_PORT_MOVED")
            why.append(f"source port {keep} taken for this destination: port {port} (try {attempt})")
        elif attempt:
            why.append(f"source port {keep} is outside the NAT range: port {port} (try {attempt})")
        entry.expires = now + self._ct4_lifetime(p.proto, CtEntry(0, node_ip, port))
        self.s.conntrack[ki] = entry
        return port

    def _snat4_map(self, p: Packet, now: int, why: list):
        """A masquerade mapping for flow p: its SNAT_IN entry claimed, its SNAT_OUT entry; the port
        or None. A mapping an earlier flow on this tuple left goes first, with its SNAT_IN."""
        out_key = CtKey(p.saddr, p.daddr, p.sport, p.dport, p.proto, SNAT_OUT)
        old = self.s.conntrack.get(out_key)
        if old is not None:
            self._ct4_delete(out_key, old)
            why.append(f"the mapping an earlier flow on this tuple left ({old.nat_addr}:{old.nat_port}) goes")
        node_ip = self.s.config.node_ip
        port = self._snat4_claim(p, now, why, p.sport, CtEntry(0, p.saddr, p.sport))
        if port is None:
            return None
        life = self.s.conntrack[CtKey(p.daddr, node_ip, p.dport, port, p.proto, SNAT_IN)].expires
        self.s.conntrack[out_key] = CtEntry(life, node_ip, port)
        return port

    @staticmethod
    def _snat4_after_dnat(p: Packet, be) -> Packet:
        """The flow as it will look after DNAT (client -> backend), for the allocator."""
        after = Packet(p.frame, p.ihl, p.total, p.proto, p.saddr, be.addr, p.fragment, p.later_fragment,
                       p.sport, be.port, p.tcp_flags)
        # the hash reads the frame: show it the flow as it will be after DNAT
        f = bytearray(p.frame)
        f[ETH_HLEN + IP_DST:ETH_HLEN + IP_DST + 4] = be.addr.packed
        f[p.l4 + 2:p.l4 + 4] = struct.pack("!H", be.port)
        after.frame = f
        return after

    def _snat4_heal(self, p: Packet, e: CtEntry, why: list) -> None:
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
            if self._ct4_peer_key(in_key, held) != out_key:
                return
        else:
            self.s.conntrack[in_key] = CtEntry(e.expires, p.saddr, p.sport, **state)
        self.s.conntrack[out_key] = CtEntry(e.expires, e.snat_addr, e.snat_port, **state)
        self._metrics_count("M_CT_RESTORED")
        why.append(f"the flow's mapping {e.snat_addr}:{e.snat_port} was lost: written again")

    def _snat4_orphan(self, p: Packet) -> bool:
        """A packet to the node's address on a NAT port no mapping and no node socket holds."""
        c = self.s.config
        return (c is not None and p.daddr == c.node_ip and p.proto in (TCP, UDP)
                and c.snat_range[0] <= p.dport <= c.snat_range[1]
                and not self._snat4_socket_holds(p.proto, p.saddr, p.sport, p.dport))

    def _snat4_new_flow(self, p: Packet, now: int, why: list) -> Result:
        node_ip = self.s.config.node_ip
        port = self._snat4_map(p, now, why)
        if port is None:
            return self._dp_drop(p.frame, "DROP_SNAT_EXHAUSTED",
                                 why + [f"no free port on {node_ip} for {p.daddr}:{p.dport}"])
        why.append(f"masquerade {p.saddr}:{p.sport} as {node_ip}:{port}")
        p.saddr, p.sport = node_ip, port
        self._metrics_count("M_SNAT_NEW")
        return Result("pass", _finish(p), "M_SNAT_NEW", why)

    # -- icmp.h ------------------------------------------------------------------------------------

    @staticmethod
    def _icmp4_quote_read(p: Packet):
        """The packet an ICMP error quotes, if it is an IPv4 header without options and TCP or UDP
        with the 8 bytes RFC 792 requires: (quote bytes, Quote), else None."""
        at = p.l4 + ICMP_HLEN
        if p.options or ETH_HLEN + p.total < at + QUOTE_LEN:
            return None
        inner = bytes(p.frame[at:at + QUOTE_LEN])
        if inner[0] != IPV4_NO_OPTIONS or inner[IP_PROTO] not in (TCP, UDP):
            return None
        if struct.unpack("!H", inner[IP_FRAG:IP_FRAG + 2])[0] & IP_OFFMASK:
            return None                 # a later fragment quoted: no ports in its first 8 bytes
        return inner, Quote(IPv4Address(inner[IP_SRC:IP_SRC + 4]), IPv4Address(inner[IP_DST:IP_DST + 4]),
                            *struct.unpack("!HH", inner[IPV4_HLEN:IPV4_HLEN + 4]), inner[9])

    def _icmp4_lookup(self, q: Quote, reversed_: bool, direction: int, now: int):
        """The live entry keyed by the quote's own tuple, or by its reply's (reversed_)."""
        if reversed_:
            return self._ct4_lookup(CtKey(q.daddr, q.saddr, q.dport, q.sport, q.proto, direction), now)
        return self._ct4_lookup(CtKey(q.saddr, q.daddr, q.sport, q.dport, q.proto, direction), now)

    def _icmp4_forward(self, n: Quote, osrc, odst, now: int, why: list):
        """The quote is a packet toward a backend or a remote: its masquerade undone (SNAT_IN),
        then its DNAT (REPLY). (found, outer source, outer destination)."""
        e = self._icmp4_lookup(n, True, SNAT_IN, now)
        if e is not None and e.hairpin:
            if osrc == n.daddr:
                osrc = e.nat_addr
            n.saddr, n.sport, n.daddr, n.dport = e.snat_addr, e.snat_port, e.nat_addr, e.nat_port
            why.append(f"about a hairpin flow: quotes {n.saddr}:{n.sport} -> {n.daddr}:{n.dport}, back to the pod")
            return ICMP4_BOUNCE, osrc, e.snat_addr
        found = ICMP4_NOT_OURS
        if e is not None:
            n.saddr, n.sport, odst, found = e.nat_addr, e.nat_port, e.nat_addr, ICMP4_TRANSLATED
            why.append(f"about a masqueraded packet: back to {n.saddr}:{n.sport}")
        e = self._icmp4_lookup(n, True, REPLY, now)
        if e is not None:
            if osrc == n.daddr and not e.egress:
                osrc = e.nat_addr
                why.append("sent by the backend itself: from the frontend")
            n.daddr, n.dport, found = e.nat_addr, e.nat_port, ICMP4_TRANSLATED
            why.append(f"about a packet to a backend: quotes the frontend {n.daddr}:{n.dport}")
        return found, osrc, odst

    def _icmp4_reverse(self, n: Quote, odst, now: int, why: list):
        """The quote is a translated reply, back to what its sender sent: SERVICE (with its
        masquerade's SNAT_OUT), or SNAT_OUT. (found, outer destination)."""
        e = self._icmp4_lookup(n, True, SERVICE, now)
        if e is not None and not e.hairpin:
            client, cport = n.daddr, n.dport
            n.saddr, n.sport, odst = e.nat_addr, e.nat_port, e.nat_addr
            o = self._ct4_lookup(CtKey(client, e.nat_addr, cport, e.nat_port, n.proto, SNAT_OUT), now)
            if o is not None:
                n.daddr, n.dport = o.nat_addr, o.nat_port
            why.append(f"about a reply to {client}:{cport}: to the backend {n.saddr}:{n.sport} that sent it")
            return ICMP4_TRANSLATED, odst
        e = self._icmp4_lookup(n, True, SNAT_OUT, now)
        if e is None:
            return ICMP4_NOT_OURS, odst
        n.daddr, n.dport = e.nat_addr, e.nat_port
        why.append(f"about a reply to a masqueraded flow: quotes {n.daddr}:{n.dport}")
        return ICMP4_TRANSLATED, odst

    @staticmethod
    def _icmp4_rewrite(p: Packet, inner: bytes, n: Quote, osrc, odst) -> None:
        """Write the quote as it becomes, then the outer addresses: the quoted IP header's checksum
        in full, the quoted UDP checksum per RFC 1624 (the quote is truncated; 0 stays 0), the
        ICMP checksum and the outer IP checksum updated for what changed (a wrong one stays
        wrong)."""
        new = bytearray(inner)
        new[12:16], new[16:20] = n.saddr.packed, n.daddr.packed
        new[IPV4_HLEN:IPV4_HLEN + 4] = struct.pack("!HH", n.sport, n.dport)
        p.saddr, p.daddr = osrc, odst
        f, o = p.frame, p.l4
        new[IP_CSUM:IP_CSUM + 2] = b"\0\0"
        new[IP_CSUM:IP_CSUM + 2] = struct.pack("!H", csum(bytes(new[:IPV4_HLEN])))
        uc = slice(QUOTE_UDP_CSUM_OFF, QUOTE_UDP_CSUM_OFF + 2)
        tuple_ = slice(IP_SRC, IPV4_HLEN + 4)      # addresses and ports: what the pseudo-header and ports cover
        if inner[IP_PROTO] == UDP and inner[uc] != b"\0\0":
            c = csum_update(struct.unpack("!H", inner[uc])[0], inner[tuple_], bytes(new[tuple_])) or 0xFFFF
            new[uc] = struct.pack("!H", c)
        f[o + ICMP_HLEN:o + ICMP_HLEN + QUOTE_LEN] = new
        check = struct.unpack("!H", f[o + 2:o + 4])[0]
        f[o + 2:o + 4] = struct.pack("!H", csum_update(check, inner, bytes(new)))
        _set_outer(p)

    def _icmp4_error_translate(self, p: Packet, now: int, why: list) -> int:
        """An ICMP error about one of our flows (docs/datapath.md, "ICMP errors"): the quote
        becomes what its sender sent, the error goes to that sender; the outer source becomes the
        frontend when the backend sent it. ICMP4_NOT_OURS, ICMP4_TRANSLATED or ICMP4_BOUNCE."""
        read = self._icmp4_quote_read(p)
        if read is None:
            return ICMP4_NOT_OURS
        inner, n = read
        found, osrc, odst = self._icmp4_forward(n, p.saddr, p.daddr, now, why)
        if found == ICMP4_NOT_OURS:
            found, odst = self._icmp4_reverse(n, odst, now, why)
        if found != ICMP4_NOT_OURS:
            self._icmp4_rewrite(p, inner, n, osrc, odst)
        return found

    def _icmp4_error_source(self, p: Packet, now: int, why: list) -> bool:
        """On egress: the error came from the translated end of a flow whose frontend (or
        masquerade address) is the node's own: from that address now."""
        read = self._icmp4_quote_read(p)
        if read is None:
            return False
        q = read[1]
        e = self._icmp4_lookup(q, False, SERVICE, now)
        if e is None or e.hairpin:
            e = self._icmp4_lookup(q, False, SNAT_IN, now)
            if e is not None and e.hairpin:
                e = None
        if e is None or p.saddr != e.nat_addr:
            return False
        p.saddr = q.daddr
        _set_outer(p)
        why.append(f"sent by the end behind {q.daddr}: from {q.daddr}")
        return True

    def _icmp4_error(self, p: Packet, now: int, why: list, egress: bool) -> int:
        found = self._icmp4_error_translate(p, now, why)
        if found == ICMP4_BOUNCE or not egress:
            return found
        source = self._icmp4_error_source(p, now, why)
        return ICMP4_TRANSLATED if found or source else ICMP4_NOT_OURS

    def _icmp4_error_at_pod(self, p: Packet, now: int, why: list, egress: bool):
        """None if not about a flow of ours; a hairpin flow's error goes back to its pod on ingress."""
        found = self._icmp4_error(p, now, why, egress)
        if found == ICMP4_NOT_OURS:
            return None
        if found == ICMP4_BOUNCE and not egress:
            _swap_macs(p.frame)
            return self._result("redirect", p.frame, "M_ICMP_REVNAT", why)
        return self._result("pass", p.frame, "M_ICMP_REVNAT", why)

    def _icmp4_error_at_uplink(self, p: Packet, now: int, egress: bool) -> Result:
        why = []
        if self._icmp4_error(p, now, why, egress) == ICMP4_NOT_OURS:
            return self._dp_pass(p.frame, ["ICMP error not about a flow of ours"])
        return self._result("pass", p.frame, "M_ICMP_REVNAT", why)

    # -- reject.h ----------------------------------------------------------------------------------

    def _lb4_reject(self, p: Packet, reason: str, why: list) -> Result:
        if p.options:
            return self._dp_drop(p.frame, "DROP_REJECT_FAILED", why + ["cannot quote a header with options"])
        quote = bytes(p.frame[ETH_HLEN:ETH_HLEN + QUOTE_LEN])
        icmp = bytearray(struct.pack("!BBHI", ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0) + quote)
        icmp[2:4] = struct.pack("!H", csum(bytes(icmp)))
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", IPV4_NO_OPTIONS, 0, IPV4_HLEN + len(icmp), 0, 0, REJECT_TTL, ICMP, 0,
                                   p.daddr.packed, p.saddr.packed))
        ip[10:12] = struct.pack("!H", csum(bytes(ip)))
        frame = bytearray(p.frame[:ETH_HLEN]) + ip + icmp
        _swap_macs(frame)
        return self._result("redirect", frame, reason,
                            why + ["rejected: ICMP port unreachable from the VIP, back to the client"])

    # -- flow.h: the known-flow sequence -----------------------------------------------------------

    def _lb4_forward(self, p: Packet, bounce: bool, reason: str, why: list) -> Result:
        """The rewritten packet (counted by the caller, under `reason`) to routing or (a hairpin's)
        straight back to its pod."""
        data = bytearray(_finish(p))
        if bounce:
            _swap_macs(data)
            why.append("sent straight back to the pod it came from")
            return Result("redirect", bytes(data), reason, why)
        return Result("pass", bytes(data), reason, why)

    def _lb4_known_flow(self, p: Packet, now: int, key: CtKey, e: CtEntry, xlate: int, where: int,
                        why: list) -> Result:
        """Check, update both entries, rewrite, count, forward: every known flow's packet."""
        bad = self._pkt4_check_options(p)
        if bad:
            return self._dp_drop(p.frame, bad, why + ["packet of a translated flow, unsupported header"])
        self._ct4_update(key, e, p, now)
        if xlate == XLATE_DNAT:
            self._snat4_heal(p, e, why)
            self._nat4_dnat(p, e)
        elif xlate == XLATE_REVNAT:
            self._nat4_rev_nat(p, e)
        elif xlate == XLATE_SNAT:
            p.saddr, p.sport = e.nat_addr, e.nat_port
        else:
            p.daddr, p.dport = e.nat_addr, e.nat_port
        why.append(f"known flow ({CT_DIRS[key.dir]}): now {p.saddr}:{p.sport} -> {p.daddr}:{p.dport}")
        self._metrics_count(XLATE_METRIC[xlate])
        return self._lb4_forward(p, where == AT_POD and e.hairpin, XLATE_METRIC[xlate], why)

    # -- newflow.h: a new flow to a frontend -------------------------------------------------------

    def _lb4_new_flow_backend(self, p: Packet, svc: Frontend, now: int, why: list):
        """A new flow to a frontend: its Backend, or the Result that ends it here."""
        if p.proto == TCP and not self._pkt4_bare_syn(p):
            return self._dp_drop(p.frame, "DROP_CT_LOST",
                                 ["TCP to a frontend, not a SYN, and no flow: a lost flow (expired, evicted or flushed)"])
        if not svc.targets and not svc.local_only:
            # every client, source ranges or not: kube-proxy's firewall chain exists only while
            # the service has endpoints
            return self._lb4_reject(p, "REJECT_NO_ENDPOINTS", ["service has no eligible endpoint"])
        if not self._lb4_source_allowed(svc, p.saddr):
            return self._dp_drop(p.frame, "DROP_SOURCE_RANGE", [f"{p.saddr} is outside the LoadBalancer's source ranges"])
        if not svc.targets:
            return self._dp_drop(p.frame, "DROP_NO_LOCAL_ENDPOINT", ["traffic policy Local: no endpoint on this node"])
        return self._lb4_select_backend(p, svc, now, why)

    def _lb4_new_flow_entries(self, p: Packet, svc: Frontend, now: int, be: Backend):
        """(fwd, rev): SERVICE to the backend, the reply's back to the frontend."""
        life = now + self._ct4_lifetime(p.proto, CtEntry(0, be.addr, be.port))
        return (CtEntry(life, be.addr, be.port, backend=be, frontend=svc.key),
                CtEntry(life, p.daddr, p.dport, backend=be, frontend=svc.key))

    def _lb4_flow_store(self, p: Packet, be, fwd: CtEntry, rev: CtEntry | None) -> None:
        self.s.conntrack[CtKey(p.saddr, p.daddr, p.sport, p.dport, p.proto, SERVICE)] = fwd
        if rev is not None:
            self.s.conntrack[CtKey(be.addr, p.saddr, be.port, p.sport, p.proto, REPLY)] = rev

    def _lb4_new_hairpin(self, p: Packet, now: int, be, fwd: CtEntry, rev: CtEntry, why: list):
        """The client is its own backend: masqueraded as the node with an allocated port; the
        reply entry is the mapping's SNAT_IN entry, restoring the frontend and the client. None,
        or the Result of a drop."""
        rev.hairpin, rev.snat_addr, rev.snat_port = True, p.saddr, p.sport
        port = self._snat4_claim(self._snat4_after_dnat(p, be), now, why, p.sport, rev)
        if port is None:
            return self._dp_drop(p.frame, "DROP_SNAT_EXHAUSTED", why + ["no free port for the hairpin"])
        fwd.hairpin, fwd.snat_addr, fwd.snat_port = True, self.s.node_ip, port
        self._lb4_flow_store(p, be, fwd, None)
        self._metrics_count("M_HAIRPIN")
        why.append(f"hairpin: the client is its own backend, masqueraded as the node {self.s.node_ip}:{port}")
        return None

    def _lb4_new_flow_masq(self, p: Packet, svc, where: int) -> bool:
        """externalTrafficPolicy Cluster; on the uplink, a client outside the cluster reaching a
        cluster IP too."""
        return svc.masquerade or (where == AT_UPLINK and self._lb4_is_vip(p.daddr)
                                                and p.saddr not in self.s.config.cluster_cidr)

    def _lb4_new_nat(self, p: Packet, svc, now: int, be, fwd: CtEntry, rev: CtEntry, where: int, why: list):
        """Every other new flow: DNAT, masqueraded if it must be; replies to be given the node's
        own address as source are translated on egress only. None, or the Result of a drop."""
        masq = self._lb4_new_flow_masq(p, svc, where)
        if where == AT_UPLINK or masq or p.daddr == self.s.node_ip:
            fwd.egress = rev.egress = True
        if masq:
            port = self._snat4_map(self._snat4_after_dnat(p, be), now, why)
            if port is None:
                return self._dp_drop(p.frame, "DROP_SNAT_EXHAUSTED", why + ["no free port to masquerade"])
            fwd.snat_addr, fwd.snat_port = self.s.node_ip, port
            why.append("masqueraded to the node IP on the way to the backend")
        elif fwd.egress:
            why.append("the reply gets the node's address as source: translated on egress")
        self._lb4_flow_store(p, be, fwd, rev)
        return None

    def _lb4_new_flow(self, p: Packet, svc, now: int, where: int, why: list) -> Result:
        """A packet to a frontend no flow holds (svc None: a VIP's port it does not serve)."""
        bad = self._pkt4_check_options(p)
        if bad:
            return self._dp_drop(p.frame, bad, why + ["service traffic with an unsupported header"])
        if p.later_fragment:
            return self._dp_drop(p.frame, "DROP_FRAGMENT", why + ["a later fragment never starts a flow"])
        if svc is None:
            return self._lb4_reject(p, "REJECT_PORT_UNSERVED", [f"VIP {p.daddr} serves no {p.dport}/{p.proto}"])
        be = self._lb4_new_flow_backend(p, svc, now, why)
        if isinstance(be, Result):
            return be
        fwd, rev = self._lb4_new_flow_entries(p, svc, now, be)
        if where == AT_POD and be.addr == p.saddr:
            r = self._lb4_new_hairpin(p, now, be, fwd, rev, why)
        else:
            r = self._lb4_new_nat(p, svc, now, be, fwd, rev, where, why)
        if r is not None:
            return r
        why.append(f"DNAT {p.daddr}:{p.dport} -> {be.addr}:{be.port}")
        p = self._nat4_dnat(p, fwd)
        self._metrics_count("M_DNAT_NEW")
        return self._lb4_forward(p, where == AT_POD and fwd.hairpin, "M_DNAT_NEW", why)

    # -- pod.c -------------------------------------------------------------------------------------

    def _pod_untranslated(self, p: Packet, now: int, egress: bool, why: list):
        """ICMP (but errors about our flows), other protocols, later fragments whose first was not
        seen here: dropped when a pod sends them to a VIP, else passed. None for TCP/UDP with ports."""
        reason = "DROP_UNKNOWN_L4"
        if p.proto == ICMP and p.icmp_type in ICMP_ERRORS:
            r = self._icmp4_error_at_pod(p, now, why, egress)
            if r is not None:
                return r
        if p.proto in (TCP, UDP):
            if p.has_ports:
                return None
            reason = "DROP_FRAGMENT"
        if not egress and self._lb4_is_vip(p.daddr):
            return self._dp_drop(p.frame, reason, why + [f"protocol {p.proto} to VIP {p.daddr}, not translated"])
        return self._dp_pass(p.frame, why + [f"protocol {p.proto}, not translated"])

    def _pod_new_flow(self, p: Packet, now: int, why: list) -> Result:
        svc = self._lb4_lookup_service_for_pod(p.daddr, p.dport, p.proto)
        if svc is None and not self._lb4_is_vip(p.daddr):
            self._ct4_release_reused(p, now, why)
            return self._dp_pass(p.frame, why + ["not service traffic"])
        return self._lb4_new_flow(p, svc, now, AT_POD, why)

    def from_pod(self, frame: bytes, now: int) -> Result:
        why = []
        p, r = self._pkt4_begin(frame, why)
        if r is None:
            r = self._pod_untranslated(p, now, HOOK_INGRESS, why)
        if r is not None:
            return r
        # replies of local backends, except to a frontend that is the node's own address
        key, e = self._ct4_lookup_reply(p, REPLY, now, why)
        if e is not None and not e.egress:
            return self._lb4_known_flow(p, now, key, e, XLATE_REVNAT, AT_POD, why)
        # replies to the node's address: a hairpin flow's, or a flow's masqueraded to this pod
        key, e = self._ct4_lookup_reply(p, SNAT_IN, now, why)
        if e is not None:
            return self._lb4_known_flow(p, now, key, e, XLATE_REVNAT if e.hairpin else XLATE_UNSNAT, AT_POD, why)
        if self._snat4_orphan(p):
            return self._dp_drop(p.frame, "DROP_CT_LOST", why + ["to a NAT port of the node no mapping holds"])
        key, e = self._ct4_lookup_flow(p, SERVICE, now, why)
        if e is not None:
            return self._lb4_known_flow(p, now, key, e, XLATE_DNAT, AT_POD, why)
        return self._pod_new_flow(p, now, why)

    def to_pod(self, frame: bytes, now: int) -> Result:
        why = []
        p, r = self._pkt4_begin(frame, why)
        if r is None:
            r = self._pod_untranslated(p, now, HOOK_EGRESS, why)
        if r is not None:
            return r
        key, e = self._ct4_lookup_reply(p, REPLY, now, why)       # replies from backends on any node
        if e is not None:
            return self._lb4_known_flow(p, now, key, e, XLATE_REVNAT, AT_POD, why)
        key, e = self._ct4_lookup_flow(p, SNAT_OUT, now, why)     # a flow masqueraded to this pod
        if e is not None:
            return self._lb4_known_flow(p, now, key, e, XLATE_REVNAT if e.hairpin else XLATE_SNAT, AT_POD, why)
        return self._dp_pass(p.frame, why + ["no flow of ours"])


# -- the uplink (docs/datapath.md, "The node uplink") and the node's sockets: node.c, sock.c ---------

class Datapath(PodHooks):
    """All hooks of one node, on one state: from_pod / to_pod (PodHooks), the uplink's to_netdev /
    from_netdev (bpf/node.c) and the node's own sockets (bpf/sock.c)."""

    def _uplink_untranslated(self, p: Packet, now: int, egress: bool):
        """ICMP errors (icmp.h); other ICMP, other protocols, unknown later fragments: passed.
        None for TCP/UDP with ports."""
        if p.proto == ICMP and p.icmp_type in ICMP_ERRORS and (self.s.config is not None or not egress):
            return self._icmp4_error_at_uplink(p, now, egress)
        if p.proto not in (TCP, UDP) or not p.has_ports or (egress and self.s.config is None):
            return self._dp_pass(p.frame, ["not translated on the uplink"])
        return None

    def _uplink_no_local_endpoint(self, p: Packet) -> bool:
        """A node process to a cluster IP with no local endpoint (internalTrafficPolicy Local)."""
        if p.saddr != self.s.config.node_ip or not self._lb4_is_vip(p.daddr):
            return False
        svc = self._lb4_lookup_service(p.daddr, p.dport, p.proto)
        return svc is not None and not svc.targets and svc.local_only

    def to_netdev(self, frame: bytes, now: int) -> Result:
        why = []
        p, r = self._pkt4_begin(frame, why)
        if r is None:
            r = self._uplink_untranslated(p, now, HOOK_EGRESS)
        if r is not None:
            return r
        key, e = self._ct4_lookup_reply(p, REPLY, now, [])       # replies of NodePort flows
        if e is not None and e.egress:
            return self._lb4_known_flow(p, now, key, e, XLATE_REVNAT, AT_UPLINK, why)
        key, e = self._ct4_lookup_flow(p, SNAT_OUT, now, why)
        if e is not None:
            return self._lb4_known_flow(p, now, key, e, XLATE_SNAT, AT_UPLINK, why)
        if self._uplink_no_local_endpoint(p):
            return self._dp_drop(frame, "DROP_NO_LOCAL_ENDPOINT", why + ["a node process to a cluster IP with no local endpoint"])
        if not self._snat4_should_masquerade(p, now):
            return self._dp_pass(frame, why + ["no masquerade for this source/destination"])
        bad = self._pkt4_check_options(p)
        if bad:
            return self._dp_drop(frame, bad, why + ["to be masqueraded, unsupported header"])
        if p.later_fragment:
            return self._dp_drop(frame, "DROP_FRAGMENT", why + ["a later fragment of an unmapped flow"])
        return self._snat4_new_flow(p, now, why)

    def from_netdev(self, frame: bytes, now: int) -> Result:
        why = []
        p, r = self._pkt4_begin(frame, why)
        if r is None:
            r = self._uplink_untranslated(p, now, HOOK_INGRESS)
        if r is not None:
            return r
        key, e = self._ct4_lookup_reply(p, SNAT_IN, now, why)    # replies to masqueraded flows
        if e is not None:
            return self._lb4_known_flow(p, now, key, e, XLATE_UNSNAT, AT_UPLINK, why)
        key, e = self._ct4_lookup_flow(p, SERVICE, now, why)     # NodePort, LoadBalancer, external IPs
        if e is not None:
            return self._lb4_known_flow(p, now, key, e, XLATE_DNAT, AT_UPLINK, why)
        svc = self._lb4_lookup_service(p.daddr, p.dport, p.proto)
        if svc is not None or self._lb4_is_vip(p.daddr):
            return self._lb4_new_flow(p, svc, now, AT_UPLINK, why)
        if self._snat4_orphan(p):
            return self._dp_drop(frame, "DROP_CT_LOST", why + ["to a NAT port of the node no mapping holds"])
        self._snat4_note_inbound(p, now)
        self._ct4_release_reused(p, now, why)
        return self._dp_pass(frame, why + ["no flow of ours"])

    # -- sock.c, socklb.h (docs/datapath.md, "Host-network clients") ------------------------------

    def sock_connect(self, proto: int, daddr: IPv4Address, dport: int, cookie: int, now: int):
        """sock4_translate: connect() (or an unconnected UDP send) of a node process to
        daddr:dport: where the socket really goes, (address, port); or "refused" (ECONNREFUSED)."""
        svc = self._lb4_lookup_service_for_pod(daddr, dport, proto)
        if svc is None:
            if self._lb4_is_vip(daddr):
                self._metrics_count("REJECT_PORT_UNSERVED")
                return "refused"
            return daddr, dport
        node_ip = self.s.config.node_ip
        if not svc.targets and not svc.local_only:
            self._metrics_count("REJECT_NO_ENDPOINTS")
            return "refused"
        if not self._lb4_source_allowed(svc, node_ip) or not svc.targets:
            return daddr, dport
        be = self._lb4_choose_backend(svc, node_ip, self._sock4_hash(cookie, daddr, dport, proto), now, [])
        self._metrics_count("M_SOCK_LB")
        return be.addr, be.port

    def _sock4_hash(self, cookie: int, daddr: IPv4Address, dport: int, proto: int) -> int:
        """A new socket's hash: the seed, its cookie and the frontend (there is no source port yet)."""
        le = lambda b: int.from_bytes(b, "little")  # noqa: E731
        h = hash_mix32(self.s.seed ^ (cookie & 0xFFFFFFFF))
        h = hash_mix32(h ^ (cookie >> 32))
        h = hash_mix32(h ^ le(daddr.packed))
        return hash_mix32(h ^ (le(struct.pack("!H", dport)) | proto << 16))
