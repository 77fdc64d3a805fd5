"""One new packet walked through nftables rules, chain by chain, for `dataplane explain`.

Two inputs, one model: the `add table/chain/rule/set/map/element` transaction render.py writes
for `nft -f` (Ruleset.full_text), and the nested listing `nft list table ip kube-proxy` prints on a
node (`table ip kube-proxy { map service-ips { ... elements = { ... } } chain ... { type nat hook
prerouting priority dstnat; policy accept; ... } }`, with its conventions: priorities as names
(`dstnat - 10`), `meta mark & 0x00004000 == 0x00000000`, `meta mark set meta mark | 0x00004000`,
single-element sets without braces). Base chains of `ip` and `inet` tables are walked by hook and
priority for the packet's origin; the expressions kube-proxy's nftables mode writes are
understood (verdict maps on concatenations, set lookups, numgen, fib, ct state, marks, dnat,
masquerade, affinity sets) and any other is refused by name rather than guessed.

Owns: reading nft text into tables, chains, sets and maps, and the walk over them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...errors import DataplaneError
from ..kubeproxy.walk import (MAX_DEPTH, Candidate, Packet, Trace, Walk, address_matches, interface_matches,
                              mark_action, protocol_name, share_text, walk_hooks)

__all__ = ["Packet", "Walk", "parse_nft", "walk_nftables"]

FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
WALKED_FAMILIES = ("ip", "inet")            # the ones an IPv4 packet meets
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
PRIORITY_NAMES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
BLOCKS = ("table", "chain", "set", "map")
CT_STATES = ("new", "established", "related", "invalid", "untracked")


# -- the model ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Element:
    key: tuple[str, ...]            # a concatenation's parts: ("172.30.0.41", "tcp", "80")
    value: str | None               # a map's value: "goto service-...", "drop"


@dataclass
class NftChain:
    name: str
    hook: str | None = None         # base chains only
    kind: str | None = None         # filter | nat | route
    priority: int = 0
    policy: str = "accept"
    rules: list[str] = field(default_factory=list)


@dataclass
class NftSet:
    name: str
    is_map: bool
    dynamic: bool = False           # filled by the packet path (`update @set`): affinity
    timeout: str | None = None
    elements: list[Element] = field(default_factory=list)


@dataclass
class NftTable:
    family: str
    name: str
    chains: dict[str, NftChain] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.family} {self.name}"


@dataclass(frozen=True)
class _Group:
    """A `{ ... }` in a rule: an anonymous set or verdict map, kept as its text."""
    text: str

    def items(self) -> list[str]:
        return [i.strip() for i in _split_top(self.text, ",") if i.strip()]


# -- text helpers -------------------------------------------------------------------------------

def _split_top(text: str, separator: str) -> list[str]:
    """Split on `separator` outside quotes and braces."""
    if separator not in text:
        return [text]
    parts, depth, quoted, start = [], 0, False, 0
    for i, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif not quoted and c == "{":
            depth += 1
        elif not quoted and c == "}":
            depth -= 1
        elif not quoted and depth == 0 and c == separator:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _balance(text: str) -> int:
    """Open braces minus closed ones, outside quotes."""
    if "{" not in text and "}" not in text:
        return 0
    unquoted = re.sub(r'"[^"]*"', "", text)
    return unquoted.count("{") - unquoted.count("}")


def _strip_comment(line: str) -> str:
    """Drop a `# ...` (nft -a prints `# handle 4`; transactions have comment lines) outside quotes."""
    if "#" not in line:
        return line
    quoted = False
    for i, c in enumerate(line):
        if c == '"':
            quoted = not quoted
        elif c == "#" and not quoted:
            return line[:i]
    return line


def _opens_block(line: str) -> bool:
    """`table ip t {`, `chain c {`, `set s {`, `map m {` of a nested listing."""
    words = line.split()
    return bool(words) and words[0] in BLOCKS and line.endswith("{") and _balance(line) == 1


def _statements(text: str):
    """(line number, statement): comments dropped; a statement whose braces stay open (a set's
    elements over several lines) joined into one; block openers and `}` on their own."""
    buffer, start, depth = [], 0, 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        if not buffer and (line == "}" or _opens_block(line)):
            yield number, line
            continue
        if not buffer:
            start = number
        buffer.append(line)
        depth += _balance(line)
        if depth <= 0:
            yield start, " ".join(buffer)
            buffer, depth = [], 0
    if buffer:
        raise DataplaneError(f"nft text line {start}: braces not closed ({buffer[0]!r})")


def _unquote(word: str) -> str:
    return word[1:-1] if len(word) > 1 and word[0] == word[-1] == '"' else word


def _priority(text: str, where: str) -> int:
    """`-110`, `dstnat`, `dstnat - 10`, `srcnat + 5`: a base chain's priority as a number."""
    m = re.fullmatch(r"\s*([a-z]+)?\s*(?:([+-])?\s*(\d+))?\s*", text)
    if not m or not (m.group(1) or m.group(3)) or (m.group(1) and m.group(3) and not m.group(2)):
        raise DataplaneError(f"{where}: cannot read priority {text!r}")
    name, sign, number = m.groups()
    if name and name not in PRIORITY_NAMES:
        raise DataplaneError(f"{where}: unknown priority name {name!r}")
    offset = int(number or 0) * (-1 if sign == "-" else 1)
    return (PRIORITY_NAMES[name] if name else 0) + offset


def _elements(text: str) -> list[Element]:
    """`a . tcp . 80 comment "x" : goto c, b . udp . 53 : drop` (or plain set members) -> elements;
    comments, timeouts, expiries and counters are not part of a key."""
    out = []
    for item in _split_top(text, ","):
        item = re.sub(r'\s+comment\s+"[^"]*"', "", " " + item.strip())
        item = re.sub(r"\s+(?:timeout|expires)\s+\S+|\s+counter\s+packets\s+\d+\s+bytes\s+\d+", "", item).strip()
        if not item:
            continue
        key, _, value = item.partition(" : ")
        out.append(Element(tuple(part.strip() for part in key.split(" . ")), value.strip() or None))
    return out


# -- reading ------------------------------------------------------------------------------------

def parse_nft(text: str) -> dict[str, NftTable]:
    """nft text (transaction commands, a nested listing, or both) -> tables by "family name"."""
    tables: dict[str, NftTable] = {}
    stack: list = []            # the open blocks of a listing: NftTable, then NftChain / NftSet
    for number, statement in _statements(text):
        where = f"nft line {number} ({statement[:120]!r})"
        if statement == "}":
            if not stack:
                raise DataplaneError(f"{where}: a `}}` closes nothing")
            stack.pop()
        elif _opens_block(statement):
            stack.append(_open_block(stack, tables, statement[:-1].split(), where))
        elif not stack:
            _command(tables, statement, where)
        elif isinstance(stack[-1], NftChain):
            _chain_body(stack[-1], statement, where)
        elif isinstance(stack[-1], NftSet):
            _set_body(stack[-1], statement, where)
        elif not statement.startswith(("comment", "flags")):   # a table's own properties
            raise DataplaneError(f"{where}: not something a table holds")
    if stack:
        raise DataplaneError("nft text: a block is not closed")
    return tables


def _open_block(stack: list, tables: dict, words: list[str], where: str):
    kind = words[0]
    if kind == "table":
        if stack or len(words) not in (2, 3):
            raise DataplaneError(f"{where}: a table block must be at the top")
        family, name = (words[1], words[2]) if len(words) == 3 else ("ip", words[1])
        return tables.setdefault(f"{family} {name}", NftTable(family, name))
    if len(stack) != 1 or len(words) != 2:
        raise DataplaneError(f"{where}: a {kind} block must be directly in a table")
    table, name = stack[0], _unquote(words[1])
    if kind == "chain":
        return table.chains.setdefault(name, NftChain(name))
    return table.sets.setdefault(name, NftSet(name, kind == "map"))


def _chain_body(chain: NftChain, statement: str, where: str) -> None:
    """A chain's properties (`type ... hook ... priority ...; policy ...;`, `comment`) or rules."""
    for piece in (p.strip() for p in _split_top(statement, ";")):
        if not piece:
            continue
        if piece.startswith("type "):
            _chain_header(chain, piece, where)
        elif piece.startswith("policy "):
            chain.policy = piece.split()[1]
        elif not piece.startswith(("comment ", "device ", "devices ")):
            chain.rules.append(piece)


def _chain_header(chain: NftChain, text: str, where: str) -> None:
    m = re.fullmatch(r"type (\S+) hook (\S+)(?: device \S+)? priority (.+)", text)
    if not m:
        raise DataplaneError(f"{where}: cannot read the base chain header {text!r}")
    chain.kind, chain.hook, chain.priority = m.group(1), m.group(2), _priority(m.group(3), where)


def _set_body(container: NftSet, statement: str, where: str) -> None:
    """A set's or map's properties; only its elements, flags and timeout matter to a walk."""
    for piece in (p.strip() for p in _split_top(statement, ";")):
        if piece.startswith("elements"):
            body = piece.split("=", 1)[1].strip() if "=" in piece else ""
            if not (body.startswith("{") and body.endswith("}")):
                raise DataplaneError(f"{where}: cannot read the elements {piece!r}")
            container.elements += _elements(body[1:-1])
        elif piece.startswith("flags "):
            container.dynamic = "dynamic" in piece.split()[1].split(",")
        elif piece.startswith("timeout "):
            container.timeout = piece.split()[1]


def _command(tables: dict, statement: str, where: str) -> None:
    """One transaction command: `add|create|insert|delete|destroy|flush` of a table, chain, rule,
    set, map or element."""
    words = statement.split(None, 2)
    if len(words) < 3:
        raise DataplaneError(f"{where}: not an nft command")
    verb, kind, rest = words
    family, table_name, rest = _table_address(rest)
    key = f"{family} {table_name}"
    if kind == "table":
        _table_command(tables, verb, key, family, table_name, where)
        return
    table = tables.get(key)
    if table is None:
        raise DataplaneError(f"{where}: table {key} does not exist")
    name, _, body = rest.partition(" ")
    name, body = _unquote(name), body.strip()
    if kind == "chain":
        _chain_command(table, verb, name, body, where)
    elif kind == "rule":
        _rule_command(table, verb, name, body, where)
    elif kind in ("set", "map"):
        _set_command(table, verb, kind, name, body, where)
    elif kind == "element":
        _element_command(table, verb, name, body, where)
    else:
        raise DataplaneError(f"{where}: {kind} is not something the walker reads")


def _table_address(rest: str) -> tuple[str, str, str]:
    """`[family] table rest...`: the family defaults to ip, as for nft."""
    words = rest.split(None, 2)
    if words[0] in FAMILIES:
        return words[0], words[1] if len(words) > 1 else "", words[2] if len(words) > 2 else ""
    return "ip", words[0], " ".join(words[1:])


def _table_command(tables: dict, verb: str, key: str, family: str, name: str, where: str) -> None:
    if verb in ("add", "create"):
        tables.setdefault(key, NftTable(family, name))
    elif verb in ("delete", "destroy"):
        tables.pop(key, None)
    elif verb == "flush":
        for chain in tables[key].chains.values():
            chain.rules.clear()
    else:
        raise DataplaneError(f"{where}: {verb} table is not understood")


def _chain_command(table: NftTable, verb: str, name: str, body: str, where: str) -> None:
    if verb in ("add", "create"):
        chain = table.chains.setdefault(name, NftChain(name))
        if body:
            if not (body.startswith("{") and body.endswith("}")):
                raise DataplaneError(f"{where}: cannot read the chain's body")
            _chain_body(chain, body[1:-1], where)
    elif verb in ("delete", "destroy"):
        table.chains.pop(name, None)
    elif verb == "flush":
        _existing(table.chains, name, where).rules.clear()
    else:
        raise DataplaneError(f"{where}: {verb} chain is not understood")


def _rule_command(table: NftTable, verb: str, chain: str, rule: str, where: str) -> None:
    if rule.split()[:1] and rule.split()[0] in ("position", "handle", "index"):
        raise DataplaneError(f"{where}: rules placed by position or handle are not understood")
    rules = _existing(table.chains, chain, where).rules
    if verb == "add":
        rules.append(rule)
    elif verb == "insert":
        rules.insert(0, rule)
    else:
        raise DataplaneError(f"{where}: {verb} rule is not understood")


def _set_command(table: NftTable, verb: str, kind: str, name: str, body: str, where: str) -> None:
    if verb in ("add", "create"):
        container = table.sets.setdefault(name, NftSet(name, kind == "map"))
        if body:
            _set_body(container, body.strip()[1:-1], where)
    elif verb in ("delete", "destroy"):
        table.sets.pop(name, None)
    elif verb == "flush":
        _existing(table.sets, name, where).elements.clear()
    else:
        raise DataplaneError(f"{where}: {verb} {kind} is not understood")


def _element_command(table: NftTable, verb: str, name: str, body: str, where: str) -> None:
    container = _existing(table.sets, name, where)
    if not (body.startswith("{") and body.endswith("}")):
        raise DataplaneError(f"{where}: cannot read the elements")
    elements = _elements(body[1:-1])
    if verb in ("add", "create"):
        container.elements += elements
    elif verb in ("delete", "destroy"):
        gone = {e.key for e in elements}
        container.elements = [e for e in container.elements if e.key not in gone]
    else:
        raise DataplaneError(f"{where}: {verb} element is not understood")


def _existing(objects: dict, name: str, where: str):
    if name not in objects:
        raise DataplaneError(f"{where}: {name} does not exist")
    return objects[name]


# -- rules as tokens ----------------------------------------------------------------------------

def _tokens(rule: str, where: str) -> list:
    """Words, quoted strings, and `{ ... }` groups (one token each)."""
    out, i = [], 0
    while i < len(rule):
        c = rule[i]
        if c.isspace():
            i += 1
        elif c == '"':
            end = rule.find('"', i + 1)
            if end < 0:
                raise DataplaneError(f"{where}: a quote is not closed")
            out.append(rule[i:end + 1])
            i = end + 1
        elif c == "{":
            end, depth = i, 0
            while end < len(rule):
                depth += {"{": 1, "}": -1}.get(rule[end], 0)
                if depth == 0:
                    break
                end += 1
            if depth:
                raise DataplaneError(f"{where}: a brace is not closed")
            out.append(_Group(rule[i + 1:end].strip()))
            i = end + 1
        elif c == "}":
            raise DataplaneError(f"{where}: a brace closes nothing")
        else:
            end = i
            while end < len(rule) and not rule[end].isspace() and rule[end] not in '{}"':
                end += 1
            out.append(rule[i:end])
            i = end
    return out


class _Reader:
    def __init__(self, tokens: list, where: str):
        self.tokens, self.pos, self.where = tokens, 0, where

    def done(self) -> bool:
        return self.pos >= len(self.tokens)

    def peek(self, ahead: int = 0):
        index = self.pos + ahead
        return self.tokens[index] if index < len(self.tokens) else None

    def word(self, ahead: int = 0) -> str | None:
        token = self.peek(ahead)
        return token if isinstance(token, str) else None

    def take(self):
        if self.done():
            raise DataplaneError(f"{self.where}: the rule ends too early")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def take_word(self) -> str:
        token = self.take()
        if not isinstance(token, str):
            raise DataplaneError(f"{self.where}: expected a word, found {{ {token.text} }}")
        return token

    def expect(self, word: str) -> None:
        if self.take() != word:
            raise DataplaneError(f"{self.where}: expected {word!r}")


@dataclass(frozen=True)
class _Verdict:
    kind: str                   # accept | drop | reject | return | continue | jump | goto | dnat | masquerade
    target: str | None = None   # the chain of jump/goto, the destination of dnat
    phrase: str = ""


# -- walking ------------------------------------------------------------------------------------

def walk_nftables(text: str, packet: Packet, pick: int | None = None) -> Walk:
    """Where `packet`, the first of its connection, goes through these tables; at `numgen random`
    the endpoint at index `pick` (default 0) of the candidates is followed."""
    tables = parse_nft(text)
    trace = Trace(packet, pick)
    return walk_hooks(trace, _Walker(tables, trace).run_hook)


# What a chain or rule did: go on with the next rule, leave the chain, end this base chain
# (accept, dnat, masquerade: the next base chain at the hook runs), or end the walk.
NEXT, RETURN, ACCEPT, STOP = "next", "return", "accept", "stop"


class _Walker:
    def __init__(self, tables: dict[str, NftTable], trace: Trace):
        self.tables = [t for t in tables.values() if t.family in WALKED_FAMILIES]
        self.trace = trace

    def run_hook(self, hook: str) -> None:
        """The hook's base chains by priority (ties in the order they were written)."""
        bases = [(c.priority, order, table, c) for order, (table, c) in enumerate(
            (t, c) for t in self.tables for c in t.chains.values() if c.hook == hook)]
        for _, _, table, chain in sorted(bases, key=lambda b: b[:2]):
            if chain.kind == "nat" and hook in self.trace.nat_bound:
                continue                    # a NAT decided at this hook: later nat chains skip
            outcome = self._run_chain(table, chain.name, 0)
            if self.trace.stopped:
                return
            if outcome == RETURN and chain.policy == "drop":
                self.trace.step(table.label, chain.name, "policy drop", "DROP (policy)")
                self.trace.stop("DROP")
                return

    def _run_chain(self, table: NftTable, name: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise DataplaneError(f"{table.label} {name}: chains nested deeper than {MAX_DEPTH}: the rules loop")
        chain = table.chains.get(name)
        if chain is None:
            raise DataplaneError(f"{table.label}: chain {name} does not exist")
        for rule in chain.rules:
            outcome = self._run_rule(table, name, rule, depth)
            if outcome != NEXT:
                return outcome
        return RETURN

    def _run_rule(self, table: NftTable, chain: str, rule: str, depth: int) -> str:
        """A rule's expressions left to right: a match failing ends it, statements act, a verdict
        (its own or a map's) is recorded with them and carried out."""
        where = f"{table.label} {chain}: rule {rule!r}"
        reader = _Reader(_tokens(rule, where), where)
        actions: list[str] = []
        while not reader.done():
            result = self._expression(table, chain, reader, actions, where)
            if result is False:
                return NEXT
            if isinstance(result, _Verdict):
                self.trace.step(table.label, chain, rule, "; ".join([*actions, result.phrase]))
                return self._carry_out(table, result, depth, where)
        self.trace.step(table.label, chain, rule, "; ".join(actions) or "matches: goes on")
        return NEXT

    def _carry_out(self, table: NftTable, verdict: _Verdict, depth: int, where: str) -> str:
        trace, kind = self.trace, verdict.kind
        if kind in ("jump", "goto"):
            if verdict.target not in table.chains:
                raise DataplaneError(f"{where}: chain {verdict.target} does not exist in {table.label}")
            outcome = self._run_chain(table, verdict.target, depth + 1)
            if outcome == RETURN:
                return RETURN if kind == "goto" else NEXT   # after a goto's chain, this one is done too
            return outcome
        if kind in ("drop", "reject"):
            trace.stop(kind.upper())
            return STOP
        if kind == "dnat":
            trace.dnat(verdict.target, where)
            trace.nat_bound.add(trace.hook)
            return ACCEPT
        if kind == "masquerade":
            trace.masquerade = True
            trace.nat_bound.add(trace.hook)
            return ACCEPT
        return {"accept": ACCEPT, "return": RETURN, "continue": NEXT}[kind]

    # -- expressions -----------------------------------------------------------------------------

    def _expression(self, table: NftTable, chain: str, r: _Reader, actions: list[str], where: str):
        """One expression: True (matched, or a statement done), False (no match), or a verdict."""
        word = r.word()
        if word == "counter":
            r.take()
            if r.word() == "packets":
                for _ in range(4):
                    r.take()
            return True
        if word == "comment":
            r.take()
            r.take()
            return True
        if word in ("accept", "drop", "reject", "return", "continue", "jump", "goto", "dnat", "masquerade"):
            return self._verdict(r, where)
        if word == "log":
            self._skip_log(r)
            actions.append("log")
            return True
        if word in ("update", "add") and (r.word(1) or "").startswith("@"):
            r.take()
            name = r.take_word()[1:]
            r.take()                            # { ip saddr }: what is remembered
            actions.append(f"remembers the client in @{name}")
            self.trace.note_affinity(f"the client is remembered in @{name}")
            return True
        if word == "numgen":
            return self._numgen(table, r, where)
        if word == "fib":
            return self._fib(r, where)
        if word == "mark" or (word == "meta" and r.word(1) == "mark"):
            return self._mark(chain, r, actions, where)
        if word == "ct":
            return self._ct(r, where)
        return self._selector_match(table, r, where)

    def _verdict(self, r: _Reader, where: str) -> _Verdict:
        word = r.take_word()
        if word in ("jump", "goto"):
            target = _unquote(r.take_word())
            return _Verdict(word, target, f"{word} {target}")
        if word == "reject":
            if r.word() == "with":            # `reject with icmp type port-unreachable` and the like
                while not r.done() and r.word() != "comment":
                    r.take()
            return _Verdict("reject", phrase="REJECT")
        if word == "dnat":
            if r.word() == "ip":
                r.take()
            r.expect("to")
            destination = r.take_word()
            return _Verdict("dnat", destination, f"DNAT to {destination}")
        if word == "masquerade":
            options = []
            while r.word() and set(r.word().split(",")) <= {"fully-random", "random", "persistent"}:
                options.append(r.take_word())
            return _Verdict("masquerade", phrase="masquerade" + (f" ({' '.join(options)})" if options else ""))
        return _Verdict(word, phrase={"accept": "ACCEPT", "drop": "DROP"}.get(word, word))

    def _skip_log(self, r: _Reader) -> None:
        r.take()
        while r.word() in ("prefix", "level", "flags", "group", "snaplen", "queue-threshold"):
            r.take()
            r.take()

    def _selector_match(self, table: NftTable, r: _Reader, where: str):
        """`sel [. sel ...] [==|!=] value|{set}|@set` or `... vmap @map|{map}`."""
        selectors = [self._selector(r, where)]
        while r.word() == ".":
            r.take()
            selectors.append(self._selector(r, where))
        negated = False
        if r.word() in ("==", "!="):
            negated = r.take() == "!="
        if r.word() == "vmap":
            r.take()
            return self._vmap(table, selectors, r.take(), where)
        token = r.take()
        if isinstance(token, str) and token.startswith("@"):
            return self._set_member(table, selectors, token[1:], r, where) != negated
        if any(value is None for _, value in selectors):
            return False                        # `tcp dport` of a UDP packet: no such header
        if len(selectors) > 1:
            raise DataplaneError(f"{where}: a concatenation compared with a literal is not understood")
        items = token.items() if isinstance(token, _Group) else [token]
        return any(self._matches(selectors[0], item, where) for item in items) != negated

    def _selector(self, r: _Reader, where: str) -> tuple[str, str | None]:
        """What a selector reads of the packet: (kind, value); value None when the packet has no
        such header (`tcp dport` of a UDP packet)."""
        trace, packet = self.trace, self.trace.packet
        first = r.take_word()
        second = r.word() if first in ("ip", "meta", "th", "tcp", "udp", "sctp") else None
        if second is not None:
            r.take()
        if (first, second) == ("ip", "saddr"):
            return "addr", packet.src
        if (first, second) == ("ip", "daddr"):
            return "addr", trace.dst
        if (first, second) in (("ip", "protocol"), ("meta", "l4proto")):
            return "proto", packet.proto
        if first in ("th", "tcp", "udp", "sctp") and second in ("dport", "sport"):
            port = trace.dport if second == "dport" else packet.sport
            return "port", str(port) if first in ("th", packet.proto) else None
        if first == "iifname" or (first, second) == ("meta", "iifname"):
            return "iface", trace.in_interface(where)
        if first == "oifname" or (first, second) == ("meta", "oifname"):
            return "iface", trace.out_interface(where)
        raise DataplaneError(f"{where}: cannot evaluate {' '.join(x for x in (first, second) if x)}")

    def _matches(self, selector: tuple[str, str | None], item: str, where: str) -> bool:
        kind, value = selector
        if value is None:
            return False
        if kind == "addr":
            return address_matches(value, item)
        if kind == "proto":
            return protocol_name(item) == value
        if kind == "port":
            low, _, high = item.partition("-")
            if not low.isdigit() or (high and not high.isdigit()):
                raise DataplaneError(f"{where}: cannot read port {item!r}")
            return int(low) <= int(value) <= int(high or low)
        return interface_matches(value, _unquote(item))

    def _key_matches(self, selectors: list, key: tuple[str, ...], where: str) -> bool:
        return len(key) == len(selectors) and all(self._matches(s, k, where) for s, k in zip(selectors, key))

    def _set_member(self, table: NftTable, selectors: list, name: str, r: _Reader, where: str) -> bool:
        """`... @set`. A dynamic set (affinity) holds the clients seen before: a first packet is
        not in it, and what a remembered client would do is noted."""
        container = _existing(table.sets, name, where)
        if container.dynamic:
            if r.word() in ("goto", "jump"):
                target = _unquote(r.word(1) or "")
                endpoint = self._endpoint_of(table, target) or target
                remembered = f" (remembered for {container.timeout})" if container.timeout else ""
                self.trace.note_affinity(f"a client in @{name}{remembered} would go to {endpoint} "
                                         f"through {target}; a first packet is not")
            return False
        return any(self._key_matches(selectors, e.key, where) for e in container.elements)

    def _vmap(self, table: NftTable, selectors: list, source, where: str):
        """A verdict map lookup: the verdict of the element the packet's key is in, or no match."""
        if isinstance(source, _Group):
            elements, label = _elements(source.text), "the rule's map"
        elif isinstance(source, str) and source.startswith("@"):
            elements, label = _existing(table.sets, source[1:], where).elements, source
        else:
            raise DataplaneError(f"{where}: cannot read the verdict map {source!r}")
        if any(value is None for _, value in selectors):
            return False
        for element in elements:
            if self._key_matches(selectors, element.key, where):
                verdict = self._verdict(_Reader(_tokens(element.value or "", where), where), where)
                return _Verdict(verdict.kind, verdict.target, f"{verdict.phrase} (via {label})")
        return False

    def _numgen(self, table: NftTable, r: _Reader, where: str) -> _Verdict:
        """`numgen random mod N vmap { 0 : goto a, 1 : goto b }`: each value 1/N; every candidate
        listed, `pick` followed."""
        r.take()
        if r.take_word() != "random":
            raise DataplaneError(f"{where}: only `numgen random` is understood")
        r.expect("mod")
        modulus = int(r.take_word())
        offset = 0
        if r.word() == "offset":
            r.take()
            offset = int(r.take_word())
        if r.word() != "vmap":
            raise DataplaneError(f"{where}: only `numgen random mod N vmap {{ ... }}` is understood")
        r.take()
        group = r.take()
        if not isinstance(group, _Group):
            raise DataplaneError(f"{where}: numgen's verdict map must be written in the rule")
        verdicts, candidates = [], []
        for element in _elements(group.text):
            low, _, high = element.key[0].partition("-")
            values = range(max(int(low), offset), min(int(high or low), offset + modulus - 1) + 1)
            verdict = self._verdict(_Reader(_tokens(element.value or "", where), where), where)
            verdicts.append(verdict)
            candidates.append(Candidate(self._endpoint_of(table, verdict.target), len(values) / modulus,
                                        verdict.target or verdict.kind))
        chosen = self.trace.choose(candidates, where)
        verdict = verdicts[chosen]
        if len(candidates) == 1 and candidates[0].probability == 1:
            return _Verdict(verdict.kind, verdict.target, f"{verdict.phrase} (the only endpoint)")
        return _Verdict(verdict.kind, verdict.target,
                        f"random {share_text(candidates[chosen].probability)} -> {verdict.target or verdict.kind}")

    def _fib(self, r: _Reader, where: str) -> bool:
        """`fib saddr|daddr type [!=] local`: the node's own addresses."""
        r.take()
        which = r.take_word()
        if which not in ("saddr", "daddr") or r.word() == ".":
            raise DataplaneError(f"{where}: only `fib saddr|daddr type local` is understood")
        r.expect("type")
        negated = False
        if r.word() in ("==", "!="):
            negated = r.take() == "!="
        token = r.take()
        types = token.items() if isinstance(token, _Group) else [token]
        if set(types) != {"local"}:
            raise DataplaneError(f"{where}: fib type {', '.join(types)}: only local is understood")
        address = self.trace.packet.src if which == "saddr" else self.trace.dst
        return self.trace.is_local(address) != negated

    def _ct(self, r: _Reader, where: str) -> bool:
        """`ct state new` (a new packet is new, nothing else), `ct status dnat` (once DNATed)."""
        r.take()
        what = r.take_word()
        negated = False
        if r.word() in ("==", "!="):
            negated = r.take() == "!="
        token = r.take()
        values = token.items() if isinstance(token, _Group) else token.split(",")
        if what == "state" and set(values) <= set(CT_STATES):
            holds = "new" in values
        elif what == "status" and set(values) <= {"dnat", "snat"}:
            holds = "dnat" in values and self.trace.dnat_endpoint is not None
        else:
            raise DataplaneError(f"{where}: ct {what} {','.join(values)} is not understood")
        return holds != negated

    def _mark(self, chain: str, r: _Reader, actions: list[str], where: str) -> bool:
        """`mark set mark or 0x4000` / `meta mark set meta mark | 0x00004000` (statements) and
        `mark and 0x4000 == 0` / `meta mark & 0x00004000 == 0x00000000` (matches)."""
        if r.word() == "meta":
            r.take()
        r.take()
        trace = self.trace
        if r.word() == "set":
            r.take()
            if r.word() == "meta":
                r.take()
            if r.word() == "mark":
                r.take()
                operator, operand = r.take_word(), int(r.take_word(), 0)
                operations = {"or": int.__or__, "|": int.__or__, "xor": int.__xor__, "^": int.__xor__,
                              "and": int.__and__, "&": int.__and__}
                if operator not in operations:
                    raise DataplaneError(f"{where}: mark operator {operator!r} is not understood")
                trace.mark = operations[operator](trace.mark, operand) & 0xFFFFFFFF
            else:
                operand = trace.mark = int(r.take_word(), 0)
            actions.append(mark_action(chain, operand, trace.mark))
            return True
        mask = 0xFFFFFFFF
        if r.word() in ("and", "&"):
            r.take()
            mask = int(r.take_word(), 0)
        negated = False
        if r.word() in ("==", "!="):
            negated = r.take() == "!="
        value = int(r.take_word(), 0)
        return ((trace.mark & mask) == value) != negated

    def _endpoint_of(self, table: NftTable, chain: str | None) -> str:
        """The "ip:port" an endpoint chain DNATs to ("" for another chain)."""
        for rule in table.chains[chain].rules if chain in table.chains else ():
            m = re.search(r"\bdnat (?:ip )?to (\S+)", rule)
            if m:
                return m.group(1)
        return ""
