"""One new packet walked through iptables rules, chain by chain, for `dataplane explain`.

The input is iptables-save text: what render.py writes for iptables-restore (no built-in chains,
kube-proxy's own `-m tcp -p tcp -d ... --dport` order) or what `iptables-save` prints on a node
(policies, counters, comments, `-d 10.0.0.1/32 -p tcp ... -m tcp --dport`, `--set-xmark`). The
tables are walked in netfilter's order for the packet's origin (raw, mangle, nat, filter, security
at each hook; a table the text lacks is skipped), with kube-proxy's matches understood and any
other match refused by name rather than guessed. Rendered text carries no jumps from the built-in
chains (the backend installs them apart, render.JUMPS): when none is there, kube-proxy's are
assumed, and the steps say so.

Owns: reading iptables-save text into chains, and the walk over them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from ...errors import DataplaneError
from ..kubeproxy.walk import (MAX_DEPTH, Candidate, Packet, Trace, Walk, address_matches, cascade,
                              interface_matches, mark_action, protocol_name, share_text, walk_hooks)
from .render import JUMPS

BUILTIN_CHAINS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
# Each hook's (table, chain) in netfilter priority order (raw -300, mangle -150, nat DNAT -100,
# filter 0, security 50, nat SNAT 100).
TABLES_AT = {
    "prerouting": (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("nat", "PREROUTING")),
    "input": (("mangle", "INPUT"), ("filter", "INPUT"), ("security", "INPUT"), ("nat", "INPUT")),
    "forward": (("mangle", "FORWARD"), ("filter", "FORWARD"), ("security", "FORWARD")),
    "output": (("raw", "OUTPUT"), ("mangle", "OUTPUT"), ("nat", "OUTPUT"), ("filter", "OUTPUT"),
               ("security", "OUTPUT")),
    "postrouting": (("mangle", "POSTROUTING"), ("nat", "POSTROUTING")),
}
# iptables' own matches (one argument each): long or short name -> the short one.
GENERIC_OPTIONS = {"-s": "-s", "--source": "-s", "-d": "-d", "--destination": "-d", "-p": "-p",
                   "--protocol": "-p", "-i": "-i", "--in-interface": "-i", "-o": "-o", "--out-interface": "-o"}
_PORTS = {"--dport": 1, "--destination-port": 1, "--sport": 1, "--source-port": 1}
# The match modules kube-proxy (and ip-masq-agent, the kubelet) write: module -> option -> arity.
MODULE_OPTIONS = {
    "tcp": _PORTS,
    "udp": _PORTS,
    "multiport": {"--dports": 1, "--destination-ports": 1, "--sports": 1, "--source-ports": 1, "--ports": 1},
    "comment": {"--comment": 1},
    "addrtype": {"--dst-type": 1, "--src-type": 1},
    "conntrack": {"--ctstate": 1},
    "state": {"--state": 1},
    "mark": {"--mark": 1},
    "statistic": {"--mode": 1, "--probability": 1},
    "recent": {"--name": 1, "--set": 0, "--rcheck": 0, "--update": 0, "--remove": 0, "--seconds": 1,
               "--reap": 0, "--hitcount": 1, "--rttl": 0, "--mask": 1, "--rsource": 0, "--rdest": 0},
    "nfacct": {"--nfacct-name": 1},
    "physdev": {"--physdev-in": 1, "--physdev-out": 1, "--physdev-is-in": 0, "--physdev-is-out": 0,
                "--physdev-is-bridged": 0},
}
# Matches that say nothing about a new packet's path: accounting, bridge ports, comments.
IGNORED_MODULES = ("comment", "nfacct", "physdev")
CT_STATES = {"NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "SNAT", "DNAT"}
# kube-proxy's endpoint chains: a jump to one is the service's choice of endpoint (a choice among
# one when no statistic rule comes first).
ENDPOINT_CHAIN = "KUBE-SEP-"
# iptables-save quotes with double quotes (backslash-escaped inside); restore files may use single.
_WORD = re.compile(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|(\S+)')
DPORT_OPTIONS = ("--dport", "--destination-port", "--dports", "--destination-ports")
SPORT_OPTIONS = ("--sport", "--source-port", "--sports", "--source-ports")

__all__ = ["Packet", "Walk", "parse_save", "walk_iptables"]


@dataclass(frozen=True)
class _Option:
    name: str                  # "-s", "--dport", ...
    args: tuple[str, ...]
    negated: bool
    known: bool = True


@dataclass
class _MatchUse:
    """One `-m module` of a rule (module "" for iptables' own -s/-d/-p/-i/-o) and its options."""
    module: str
    options: list[_Option] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return self.module == "" or self.module in MODULE_OPTIONS

    def option(self, name: str) -> _Option | None:
        return next((o for o in self.options if o.name == name), None)


@dataclass(frozen=True)
class _Parsed:
    """A rule read: its matches, then its target."""
    matches: list[_MatchUse]
    target: str | None              # None: a rule that only counts
    target_args: tuple[str, ...]
    goto: bool


class Rule:
    """One rule, read into matches and a target when the walk first meets it: a node's save
    has tens of thousands of rules, a walk reads a few chains."""

    def __init__(self, text: str, where: str, words: list[str] | None = None):
        self.text = text                # as installed (iptables-save syntax)
        self.where = where
        self.implicit = False           # kube-proxy's jump from a built-in chain, absent from the text
        self._words = words             # the words after `-A CHAIN`, when already split

    @cached_property
    def parsed(self) -> _Parsed:
        words = self._words if self._words is not None else _words(self.text, self.where)[2:]
        return parse_rule(words, self.where)

    @property
    def matches(self) -> list[_MatchUse]:
        return self.parsed.matches

    @property
    def target(self) -> str | None:
        return self.parsed.target

    @property
    def target_args(self) -> tuple[str, ...]:
        return self.parsed.target_args

    @property
    def goto(self) -> bool:
        return self.parsed.goto

    def use(self, module: str) -> _MatchUse | None:
        return next((m for m in self.matches if m.module == module), None)

    @property
    def probability(self) -> float | None:
        """`-m statistic --mode random --probability p`: p; None without a statistic match."""
        stat = self.use("statistic")
        if stat is None:
            return None
        mode, prob = stat.option("--mode"), stat.option("--probability")
        if not mode or mode.args != ("random",) or not prob or prob.negated:
            raise DataplaneError(f"{self.where}: only `-m statistic --mode random --probability p` is understood")
        return float(prob.args[0])

    def target_option(self, name: str) -> str | None:
        args = list(self.target_args)
        return args[args.index(name) + 1] if name in args[:-1] else None


@dataclass
class Chain:
    name: str
    policy: str | None              # ACCEPT | DROP for built-in chains
    rules: list[Rule] = field(default_factory=list)


Tables = dict[str, dict[str, Chain]]


# -- reading ------------------------------------------------------------------------------------

def parse_save(text: str) -> Tables:
    """iptables-save (or iptables-restore) text -> table -> chain -> rules, in order."""
    tables: Tables = {}
    table: dict[str, Chain] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"^\[\d+:\d+\]\s*", "", raw.strip())     # iptables-save -c counters
        if not line or line.startswith("#"):
            continue
        where = f"iptables-save line {number} ({line!r})"
        if line.startswith("*"):
            table = tables.setdefault(line[1:].strip(), {})
        elif line == "COMMIT":
            table = None
        elif table is None:
            raise DataplaneError(f"{where}: outside a table (*nat ... COMMIT)")
        elif line.startswith(":"):
            _declare(table, line, where)
        else:
            _command(table, line, where)
    return tables


def _declare(table: dict[str, Chain], line: str, where: str) -> None:
    """`:CHAIN POLICY [packets:bytes]`: declaring a chain in a restore empties it."""
    words = line[1:].split()
    if not words:
        raise DataplaneError(f"{where}: a chain declaration without a name")
    policy = words[1] if len(words) > 1 and words[1] != "-" else None
    table[words[0]] = Chain(words[0], policy)


def _command(table: dict[str, Chain], line: str, where: str) -> None:
    op, *rest = line.split(None, 2)
    if not rest:
        raise DataplaneError(f"{where}: {op} without a chain")
    name = rest[0]
    if op in ("-A", "--append"):
        _chain_for_rule(table, name, where).rules.append(Rule(line, where))
    elif op in ("-I", "--insert"):
        rest, position = _words(line, where)[2:], 1
        if rest and rest[0].isdigit():
            position, rest = int(rest[0]), rest[1:]
        # shown as iptables-save would print it once inserted
        text = " ".join(["-A", name, *(f'"{t}"' if " " in t else t for t in rest)])
        _chain_for_rule(table, name, where).rules.insert(position - 1, Rule(text, where, rest))
    elif op in ("-N", "--new-chain"):
        table.setdefault(name, Chain(name, None))
    elif op in ("-F", "--flush"):
        _chain_for_rule(table, name, where).rules.clear()
    elif op in ("-X", "--delete-chain"):
        table.pop(name, None)
    else:
        raise DataplaneError(f"{where}: {op} is not an iptables-save line")


def _words(line: str, where: str) -> list[str]:
    """A line's words, quotes removed (a regular expression: shlex is slow on 70,000 lines)."""
    if len(re.findall(r'(?<!\\)"', line)) % 2:
        raise DataplaneError(f"{where}: a quote is not closed")
    return [re.sub(r'\\(.)', r'\1', m.group(1)) if m.group(1) is not None else
            m.group(2) if m.group(2) is not None else m.group(3) for m in _WORD.finditer(line)]


def _chain_for_rule(table: dict[str, Chain], name: str, where: str) -> Chain:
    """The chain a rule goes in; rendered text appends to built-in chains it never declares."""
    if name not in table:
        if name not in BUILTIN_CHAINS:
            raise DataplaneError(f"{where}: chain {name} is not declared")
        table[name] = Chain(name, "ACCEPT")
    return table[name]


def parse_rule(tokens: list[str], where: str) -> _Parsed:
    """The words after `-A CHAIN`: matches (each option to the module that owns it, as iptables
    gives options to the loaded matches), then the target and its options."""
    generic = _MatchUse("")
    matches, modules = [generic], []
    implicit: dict[str, _MatchUse] = {}         # `-p tcp --dport 80` loads tcp without `-m tcp`
    negate, i = False, 0
    target, target_args, goto = None, (), False

    def arguments(count: int) -> tuple[str, ...]:
        if i + count >= len(tokens):
            raise DataplaneError(f"{where}: {tokens[i]} needs {count} argument(s)")
        return tuple(tokens[i + 1:i + 1 + count])

    while i < len(tokens):
        word = tokens[i]
        if word == "!":
            negate, i = True, i + 1
            continue
        if word in GENERIC_OPTIONS:
            generic.options.append(_Option(GENERIC_OPTIONS[word], arguments(1), negate))
            i += 2
        elif word in ("-m", "--match"):
            use = _MatchUse(arguments(1)[0])
            matches.append(use)
            modules.append(use)
            i += 2
        elif word in ("-j", "--jump", "-g", "--goto"):
            target, target_args, goto = arguments(1)[0], tuple(tokens[i + 2:]), word in ("-g", "--goto")
            break
        elif word.startswith("-"):
            owner = next((u for u in reversed(modules) if word in MODULE_OPTIONS.get(u.module, {})), None)
            if owner is None:
                owner = _implicit_protocol_module(generic, word, implicit, matches)
            if owner is not None:
                count = MODULE_OPTIONS[owner.module][word]
                owner.options.append(_Option(word, arguments(count), negate))
                i += 1 + count
            else:
                # an option of a match the walker does not know: kept, refused if ever decisive
                end = i + 1
                while end < len(tokens) and not tokens[end].startswith("-") and tokens[end] != "!":
                    end += 1
                (modules[-1] if modules else generic).options.append(
                    _Option(word, tuple(tokens[i + 1:end]), negate, known=False))
                i = end
        else:
            raise DataplaneError(f"{where}: cannot read {word!r}")
        negate = False
    return _Parsed(matches, target, target_args, goto)


def _implicit_protocol_module(generic: _MatchUse, option: str, implicit: dict, matches: list) -> _MatchUse | None:
    """`-p tcp` lets `--dport` through without `-m tcp`, as iptables loads the protocol's match."""
    proto = next((o.args[0] for o in generic.options if o.name == "-p" and not o.negated), None)
    proto = protocol_name(proto) if proto else None
    if proto not in ("tcp", "udp") or option not in MODULE_OPTIONS[proto]:
        return None
    if proto not in implicit:
        implicit[proto] = _MatchUse(proto)
        matches.append(implicit[proto])
    return implicit[proto]


def add_kube_proxy_jumps(tables: Tables) -> bool:
    """Rendered text has no rule in a built-in chain jumping to a KUBE- chain: the backend installs
    kube-proxy's jumps apart (render.JUMPS, each inserted at the top, in order). Assume them,
    where their target chain is in the text. True when any was added."""
    for chains in tables.values():
        for name in BUILTIN_CHAINS:
            if any(r.target and r.target.startswith("KUBE-") for r in chains.get(name, Chain(name, None)).rules):
                return False
    added = False
    for table, chain, target, args in JUMPS:
        if target not in tables.get(table, {}):
            continue
        text = " ".join(x for x in (f"-A {chain}", args, f"-j {target}") if x)
        rule = Rule(text, f"kube-proxy's jump {text!r}")
        rule.implicit = True
        _chain_for_rule(tables[table], chain, text).rules.insert(0, rule)
        added = True
    return added


# -- walking ------------------------------------------------------------------------------------

def walk_iptables(save_text: str, packet: Packet, pick: int | None = None) -> Walk:
    """Where `packet`, the first of its connection, goes through these rules; at a random choice
    among endpoints, the one at index `pick` (default 0) of the candidates is followed."""
    tables = parse_save(save_text)
    trace = Trace(packet, pick)
    if add_kube_proxy_jumps(tables):
        trace.note("the text has no jumps from the built-in chains; kube-proxy's own were assumed "
                   "(the backend installs them apart from the rules)")
    return walk_hooks(trace, _Walker(tables, trace).run_hook)


# What a chain (or a rule's target) did: go on with the next rule, leave the chain (RETURN, or a
# jumped chain's end), end the table at this hook (ACCEPT, DNAT, MASQUERADE), or end the walk.
NEXT, RETURN, ACCEPT, STOP = "next", "return", "accept", "stop"


class _Walker:
    def __init__(self, tables: Tables, trace: Trace):
        self.tables, self.trace = tables, trace

    def run_hook(self, hook: str) -> None:
        for table, chain in TABLES_AT[hook]:
            base = self.tables.get(table, {}).get(chain)
            if base is None or (table == "nat" and hook in self.trace.nat_bound):
                continue
            outcome = self._run_chain(table, chain, 0)
            if self.trace.stopped:
                return
            if outcome == RETURN and base.policy == "DROP":
                self.trace.step(table, chain, f":{chain} DROP", "policy DROP")
                self.trace.stop("DROP")
                return

    def _run_chain(self, table: str, name: str, depth: int) -> str:
        """The chain's rules in order: RETURN when the chain is left, ACCEPT or STOP when done."""
        if depth > MAX_DEPTH:
            raise DataplaneError(f"{table} {name}: chains nested deeper than {MAX_DEPTH}: the rules loop")
        rules = self.tables[table][name].rules
        i = 0
        while i < len(rules):
            rule = rules[i]
            where = f"{table} rule {rule.text!r}"
            if not self._matches(rule, where) or not self._recent_matches(table, rule, where):
                i += 1
                continue
            if rule.probability is not None or (rule.target or "").startswith(ENDPOINT_CHAIN):
                i, outcome = self._random_choice(table, name, i, depth)
            else:
                outcome = self._execute(table, name, rule, depth)
            if outcome != NEXT:
                return outcome
            i += 1
        return RETURN

    # -- matches ---------------------------------------------------------------------------------

    def _matches(self, rule: Rule, where: str) -> bool:
        """Every match but statistic and recent (the caller's) holds; one the walker cannot read
        is refused, unless a match it can read already rules the packet out."""
        unknown = []
        for use in rule.matches:
            if use.module in ("statistic", "recent"):
                continue
            if not use.known:
                unknown.append(f"-m {use.module}")
                continue
            for option in use.options:
                if not option.known:
                    unknown.append(" ".join((option.name, *option.args)))
                elif not self._holds(use.module, option, where):
                    return False
        if unknown:
            raise DataplaneError(f"{where}: cannot evaluate {', '.join(unknown)} "
                                 "(the walker knows kube-proxy's matches)")
        return True

    def _holds(self, module: str, option: _Option, where: str) -> bool:
        trace, packet = self.trace, self.trace.packet
        arg = option.args[0] if option.args else ""
        if module in ("tcp", "udp") and packet.proto != module:
            return False                       # no such header: the match fails, negated or not
        if module in IGNORED_MODULES:
            return True
        name = option.name
        if name == "-s":
            result = any(address_matches(packet.src, a) for a in arg.split(","))
        elif name == "-d":
            result = any(address_matches(trace.dst, a) for a in arg.split(","))
        elif name == "-p":
            result = arg in ("all", "0") or protocol_name(arg) == packet.proto
        elif name == "-i":
            result = interface_matches(trace.in_interface(where), arg)
        elif name == "-o":
            result = interface_matches(trace.out_interface(where), arg)
        elif name in (*DPORT_OPTIONS, *SPORT_OPTIONS, "--ports"):
            result = self._port_holds(name, arg)
        elif name in ("--dst-type", "--src-type"):
            types = arg.split(",")
            if set(types) != {"LOCAL"}:
                raise DataplaneError(f"{where}: addrtype {arg}: only LOCAL is understood")
            result = trace.is_local(trace.dst if name == "--dst-type" else packet.src)
        elif name in ("--ctstate", "--state"):
            result = self._ctstate_holds(arg.split(","), where)
        elif name == "--mark":
            value, _, mask = arg.partition("/")
            result = trace.mark & (int(mask, 0) if mask else 0xFFFFFFFF) == int(value, 0)
        else:
            raise DataplaneError(f"{where}: cannot evaluate {name}")
        return result != option.negated

    def _port_holds(self, name: str, spec: str) -> bool:
        """A port, a range `low:high`, or (multiport) a comma-separated list of them."""
        dport, sport = self.trace.dport, self.trace.packet.sport
        ports = (dport, sport) if name == "--ports" else (sport,) if name in SPORT_OPTIONS else (dport,)
        for item in spec.split(","):
            low, _, high = item.partition(":")
            if any(int(low) <= p <= int(high or low) for p in ports):
                return True
        return False

    def _ctstate_holds(self, states: list[str], where: str) -> bool:
        """A new packet: NEW, and DNAT once nat PREROUTING/OUTPUT translated it."""
        unknown = set(states) - CT_STATES
        if unknown:
            raise DataplaneError(f"{where}: conntrack state {','.join(sorted(unknown))} is not one the walker knows")
        return "NEW" in states or ("DNAT" in states and self.trace.dnat_endpoint is not None)

    def _recent_matches(self, table: str, rule: Rule, where: str) -> bool:
        """`-m recent`: the walk is a connection's first packet, so no client is remembered yet
        (--rcheck/--update do not match); --set remembers it. Both are noted as affinity."""
        recent = rule.use("recent")
        if recent is None:
            return True
        names = {o.name: o for o in recent.options}
        if any(o.negated for o in recent.options):
            raise DataplaneError(f"{where}: a negated -m recent is not understood")
        listed = names["--name"].args[0] if "--name" in names else "DEFAULT"
        if "--set" in names:
            self.trace.note_affinity(f"the client is remembered in recent list {listed}")
            return True
        if "--rcheck" in names or "--update" in names:
            seconds = names["--seconds"].args[0] if "--seconds" in names else "any number of"
            endpoint = self._endpoint_of(table, rule)
            self.trace.note_affinity(f"a client in recent list {listed} (seen within {seconds} s) would go to "
                                     f"{endpoint or rule.target} through {rule.target}; a first packet is not")
        return False

    # -- targets ---------------------------------------------------------------------------------

    def _execute(self, table: str, chain: str, rule: Rule, depth: int) -> str:
        trace, target = self.trace, rule.target
        where = f"{table} rule {rule.text!r}"
        if target is None:
            trace.step(table, chain, rule.text, "no target: counted, goes on")
            return NEXT
        if target in self.tables[table]:
            verb = "goto" if rule.goto else "jump"
            implicit = f" (kube-proxy's jump from {chain}, assumed: not in the text)" if rule.implicit else ""
            trace.step(table, chain, rule.text, f"{verb} {target}{implicit}")
            return self._transfer(table, rule, depth)
        if target == "ACCEPT":
            trace.step(table, chain, rule.text, "ACCEPT")
            return ACCEPT
        if target in ("DROP", "REJECT"):
            trace.step(table, chain, rule.text, target)
            trace.stop(target)
            return STOP
        if target == "RETURN":
            trace.step(table, chain, rule.text, "return")
            return RETURN
        if target == "DNAT":
            destination = rule.target_option("--to-destination")
            if destination is None:
                raise DataplaneError(f"{where}: DNAT without --to-destination")
            trace.dnat(destination, where)
            trace.nat_bound.add(trace.hook)
            trace.step(table, chain, rule.text, f"DNAT to {trace.dnat_endpoint}")
            return ACCEPT
        if target == "MARK":
            operand = self._mark(rule, where)
            trace.step(table, chain, rule.text, mark_action(chain, operand, trace.mark))
            return NEXT
        if target == "MASQUERADE":
            trace.masquerade = True
            trace.nat_bound.add(trace.hook)
            fully = " (random-fully)" if "--random-fully" in rule.target_args else ""
            trace.step(table, chain, rule.text, f"masquerade{fully}")
            return ACCEPT
        if target == "LOG":
            trace.step(table, chain, rule.text, "log")
            return NEXT
        raise DataplaneError(f"{where}: target {target} is neither a chain of table {table} nor one the walker knows")

    def _transfer(self, table: str, rule: Rule, depth: int) -> str:
        """Into the rule's chain: after its end, a jump goes on here, a goto leaves this chain too."""
        outcome = self._run_chain(table, rule.target, depth + 1)
        if outcome == RETURN:
            return RETURN if rule.goto else NEXT
        return outcome

    def _mark(self, rule: Rule, where: str) -> int:
        """MARK's forms (iptables-save prints them all as --set-xmark value/mask): the new mark set,
        the operand returned for the step."""
        args = rule.target_args
        if len(args) != 2:
            raise DataplaneError(f"{where}: MARK needs one option and a value")
        option, value = args
        number, _, mask_text = value.partition("/")
        operand = int(number, 0)
        mark = self.trace.mark
        if option == "--set-xmark":
            mask = int(mask_text, 0) if mask_text else 0xFFFFFFFF
            mark = (mark & ~mask) ^ operand
        elif option == "--set-mark":
            mask = int(mask_text, 0) if mask_text else 0xFFFFFFFF
            mark = (mark & ~mask) | operand
        elif option == "--or-mark":
            mark |= operand
        elif option == "--and-mark":
            mark &= operand
        elif option == "--xor-mark":
            mark ^= operand
        else:
            raise DataplaneError(f"{where}: MARK {option} is not understood")
        self.trace.mark = mark & 0xFFFFFFFF
        return operand

    # -- the random choice -----------------------------------------------------------------------

    def _random_choice(self, table: str, chain: str, start: int, depth: int) -> tuple[int, str]:
        """kube-proxy's cascade: rule i taken with probability p_i of what the rules before it
        left, up to the first rule without one (a single endpoint's rule has none). Every
        candidate is listed, `pick` is followed."""
        taken: list[tuple[int, Rule]] = []
        for index in range(start, len(self.tables[table][chain].rules)):
            rule = self.tables[table][chain].rules[index]
            where = f"{table} rule {rule.text!r}"
            if not self._matches(rule, where) or _checks_recent(rule):
                continue
            taken.append((index, rule))
            if rule.probability is None:
                break
        shares = cascade([1.0 if r.probability is None else r.probability for _, r in taken])
        candidates = [Candidate(self._endpoint_of(table, r), share, r.target or "")
                      for (_, r), share in zip(taken, shares)]
        if taken[-1][1].probability is not None:
            self.trace.note(f"{table} {chain}: with probability {share_text(1 - sum(shares))} no rule of the "
                            "random choice is taken")
        first = taken[0][1]
        chosen = self.trace.choose(candidates, f"{table} rule {first.text!r}")
        index, rule = taken[chosen]
        if len(taken) == 1 and first.probability is None:
            action = f"{'goto' if rule.goto else 'jump'} {rule.target} (the only endpoint)"
        else:
            action = f"random {share_text(shares[chosen])} -> {rule.target}"
        self.trace.step(table, chain, rule.text, action)
        if rule.target in self.tables[table]:
            return index, self._transfer(table, rule, depth)
        return index, self._execute(table, chain, rule, depth)

    def _endpoint_of(self, table: str, rule: Rule) -> str:
        """The "ip:port" a rule's target ends in: its own DNAT, or the DNAT of the chain it jumps to."""
        if rule.target == "DNAT":
            return rule.target_option("--to-destination") or ""
        chain = self.tables[table].get(rule.target or "")
        for inner in chain.rules if chain else ():
            if inner.target == "DNAT":
                return inner.target_option("--to-destination") or ""
        return ""


def _checks_recent(rule: Rule) -> bool:
    """An affinity check (`-m recent --rcheck`/`--update`): never true for a first packet."""
    recent = rule.use("recent")
    return recent is not None and recent.option("--set") is None
