"""What the iptables and nftables rule walkers share: the packet walked, the walk they return, and
the state of a walk in progress (the packet's current destination, its mark, its NAT, the steps).

A walk follows one NEW packet through the installed rules, chain by chain, as kube-proxy's own
packet-flow tracers do in its tests (pkg/proxy/iptables/proxier_test.go `tracePacket`,
pkg/proxy/nftables/helpers_test.go `nftablesTracer`), for `dataplane explain`. Unlike those, it
follows the netfilter hooks a real packet takes (PREROUTING, then INPUT or FORWARD by the
destination after DNAT, then POSTROUTING; OUTPUT then POSTROUTING for a node's own packet, and
INPUT over loopback when that is addressed to the node), and at a random choice among endpoints
it lists every candidate with its probability and follows one, so the DNAT it shows is concrete.

Owns: Packet, Step, Candidate, Walk and the Trace both walkers fill in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from typing import Callable, Iterator, NamedTuple

from ...errors import DataplaneError

ORIGINS = ("forwarded", "local")
PROTOCOLS = ("TCP", "UDP")
# Protocol numbers as rules and listings may print them (`-p 6`, `meta l4proto 6`).
PROTOCOL_NAMES = {"6": "tcp", "17": "udp", "132": "sctp", "1": "icmp"}
# Chains whose only job is setting kube-proxy's masquerade bit, in either mode: a MARK there is
# described as what it means.
MASQ_MARK_CHAINS = ("KUBE-MARK-MASQ", "mark-for-masquerade")
# The kernel's local table always holds 127.0.0.0/8 (`local 127.0.0.0/8 dev lo`), so addrtype
# LOCAL and `fib ... type local` see it whatever the node's addresses.
LOOPBACK = IPv4Network("127.0.0.0/8")
# Far deeper than any kube-proxy path (PREROUTING -> SERVICES -> EXT -> SVC -> SEP -> MARK-MASQ);
# reaching it means the rules loop.
MAX_DEPTH = 32


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection, as it reaches the node."""
    src: str
    dst: str
    protocol: str                       # TCP | UDP
    dport: int
    sport: int = 40000
    origin: str = "forwarded"           # forwarded: from a pod or from outside; local: a process on the node
    local_addresses: tuple[str, ...] = ()   # the node's own addresses (127.0.0.0/8 is always local)
    in_interface: str | None = None     # for -i / iifname rules (forwarded packets)
    out_interface: str | None = None    # for -o / oifname rules

    def __post_init__(self):
        object.__setattr__(self, "local_addresses", tuple(self.local_addresses))
        for name, value in [("src", self.src), ("dst", self.dst),
                            *(("local address", a) for a in self.local_addresses)]:
            try:
                IPv4Address(value)
            except ValueError:
                raise DataplaneError(f"packet: {name} {value!r} is not an IPv4 address") from None
        if self.protocol not in PROTOCOLS:
            raise DataplaneError(f"packet: protocol {self.protocol!r}: expected TCP or UDP")
        if self.origin not in ORIGINS:
            raise DataplaneError(f"packet: origin {self.origin!r}: expected forwarded or local")
        for name in ("dport", "sport"):
            if not 0 < getattr(self, name) < 65536:
                raise DataplaneError(f"packet: {name} {getattr(self, name)} is not a port")

    @property
    def proto(self) -> str:
        """The protocol as rules write it: tcp | udp."""
        return self.protocol.lower()


@dataclass(frozen=True)
class Step:
    """One rule the packet matched (or a policy it met), with what it did."""
    table: str          # iptables: nat, filter, ...; nftables: "ip kube-proxy"
    chain: str
    rule: str           # the rule's text as installed (iptables-save / nft syntax)
    action: str         # a short phrase: "jump KUBE-SVC-X", "DNAT to 10.0.1.5:8080", "REJECT", ...


class Candidate(NamedTuple):
    """An endpoint a service chain's random choice can take."""
    endpoint: str       # "ip:port" of its DNAT ("" when the chain has none)
    probability: float
    chain: str          # the endpoint chain (KUBE-SEP-... / endpoint-...)


@dataclass
class Walk:
    """Where one new packet goes through the rules, and why."""
    packet: Packet
    steps: list[Step]
    candidates: list[Candidate]     # every endpoint the service chain could pick (empty: no choice met)
    picked: int | None              # the index into candidates the walk followed
    verdict: str                    # DNAT | ACCEPT (untranslated) | REJECT | DROP
    endpoint: str | None            # "ip:port" the packet was DNATed to, if it was
    # leaves with the node's address: a MASQUERADE in nat POSTROUTING (kube-proxy's, for the
    # masquerade mark; or ip-masq-agent's egress rule, where the text has it)
    masquerade: bool
    affinity: list[str] = field(default_factory=list)   # session affinity: what a remembered client would do
    notes: list[str] = field(default_factory=list)      # assumptions the walk made (implicit jumps, ...)


def address_matches(address: str, spec: str) -> bool:
    """Is `address` the address, inside the CIDR or in the range `a-b` that a rule names?"""
    addr = ip_address(address)
    try:
        if "-" in spec:
            low, high = spec.split("-", 1)
            return ip_address(low) <= addr <= ip_address(high)
        return addr in ip_network(spec, strict=False)
    except ValueError:
        raise DataplaneError(f"{spec!r} is not an IPv4 address, network or range") from None


def protocol_name(text: str) -> str:
    """tcp | udp | ... from a name or a number, lower case."""
    return PROTOCOL_NAMES.get(text, text.lower())


def interface_matches(interface: str, pattern: str) -> bool:
    """An interface name against a rule's: exact, or a prefix ending in `+` (iptables) or `*` (nft)."""
    if pattern.endswith(("+", "*")):
        return interface.startswith(pattern[:-1])
    return interface == pattern


def share_text(probability: float) -> str:
    """0.333.. -> "1/3": a probability as the fraction a cascade of 1/(n-i) rules gives."""
    if probability >= 1:
        return "1"
    fraction = Fraction(probability).limit_denominator(1000)
    if abs(float(fraction) - probability) < 1e-6:
        return f"{fraction.numerator}/{fraction.denominator}"
    return f"{probability:.4g}"


def mark_action(chain: str, operand: int, mark: int) -> str:
    """A MARK's step phrase: what kube-proxy means by it where it is its masquerade chain."""
    if chain in MASQ_MARK_CHAINS:
        return f"mark for masquerade ({operand:#x})"
    return f"set mark {mark:#x}"


class Trace:
    """A walk in progress: the packet as the rules now see it and what they did to it."""

    def __init__(self, packet: Packet, pick: int | None):
        self.packet = packet
        self.pick = pick
        self.dst, self.dport = packet.dst, packet.dport      # after DNAT, the endpoint's
        self.mark = 0
        self.dnat_endpoint: str | None = None
        self.masquerade = False
        self.final: str | None = None                       # DROP | REJECT once the packet is gone
        self.hook: str | None = None
        self.nat_bound: set[str] = set()                    # hooks whose NAT is decided
        self.steps: list[Step] = []
        self.candidates: list[Candidate] = []
        self.picked: int | None = None
        self.affinity: list[str] = []
        self.notes: list[str] = []

    # -- what the rules see ------------------------------------------------------------------

    def is_local(self, address: str) -> bool:
        """addrtype LOCAL / fib type local: one of the node's addresses, or loopback."""
        return address in self.packet.local_addresses or IPv4Address(address) in LOOPBACK

    def in_interface(self, where: str) -> str:
        """The input interface a rule tests: none for the node's own packets (lo once they come
        back to it); a forwarded packet's must be given, since guessing would decide the rule."""
        if self.packet.origin == "local":
            return "lo" if self.hook == "input" else ""
        if self.packet.in_interface is None:
            raise DataplaneError(f"{where}: the rule tests the input interface; give the packet's in_interface")
        return self.packet.in_interface

    def out_interface(self, where: str) -> str:
        """The output interface a rule tests: none before routing (PREROUTING, INPUT)."""
        if self.hook in ("prerouting", "input"):
            return ""
        if self.packet.out_interface is None:
            raise DataplaneError(f"{where}: the rule tests the output interface; give the packet's out_interface")
        return self.packet.out_interface

    # -- what the rules do -------------------------------------------------------------------

    def step(self, table: str, chain: str, rule: str, action: str) -> None:
        self.steps.append(Step(table, chain, rule, action))

    def dnat(self, endpoint: str, where: str) -> None:
        address, _, port = endpoint.partition(":")
        try:
            IPv4Address(address)
            self.dport = int(port) if port else self.dport
        except ValueError:
            raise DataplaneError(f"{where}: cannot read the DNAT destination {endpoint!r}") from None
        self.dst = address
        self.dnat_endpoint = f"{address}:{self.dport}"

    def stop(self, verdict: str) -> None:
        self.final = verdict

    @property
    def stopped(self) -> bool:
        return self.final is not None

    def choose(self, candidates: list[Candidate], where: str) -> int:
        """A random choice met: remember every candidate, follow the one `pick` names."""
        if self.candidates:
            raise DataplaneError(f"{where}: a second random choice on one path; kube-proxy's rules make one")
        index = 0 if self.pick is None else self.pick
        if not 0 <= index < len(candidates):
            raise DataplaneError(f"{where}: pick {index} is not one of the {len(candidates)} candidates")
        self.candidates, self.picked = candidates, index
        return index

    def note_affinity(self, text: str) -> None:
        self.affinity.append(text)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def walk(self) -> Walk:
        if self.final:
            verdict = self.final
        else:
            verdict = "DNAT" if self.dnat_endpoint else "ACCEPT"
        return Walk(self.packet, self.steps, self.candidates, self.picked, verdict, self.dnat_endpoint,
                    self.masquerade and not self.final, self.affinity, self.notes)


def hooks(trace: Trace) -> Iterator[str]:
    """The netfilter hooks a packet meets, in order; routing is decided on the destination after
    PREROUTING's (or OUTPUT's) DNAT, so this is read lazily, hook by hook."""
    if trace.packet.origin == "local":
        yield "output"
        yield "postrouting"
        if trace.is_local(trace.dst):       # delivered over loopback (its NAT was set up on the way out)
            yield "input"
        return
    yield "prerouting"
    if trace.is_local(trace.dst):
        yield "input"
        return
    yield "forward"
    yield "postrouting"


def walk_hooks(trace: Trace, run_hook: Callable[[str], None]) -> Walk:
    """Run each hook the packet meets until it is dropped or rejected."""
    for hook in hooks(trace):
        trace.hook = hook
        run_hook(hook)
        if trace.stopped:
            break
        if hook == "postrouting":
            # conntrack confirms the connection here: both NAT directions are now decided
            trace.nat_bound.update(("prerouting", "output", "input", "postrouting"))
    return trace.walk()


def cascade(probabilities: list[float]) -> list[float]:
    """Each rule of an iptables `statistic` cascade taken with p_i of what is left:
    p1, (1-p1)*p2, (1-p1)*(1-p2)*p3, ..."""
    out, left = [], 1.0
    for p in probabilities:
        out.append(left * p)
        left *= 1 - p
    return out
