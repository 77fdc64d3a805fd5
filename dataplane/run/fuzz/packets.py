"""`dataplane fuzz packets`: generated frames through the BPF programs and through the oracle.

Each hypothesis example is one case: a service table and masquerade settings for node1, then up
to 200 events (cases.py). Every frame runs through the BPF program (BPF_PROG_TEST_RUN) and
the oracle from the same state; the verdict and the bytes must match, and after every update and
at the end of the case the state (conntrack, affinities, counters) must match too. A mismatch is
shrunk by hypothesis to a minimal case, written as JSON, and replayed by `--replay FILE`.

The programs run in a network namespace of the fuzzer's own (`dp-fuzz<pid>.node1`, removed
however the run ends), so their socket lookups see no socket of the machine.
"""
from __future__ import annotations

import errno
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ...contract.limits import CtTimeouts, MapSizes
from ...errors import DataplaneError
from . import cases
from ...oracle.frontends import frontends
from .twin import Twin, first_difference

BATCH_EXAMPLES = 100
# Room for every case (at most 200 events) and no more: iterating a hash map costs in proportion
# to its size, not its entries, and the state is read after every update.
FUZZ_MAP_SIZES = MapSizes(services=4096, backends=4096, conntrack=8192, affinity=4096, nosnat=4096)


class Mismatch(AssertionError):
    """BPF and the oracle disagree; `case` is what was run, up to and including the disagreement."""

    def __init__(self, message: str, case: dict):
        super().__init__(message)
        self.case = case


@dataclass
class Stats:
    frames: int = 0
    examples: int = 0
    verdicts: dict = field(default_factory=dict)     # verdict -> frames
    refused: int = 0                                 # frames BPF_PROG_TEST_RUN would not run
    counters: Counter = field(default_factory=Counter)   # what the frames reached (the oracle's counters)
    first_found: tuple | None = None                 # (frames, cases) run when the first mismatch showed

    def count(self, verdict: str) -> None:
        self.frames += 1
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1


class Replayer:
    """Runs a case's events on a Twin; every event is recorded as run (frames as the bytes sent),
    so a failing case is written out exactly."""

    def __init__(self, prog, netns: str, stats: Stats):
        self.prog, self.netns, self.stats = prog, netns, stats

    def start(self, services: list, config: dict, seed: int) -> None:
        self.case = {"seed": seed, "config": config, "timeouts": cases.TIMEOUTS, "services": services, "events": []}
        self.services = services
        self.twin = Twin(self.prog, cases.build_table(services), cases.build_config(config), seed=seed,
                         timeouts=CtTimeouts(**cases.TIMEOUTS), netns=self.netns)
        self.sent: list = []          # (hook, frame out, verdict) of frames that passed or came back
        self.pending = False          # the last update wrote the maps, its flush still to come

    def fail(self, message: str) -> None:
        if self.stats.first_found is None:
            self.stats.first_found = (self.stats.frames, self.stats.examples)
        raise Mismatch(message, self.case)

    def frame(self, hook: str, data: bytes) -> None:
        self.case["events"].append({"frame": data.hex(), "hook": hook})
        try:
            got, want = self.twin.run(hook, data)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # BPF_PROG_TEST_RUN refuses some malformed frames (its own checks before the program
            # runs, e.g. an IPv4 header the kernel cannot pull): nothing to compare
            self.case["events"].pop()
            self.stats.refused += 1
            return
        except Exception as exc:   # an oracle that crashes is a finding too
            self.fail(f"{hook}: {type(exc).__name__}: {exc}\n  in     {data.hex()}")
        self.stats.count(got.verdict)
        if got.verdict != want.verdict or got.data != want.data:
            what = (f"verdict bpf {got.verdict}, oracle {want.verdict}" if got.verdict != want.verdict
                    else f"bytes differ at {first_difference(got.data, want.data)}")
            self.fail(f"{hook}: {what}\n  in     {data.hex()}\n  bpf    {got.data.hex()}\n"
                      f"  oracle {want.data.hex()}\n  oracle's reasons: {'; '.join(want.why)}")
        if got.verdict in ("pass", "redirect"):
            self.sent.append((hook, got.data, got.verdict))

    def advance(self, seconds: int) -> None:
        self.check_state("before the clock jump")   # after it, a difference may have expired away
        self.case["events"].append({"advance": seconds})
        self.twin.advance(seconds)

    def collect(self) -> None:
        self.case["events"].append({"collect": True})
        self._control("garbage collection", self.twin.collect)
        self.check_state("after garbage collection")

    def _control(self, what: str, action, *args) -> None:
        """A control-plane step on both sides; a crash of either is a finding too."""
        try:
            action(*args)
        except Exception as exc:
            self.fail(f"{what}: {type(exc).__name__}: {exc}")

    def evict(self, index: int) -> None:
        keys = sorted(self.twin.oracle.s.conntrack, key=str)
        if not keys:
            return
        k = keys[index % len(keys)]
        self.case["events"].append({"evict": [str(k.saddr), str(k.daddr), k.sport, k.dport, k.proto, k.dir]})
        self._evict(k)

    def _evict(self, k) -> None:
        self.twin.evict(k.dir, saddr=k.saddr, daddr=k.daddr, sport=k.sport, dport=k.dport, proto=k.proto)

    def update(self, services: list, flush: bool = True) -> None:
        """A service update: the new table and the flush of what it no longer lets live, or
        (flush False) the new table only, as packets find it between the map writes and the flush
        (or while an agent that died in between is restarting): the datapath must be right there
        too. The next update finishes it first, as a restarted agent would."""
        self.case["events"].append({"update": services, "flush": flush})
        self.services, self.pending = services, not flush
        table = cases.build_table(services)
        if flush:
            self._control("the update", self.twin.sync, table)
        else:
            self._control("the update's map writes", self.twin.program, table)
            self.twin.oracle.s.frontends = frontends(table, cases.NODE, cases.NODE_IP)
        self.check_state("after the update")

    def check_state(self, when: str) -> None:
        diff = self.twin.differences(expired=False)
        if diff:
            self.fail(f"state differs {when}:\n  " + "\n  ".join(diff))

    def replay(self, case: dict) -> None:
        """Run a recorded case again, event by event."""
        from ...oracle.datapath import CtKey
        from ipaddress import IPv4Address
        self.start(case["services"], case["config"], case["seed"])
        for e in case["events"]:
            _stop_if_asked()
            if "frame" in e:
                self.frame(e["hook"], bytes.fromhex(e["frame"]))
            elif "advance" in e:
                self.advance(e["advance"])
            elif "collect" in e:
                self.collect()
            elif "evict" in e:
                s, d, sp, dp, proto, dir_ = e["evict"]
                self.case["events"].append(e)
                self._evict(CtKey(IPv4Address(s), IPv4Address(d), sp, dp, proto, dir_))
            elif "update" in e:
                self.update(e["update"], e.get("flush", True))
        self.check_state("at the end")


# SIGTERM or SIGHUP while the fuzzer runs: noted by the handler, raised (runner.Terminated) at the
# next event of a case, in our own code. Raised from the handler, it could land inside hypothesis'
# engine, which takes an exception it did not expect there for a failing example and goes on
# shrinking it: once, in CI, the fuzzer did not exit within 60 s of SIGTERM.
_TERMINATE: list = []


def _on_terminate(signum, frame):
    _TERMINATE.append(signum)


def _stop_if_asked() -> None:
    if _TERMINATE:
        from ..runner import Terminated
        raise Terminated()


def run_case(r: Replayer, case_seed: int, events: list) -> None:
    """One drawn case: its table, settings and hash seed from case_seed, then its events."""
    _stop_if_asked()
    rng = random.Random(case_seed)
    r.start(cases.services(rng), cases.config(rng), rng.getrandbits(32))
    for value in events:
        _stop_if_asked()
        kind, seed = cases.event(value)
        rng = random.Random(seed)
        drawn = None
        if kind == "forward" and r.sent:
            onward = cases.forward(rng, r.sent)
            if onward is not None:
                r.frame(*onward)
                continue
        if kind == "answer" and r.sent:
            drawn = cases.answer(rng, r.sent)
        elif kind == "service":
            drawn = cases.service_frame(rng, r.services)
            if drawn is not None and rng.random() < 0.15:      # a datagram in two fragments
                hook, desc = drawn
                desc["payload"] = rng.randbytes(rng.randint(20, 60))
                for piece in cases.fragments(cases.build_frame(desc, hook)):
                    r.frame(hook, piece)
                continue
        if drawn is not None:
            hook, desc = drawn
            r.frame(hook, cases.apply_damage(cases.build_frame(desc, hook), cases.damage(rng)))
        elif kind in ("frame", "forward", "answer", "service"):
            hook = rng.choice(cases.HOOKS)
            desc = cases.new_frame(rng, hook)
            r.frame(hook, cases.apply_damage(cases.build_frame(desc, hook), cases.damage(rng)))
        elif kind == "advance":
            r.advance(rng.choice(cases.JUMPS))
        elif kind == "collect":
            r.collect()
        elif kind == "evict":
            r.evict(seed)
        else:
            if r.pending:            # an agent restarted: it first finishes the sync it was in
                r.update(r.services)
            r.update(cases.table_change(rng, r.services), flush=rng.random() < 0.7)
    r.check_state("at the end")
    r.stats.counters.update(r.twin.oracle.s.metrics)


def _batch(r: Replayer, seed: int, examples: int) -> None:
    """One hypothesis run of `examples` cases; raises Mismatch with the shrunk case."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    @hseed(seed)
    @settings(max_examples=examples, database=None, deadline=None, derandomize=False, print_blob=False,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
              report_multiple_bugs=False)
    @given(case_seed=cases.CASE_SEED, events=cases.EVENTS)
    def case(case_seed, events):
        r.stats.examples += 1
        run_case(r, case_seed, events)

    case()


@dataclass
class Outcome:
    stats: Stats
    seconds: float
    mismatch: Mismatch | None = None
    saved: Path | None = None


def fuzz(count: int, seed: int, save_dir: Path, progress=print) -> Outcome:
    """At least `count` frames, in batches of seeded hypothesis runs; stops at the first mismatch
    (shrunk and saved)."""
    stats = Stats()
    start = time.monotonic()
    with _fuzz_node() as (prog, ns):
        r = Replayer(prog, ns, stats)
        batch = 0
        while stats.frames < count:
            _stop_if_asked()
            try:
                _batch(r, seed * 1_000_003 + batch, BATCH_EXAMPLES)
            except Mismatch as m:
                m = minimize(r, m)
                path = save(m.case, save_dir, seed)
                return Outcome(stats, time.monotonic() - start, m, path)
            batch += 1
            elapsed = time.monotonic() - start
            progress(f"{stats.frames:,} frames, {stats.examples:,} cases, {stats.frames / elapsed:,.0f} frames/s, "
                     f"0 mismatches")
    return Outcome(stats, time.monotonic() - start)


def minimize(r: Replayer, m: Mismatch) -> Mismatch:
    """Hypothesis shrinks what it drew; this shrinks the concrete case it recorded, keeping each
    step that still fails: events dropped one at a time (from the last), then services, their
    endpoints and their affinity (an update's tables stay as recorded)."""
    best = [m]

    def fails(trial: dict) -> bool:
        try:
            r.replay(trial)
        except Mismatch as smaller:
            best[0] = Mismatch(str(smaller), trial)
            return True
        return False

    case = m.case
    for i in reversed(range(len(case["events"]))):
        trial = dict(case, events=case["events"][:i] + case["events"][i + 1:])
        if fails(trial):
            case = trial
    shrunk = True
    while shrunk:                       # until no table one step simpler still fails
        shrunk = False
        for smaller in _smaller_tables(case["services"]):
            trial = dict(case, services=smaller)
            if fails(trial):
                case, shrunk = trial, True
                break
    return best[0]


def _smaller_tables(services: list):
    """Each table one step simpler than `services`: a service less, an endpoint less, no affinity."""
    for i in range(len(services)):
        yield services[:i] + services[i + 1:]
    for i, svc in enumerate(services):
        for j in range(len(svc["endpoints"])):
            yield services[:i] + [dict(svc, endpoints=svc["endpoints"][:j] + svc["endpoints"][j + 1:])] + services[i + 1:]
        if svc["affinity"]:
            yield services[:i] + [dict(svc, affinity=None)] + services[i + 1:]


def replay(path: Path) -> Outcome:
    case = json.loads(Path(path).read_text())
    stats = Stats()
    start = time.monotonic()
    with _fuzz_node() as (prog, ns):
        r = Replayer(prog, ns, stats)
        try:
            r.replay(case)
        except Mismatch as m:
            return Outcome(stats, time.monotonic() - start, m)
    return Outcome(stats, time.monotonic() - start)


def save(case: dict, directory: Path, seed: int) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"packets-seed{seed}-{int(time.time())}.json"
    path.write_text(json.dumps(case, indent=1, default=str) + "\n")
    return path


class _fuzz_node:
    """node1's BPF program, loaded once, and a namespace of the fuzzer's own to run it in (the
    node's address on its loopback), both gone however the run ends."""

    def __enter__(self):
        from ...backends.ebpf.program import NodeProgram
        from ...lab import netns
        if os.geteuid() != 0:
            raise DataplaneError("fuzz packets loads BPF programs and creates a network namespace: run it as root")
        self.ns = f"dp-fuzz{os.getpid()}.node1"
        self.prog = None
        # SIGTERM, SIGHUP: Terminated at the next event (_stop_if_asked), so __exit__ cleans up
        import signal
        _TERMINATE.clear()
        self.old_handlers = {sig: signal.signal(sig, _on_terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            netns.remove(self.ns)
            netns.create(self.ns)
            with netns.ipr(self.ns) as ipr:
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.link("set", index=lo, state="up")
                ipr.addr("add", index=lo, address=str(cases.NODE_IP), prefixlen=32)
            self.prog = NodeProgram(cases.NODE, "", str(cases.NODE_IP), sizes=FUZZ_MAP_SIZES)
            self.prog.load(seed=0)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.prog, self.ns

    def __exit__(self, *exc):
        import signal
        from ...lab import netns
        try:
            if self.prog is not None:
                self.prog.close()
            netns.remove(self.ns)
        finally:
            for sig, handler in self.old_handlers.items():
                signal.signal(sig, handler)
        return False


def summary(outcome: Outcome, seed: int | None) -> str:
    """What ran, and the mismatch with its reproducer if there was one."""
    st = outcome.stats
    rate = st.frames / outcome.seconds if outcome.seconds else 0
    head = f"seed {seed}, " if seed is not None else ""
    lines = [f"fuzz packets: {head}{st.frames:,} frames in {outcome.seconds:.1f} s ({rate:,.0f} frames/s), "
             f"{st.examples:,} cases",
             "verdicts: " + ", ".join(f"{v} {n:,}" for v, n in sorted(st.verdicts.items()))
             + f"; {st.refused:,} frames BPF_PROG_TEST_RUN refused to run (not compared)"]
    if st.counters:
        lines.append("counters reached: " + ", ".join(f"{k} {v:,}" for k, v in sorted(st.counters.items())))
    if outcome.mismatch is None:
        lines.append("mismatches: 0")
        return "\n".join(lines)
    case = outcome.mismatch.case
    if st.first_found:
        lines.append(f"found after {st.first_found[0]:,} frames ({st.first_found[1]:,} cases); "
                     f"shrunk to {len(case['events'])} events")
    lines += ["MISMATCH: " + str(outcome.mismatch), "",
              f"minimal case: hash seed {case['seed']}, settings {json.dumps(case['config'])}",
              "services: " + json.dumps(case["services"])]
    lines += [f"  {i + 1}. " + (f"{e['hook']} {e['frame']}" if "frame" in e else json.dumps(e))
              for i, e in enumerate(case["events"])]
    if outcome.saved:
        lines += ["", f"saved: {outcome.saved}", f"replay: sudo dataplane fuzz packets --replay {outcome.saved}"]
    return "\n".join(lines)
