"""The netfilter source of `dataplane trace`: what nftables (and iptables-nft) rules did to each
packet, on the kube-proxy backends, read from `nft monitor trace` in a node's namespace.

Owns: the node's `table ip dataplane-trace` (two base chains that set `meta nftrace` on the packets
we trace), the `nft monitor trace` process reading the kernel's trace events, and the parsing of
its lines into one event per packet.

How it works, and why this way:
- Tracing is switched on per packet by `meta nftrace set 1` in a table of our own, at hook
  prerouting and output, priority -350: before conntrack (-200) and every kube-proxy chain, so
  that a packet is marked before the first rule that could change it. kube-proxy's own tables are
  never touched.
- iptables-nft keeps its rules in nftables tables (`ip nat`, `ip filter`), so the same mark traces
  them too; `nft monitor trace` names their chains as iptables does (PREROUTING, KUBE-SERVICES).
- iptables-legacy rules live in x_tables, which sends no nftables trace events: the mark shows
  the packet passing any nftables chains (with the legacy DNAT's effect visible in later hooks),
  never a legacy rule. x_tables' own TRACE target logs through nf_log, and the namespace's default
  IPv4 logger (nf_log_ipv4, syslog) logs from namespaces other than the host's only when the
  host-wide sysctl net.netfilter.nf_log_all_netns is 1 (Documentation/networking/
  netfilter-sysctl.rst; the sysctl exists only in the host's namespace): a host setting the lab
  does not change, so start() refuses that mode. (Binding nfnetlink_log as the namespace's IPv4
  logger, net.netfilter.nf_log.2, a per-namespace setting, would deliver TRACE records to an NFLOG
  group 0 listener; not implemented.)
- nft 1.0.x resolves a rule's text from a cache it fills once at start and does not update, not
  even under `nft monitor` with ruleset events: a rule added later (every kube-proxy sync) is
  printed as `unknown rule handle N`. Those are resolved here with `nft -a list chain`, once each.
- The trace has no end marker: a packet's event is emitted when it is dropped, when the same
  trace id starts a new packet in our table (ids derive from the skb and its flow, and repeat for
  a flow's later packets), after IDLE seconds without a line, or at close(). An event's time is
  when its first line was read (nft prints no timestamps): poll often, which also keeps the
  monitor's pipe from filling while the kernel's events wait.
- Only rules that matched appear (nft traces a rule when it decides something), and each hook's
  `packet:` line shows the packet before that hook's NAT.
- The table's name is fixed: one tracer per node namespace at a time.
"""
from __future__ import annotations

import ipaddress
import os
import re
import select
import shutil
import subprocess
import tempfile
import time

from ...errors import DataplaneError
from ...lab import netns
from ...lab.names import NFT_TRACE_TABLE

TABLE = NFT_TRACE_TABLE
PRIORITY = -350                     # before raw (-300) and conntrack (-200): nothing has changed the packet yet
MODES = ("nftables", "iptables", "iptables-legacy")
IDLE = 0.2                          # seconds without a line after which a packet's trace is complete
READY_TIMEOUT = 5.0                 # for `nft monitor trace` to subscribe to the trace events
NFNLGRP_NFTRACE = 9                 # the netlink multicast group of nftables trace events
TOOL_TIMEOUT = 30
TERMINAL = {"accept", "drop", "queue", "stolen"}
LEGACY_REASON = (
    "netfilter tracing is not available for iptables-legacy: x_tables rules send no nftables trace "
    "events, and their TRACE target logs through nf_log, whose default logger in a node namespace "
    "(nf_log_ipv4) writes to the kernel log from namespaces other than the host's only when the "
    "host-wide sysctl net.netfilter.nf_log_all_netns=1 (Documentation/networking/netfilter-sysctl.rst), "
    "a host setting the lab does not change. (Binding nfnetlink_log as the namespace's own IPv4 logger "
    "would deliver TRACE records to an NFLOG listener in the namespace; that reader is not written.) "
    "`dataplane trace --drops` still shows this backend's dropped packets; `dataplane explain` walks its "
    "rules; the same rules traced: the iptables backend (iptables-nft).")

_LINE = re.compile(r"^trace id (?P<id>[0-9a-f]+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) (?P<rest>.*?)\s*$")
_RULE = re.compile(r"^(?P<rule>(?:rule .*|unknown rule handle \d+)) \(verdict (?P<verdict>[^)]*)\)$")
_END = re.compile(r"^(?P<kind>policy|verdict) (?P<verdict>\S+(?: (?!meta )\S+)?)(?: meta mark (?P<mark>\S+))?$")
_UNKNOWN = re.compile(r"^unknown rule handle (\d+)$")
_COUNTER = re.compile(r"counter packets \d+ bytes \d+")
_DNAT = re.compile(r"\bdnat (?:ip )?to (\S+)")
_HANDLE = re.compile(r"^\s*(?P<rule>.*?) # handle (?P<handle>\d+)$")
_PACKET_FIELDS = {                       # packet key -> pattern in a `packet:` line
    "iif": r'\biif "([^"]*)"', "oif": r'\boif "([^"]*)"',
    "src": r"\bip saddr (\S+)", "dst": r"\bip daddr (\S+)", "ip_protocol": r"\bip protocol (\S+)",
    "tcp_sport": r"\btcp sport (\d+)", "tcp_dport": r"\btcp dport (\d+)", "tcp_flags": r"\btcp flags == (\S+)",
    "udp_sport": r"\budp sport (\d+)", "udp_dport": r"\budp dport (\d+)",
    "icmp_type": r"\bicmp type (\S+)", "mark": r"\bmeta mark (\S+)",
    "ct_state": r"\bct state (\S+)", "ct_direction": r"\bct direction (\S+)",
}


def trace_table_text(addresses: list[str] | None) -> str:
    """Our table, replaced whole in one transaction (a leftover of a killed run goes with it)."""
    if addresses is None:
        selectors = ["meta l4proto { tcp, udp, icmp }"]
    else:
        listed = ", ".join(addresses)
        selectors = [f"ip saddr {{ {listed} }}", f"ip daddr {{ {listed} }}"]
    chains = []
    for chain, hook in (("prerouting", "prerouting"), ("output", "output")):
        rules = "".join(f"\t\t{s} meta nftrace set 1\n" for s in selectors)
        chains.append(f"\tchain {chain} {{\n\t\ttype filter hook {hook} priority {PRIORITY}; policy accept;\n{rules}\t}}\n")
    return (f"add table ip {TABLE}\ndelete table ip {TABLE}\n"
            f"table ip {TABLE} {{\n\tcomment \"dataplane trace: marks packets for nft monitor trace\"\n"
            + "".join(chains) + "}\n")


def _addresses(match: dict | None) -> list[str] | None:
    if match is None or match.get("addresses") is None:
        return None
    addresses = match["addresses"]
    if isinstance(addresses, str) or not addresses:
        raise DataplaneError(f"trace match: addresses must be a non-empty list of IPv4 addresses, got {addresses!r}")
    try:
        return [str(ipaddress.IPv4Address(a)) for a in addresses]
    except ValueError as exc:
        raise DataplaneError(f"trace match: addresses must be IPv4 addresses: {exc}") from None


def parse_packet(text: str) -> dict:
    """The fields of a `packet:` line that say which packet it is and where it is."""
    found = {k: m.group(1) for k, p in _PACKET_FIELDS.items() if (m := re.search(p, text))}
    proto = next((p for p in ("tcp", "udp") if f"{p}_sport" in found and f"{p}_dport" in found), None)
    packet = {"src": found.get("src"), "dst": found.get("dst"),
              "proto": proto or ("icmp" if "icmp_type" in found else found.get("ip_protocol"))}
    if proto:
        packet["sport"], packet["dport"] = int(found[f"{proto}_sport"]), int(found[f"{proto}_dport"])
    for key in ("iif", "oif", "icmp_type", "tcp_flags", "mark", "ct_state", "ct_direction"):
        if key in found:
            packet[key] = found[key]
    return packet


def _drain(fd: int) -> tuple[bytes, bool]:
    """Everything readable now from a non-blocking fd, and whether it reached EOF."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return b"".join(chunks), False
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)


TCP_FLAG_BITS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20, "ecn": 0x40,
                 "cwr": 0x80}


def tcp_flag_letters(text: str) -> str:
    """nft's TCP flags (`syn`, `syn | ack`, `0x18`) as tcpdump writes them (S, S., P.), as the
    eBPF trace does."""
    bits = 0
    for word in re.split(r"[|,\s]+", text.strip()):
        if not word:
            continue
        try:
            bits |= int(word, 0)
        except ValueError:
            bits |= TCP_FLAG_BITS.get(word.lower(), 0)
    letters = "".join(ch for bit, ch in ((0x02, "S"), (0x01, "F"), (0x04, "R"), (0x08, "P")) if bits & bit)
    return letters + ("." if bits & 0x10 else "") or text


def describe(e: dict) -> str:
    """The event's line (what `dataplane trace` prints): the packet, the chains it passed, the
    outcome. The clock is wall time for reading; the event's `time` stays monotonic."""
    wall = e["time"] + time.time() - time.monotonic()
    stamp = time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall % 1 * 1e6):06d}"
    p = e["packet"]
    where = f"{e['hook'] or '?'}({p.get('iif') or p.get('oif') or ''})"
    flags = f" [{tcp_flag_letters(p['tcp_flags'])}]" if p.get("tcp_flags") else ""
    proto = str(p.get("proto")).upper()
    what = (f"{proto} {p.get('src')}:{p['sport']} -> {p.get('dst')}:{p['dport']}{flags}" if "dport" in p
            else f"{proto} {p.get('src')} -> {p.get('dst')}" + (f" {p['icmp_type']}" if p.get("icmp_type") else ""))
    path = []
    for table, chain, *_ in e["steps"]:
        if not path or path[-1] != f"{table}/{chain}":
            path.append(f"{table}/{chain}")
    line = f"{stamp} {e['node']} {where} {what}: {e['verdict'].upper()}"
    if e["dnat"]:
        line += f" dnat to {e['dnat']}"
    return line + (f" via {' > '.join(path)}" if path else " (no rule matched)")


class _Packet:
    """The lines of one packet's trace, as they come."""

    def __init__(self, trace_id: str, started: float):
        self.trace_id, self.started, self.last = trace_id, started, started
        self.hook: str | None = None
        self.seen: list[dict] = []          # the packet as each base chain saw it
        self.steps: list[tuple] = []        # (table, chain, rule, verdict)
        self.mark: str | None = None

    def dropped(self) -> bool:
        return any(v == "drop" for *_, v in self.steps)

    def event(self, node: str) -> dict:
        first = dict(self.seen[0]) if self.seen else {}
        mark = first.pop("mark", None)
        out = {"time": self.started, "node": node, "source": "netfilter", "trace_id": self.trace_id,
               "hook": self.hook, "packet": first, "steps": list(self.steps), "verdict": self._verdict(),
               "dnat": self._dnat(first), "rewritten": self._rewritten(first), "mark": self.mark or mark}
        out["text"] = describe(out)
        return out

    def _verdict(self) -> str:
        # drop ends the packet; otherwise the last chain that decided (accept, a policy) stands
        if self.dropped():
            # a reject is a drop and an ICMP error sent back: the trace says drop, the rule says why
            rule = next(r for _, _, r, v in self.steps if v == "drop")
            return "reject" if re.search(r"\breject\b", rule, re.IGNORECASE) else "drop"
        return next((v for *_, v in reversed(self.steps) if v in TERMINAL), "accept")

    def _dnat(self, first: dict) -> str | None:
        for _, _, rule, verdict in self.steps:
            if verdict == "accept" and (m := _DNAT.search(rule)):
                return m.group(1)
        # a DNAT no rule text names (x_tables, an unresolved rule): the later hooks saw it
        changed = self._rewritten(first) or {}
        if "dst" in changed or "dport" in changed:
            dst = changed.get("dst", first.get("dst"))
            port = changed.get("dport", first.get("dport"))
            return f"{dst}:{port}" if port is not None else dst
        return None

    def _rewritten(self, first: dict) -> dict | None:
        """What a later hook saw changed (nft traces a packet before its NAT in each hook: a
        DNATed packet shows its new address from the next hook on)."""
        if len(self.seen) < 2:
            return None
        last = self.seen[-1]
        changed = {k: last[k] for k in ("src", "dst", "sport", "dport") if k in last and last[k] != first.get(k)}
        return changed or None


class NetfilterTrace:
    """Trace packets through netfilter in one node's namespace. start(), then poll() for events,
    then close() (or use it as a context manager)."""

    def __init__(self, ns: str, node: str, mode: str, match: dict | None = None):
        if mode not in MODES:
            raise DataplaneError(f"netfilter trace: mode {mode!r} is not one of {', '.join(MODES)}")
        self.ns, self.node, self.mode = ns, node, mode
        self.addresses = _addresses(match)
        self.proc: subprocess.Popen | None = None
        self._stderr = None
        self._buffer = b""
        self._open: dict[str, _Packet] = {}
        self._ready: list[dict] = []
        self._rules: dict[tuple[str, str, str], dict[int, str]] = {}   # (family, table, chain) -> handle -> text
        self._table_added = False
        self._closed = False

    # --- setup ---------------------------------------------------------------------------------

    def start(self) -> "NetfilterTrace":
        if self.mode == "iptables-legacy":
            raise DataplaneError(f"{LEGACY_REASON} (node {self.node}, namespace {self.ns})")
        if self.proc is not None or self._closed:
            raise DataplaneError("netfilter trace: start() may be called once")
        if shutil.which("nft") is None:
            raise DataplaneError("netfilter trace needs nft (the nftables package): not found on PATH")
        if not netns.exists(self.ns):
            raise DataplaneError(f"netfilter trace: network namespace {self.ns} (node {self.node}) does not exist")
        try:
            # the monitor first: a packet marked before it subscribed would be lost
            self._start_monitor()
            self._add_table()
        except BaseException:
            self.close()
            raise
        return self

    def _start_monitor(self) -> None:
        self._stderr = tempfile.TemporaryFile()   # nft warns there (iptables-nft tables): kept off the lines we parse
        self.proc = netns.popen(self.ns, ["nft", "monitor", "trace"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=self._stderr)
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._subscribed():
            if self.proc.poll() is not None:
                raise DataplaneError(f"nft monitor trace exited in {self.ns} ({self.proc.returncode}): {self._errors()}")
            if time.monotonic() > deadline:
                raise DataplaneError(f"nft monitor trace in {self.ns} did not subscribe to trace events "
                                     f"within {READY_TIMEOUT:.0f} s")
            time.sleep(0.01)

    def _subscribed(self) -> bool:
        """Has the monitor joined the trace group? /proc/PID/net/netlink lists the sockets of the
        process's namespace with their groups (a bitmap of groups 1-32)."""
        try:
            with open(f"/proc/{self.proc.pid}/net/netlink") as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            return False
        bit = 1 << (NFNLGRP_NFTRACE - 1)
        return any(len(r) > 3 and r[1] == "12" and r[2] == str(self.proc.pid) and int(r[3], 16) & bit for r in rows)

    def _add_table(self) -> None:
        proc = netns.run(self.ns, ["nft", "-f", "-"], timeout=TOOL_TIMEOUT, input=trace_table_text(self.addresses))
        if proc.returncode != 0:
            raise DataplaneError(f"nft refused table ip {TABLE} in {self.ns}: {proc.stderr.strip()[-600:]}")
        self._table_added = True

    def _errors(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()[-600:] or "(no message)"

    # --- reading -------------------------------------------------------------------------------

    def poll(self, timeout: float) -> list[dict]:
        """The packets whose trace completed, waiting up to `timeout` seconds for one."""
        if self.proc is None or self._closed:
            raise DataplaneError("netfilter trace: poll() before start() or after close()")
        deadline = time.monotonic() + timeout
        while True:
            eof = self._read(max(0.0, min(deadline, self._next_idle()) - time.monotonic()))
            self._complete_idle(time.monotonic())
            if eof:
                self._complete_all()
                if not self._ready:
                    raise DataplaneError(f"nft monitor trace exited in {self.ns} ({self.proc.poll()}): {self._errors()}")
            if self._ready or time.monotonic() >= deadline:
                ready, self._ready = self._ready, []
                return ready

    def _next_idle(self) -> float:
        return min((p.last + IDLE for p in self._open.values()), default=float("inf"))

    def _read(self, wait: float) -> bool:
        """Read what the monitor wrote (waiting up to `wait`) and parse whole lines; True at EOF.
        Raw reads on a non-blocking pipe: a buffered text reader would hold lines select() cannot see."""
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], wait)[0]:
            return False
        data, eof = _drain(fd)
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        now = time.monotonic()
        for line in lines:
            self.feed(line.decode(errors="replace"), now)
        return eof

    def feed(self, line: str, now: float) -> None:
        """One line of `nft monitor trace`."""
        m = _LINE.match(line)
        if not m:
            return                          # blank lines, nft's own remarks
        tid, family, table, chain, rest = m.group("id", "family", "table", "chain", "rest")
        if rest.startswith("packet: "):
            self._packet_line(tid, table, chain, parse_packet(rest[len("packet: "):]), now)
            return
        packet = self._open.get(tid) or self._begin(tid, now)
        packet.last = now
        if table == TABLE:
            return                          # our own marking rules: not what the dataplane did
        if r := _RULE.match(rest):
            rule = self._rule_text(family, table, chain, r.group("rule"))
            packet.steps.append((table, chain, rule, r.group("verdict")))
        elif e := _END.match(rest):
            # `policy accept`: a base chain's end; `verdict continue`: a regular chain's end (back to its caller)
            packet.steps.append((table, chain, e.group("kind") if e.group("kind") == "policy" else "",
                                 e.group("verdict")))
            packet.mark = e.group("mark") or packet.mark
        else:
            packet.steps.append((table, chain, rest, ""))   # a line of a newer nft: kept as it came
        if packet.dropped():
            self._complete(tid)

    def _packet_line(self, tid: str, table: str, chain: str, packet_fields: dict, now: float) -> None:
        packet = self._open.get(tid)
        if table == TABLE:
            # our marking chain is where a packet's trace begins: an open one with this id is done
            if packet is not None:
                self._complete(tid)
            packet = self._begin(tid, now)
            packet.hook = chain
        elif packet is None:
            packet = self._begin(tid, now)  # marked by someone else's rule (an iptables TRACE)
        packet.last = now
        packet.seen.append(packet_fields)
        packet.mark = packet_fields.get("mark") or packet.mark

    def _begin(self, tid: str, now: float) -> _Packet:
        packet = self._open[tid] = _Packet(tid, now)
        return packet

    def _complete(self, tid: str) -> None:
        packet = self._open.pop(tid)
        if packet.seen or packet.steps:
            self._ready.append(packet.event(self.node))

    def _complete_idle(self, now: float) -> None:
        for tid in [t for t, p in self._open.items() if now - p.last >= IDLE]:
            self._complete(tid)

    def _complete_all(self) -> None:
        for tid in list(self._open):
            self._complete(tid)

    def _rule_text(self, family: str, table: str, chain: str, printed: str) -> str:
        """The rule as nft prints it, without counters (they change with every packet); a rule
        nft's stale cache does not know is looked up by its handle."""
        if printed.startswith("rule "):
            return _COUNTER.sub("counter", printed[len("rule "):]).strip()
        handle = int(_UNKNOWN.match(printed).group(1))
        key = (family, table, chain)
        if handle not in self._rules.get(key, {}):
            self._rules[key] = self._list_chain(family, table, chain)
        return self._rules[key].get(handle, printed)

    def _list_chain(self, family: str, table: str, chain: str) -> dict[int, str]:
        proc = netns.run(self.ns, ["nft", "-a", "list", "chain", family, table, chain], timeout=TOOL_TIMEOUT)
        rules = {}
        for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
            m = _HANDLE.match(line)
            if m and not m.group("rule").startswith(("chain ", "type ")):
                rules[int(m.group("handle"))] = _COUNTER.sub("counter", m.group("rule")).strip()
        return rules

    # --- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the monitor and delete our table; safe to call again."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_monitor()
        finally:
            self._delete_table()

    def _stop_monitor(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _delete_table(self) -> None:
        # only a table this tracer added: a tracer that never started leaves the node alone
        if not self._table_added or not netns.exists(self.ns):
            return                          # the namespace went, and the table with it
        proc = netns.run(self.ns, ["nft", "delete", "table", "ip", TABLE], timeout=TOOL_TIMEOUT)
        if proc.returncode != 0 and "No such file or directory" not in proc.stderr:
            raise DataplaneError(f"nft could not delete table ip {TABLE} in {self.ns}: {proc.stderr.strip()[-600:]}")
        self._table_added = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def __enter__(self) -> "NetfilterTrace":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
