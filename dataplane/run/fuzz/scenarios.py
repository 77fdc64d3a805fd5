"""`dataplane fuzz scenarios`: generated scenarios on every backend, judged against each other.

For each (seed, index), dataplane.spec.generate writes a scenario; it runs on each chosen backend
(the live ones side by side in spawned processes, each on a lab of its own named
fz<pid>-<backend>-<index>; the emulator here), and every check's observation is compared across
backends (`compare`):
  - the outcomes seen (reachable / refused / dropped), which may differ only as one documented
    difference of docs/differences.md says, backend by backend (as tests/lab/test_scenarios.py);
  - whether an answer came from outside the check's `backends` (the generator lists every
    eligible endpoint there), whether `sameBackend` broke (written only where affinity or one UDP
    flow fixes the backend), and which source addresses the servers saw.
Whether a check *passed* is not compared: the generator guesses no outcome, so a check's `expect`
says nothing. A disagreement, or a backend that crashed, saves the scenario to the save directory
with the expectations of the reference (the emulator, see dataplane.judge.differences) written
in, so that `dataplane run FILE --backend B` fails on the backend that disagreed; its header says
the seed, the index and what each backend saw.
"""
from __future__ import annotations

import multiprocessing
import os
import random
import tempfile
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from ... import backends as registry
from ...errors import DataplaneError
from ...judge.differences import BY_KEY, REFERENCE
from ...spec import generate
from ...spec.scenario import load
from ..runner import Report, run_live

REACHABLE_ONLY = ("backends", "source", "sameBackend", "everyBackend", "minBackends", "maxShare", "capture")


def fresh_seed() -> int:
    return random.SystemRandom().randrange(1 << 32)


def backend_seed(seed: int, index: int) -> int:
    """The seed of the backends' own choices (ebpf, emulator) for one scenario: `--seed` replays it."""
    return (seed * 7919 + index) % (1 << 32)


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the fuzzer, which ends each of them with one SIGTERM (their run's
    teardown); a Ctrl-C reaching the whole process group would interrupt teardowns under way."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(path: str, backend: str, seed: int, lab: str) -> Report:
    """One backend's run, in a process of its own (a run owns its signal handlers and its lab)."""
    return run_live(load(path), registry.get(backend, strict=False, seed=seed), lab)


@dataclass
class ScenarioRun:
    seed: int
    index: int
    doc: dict                                          # the generated scenario, as data
    backends: tuple
    reports: dict = field(default_factory=dict)       # backend -> Report
    crashed: dict = field(default_factory=dict)       # backend -> what went wrong
    disagreements: list = field(default_factory=list)  # one text per check (or crash)
    seconds: float = 0.0
    saved: str | None = None
    scenario: object = None                            # the loaded Scenario

    @property
    def agree(self) -> bool:
        return not self.disagreements

    @property
    def checks(self) -> int:
        return len(generate.checks_of(self.doc))


# -- judging ---------------------------------------------------------------------------------

def observed(spec, result) -> dict:
    """What a backend showed for one check, in the terms backends are compared by. The source the
    servers saw is compared unless it depends on a random choice: a pod that is one of several
    eligible endpoints of its own service sees the node's address when it is chosen (hairpin)."""
    out = {"outcomes": tuple(sorted(result.outcomes)),
           "counts": tuple(sorted(result.outcomes.items())),     # how many requests met each outcome
           "stray": spec.backends is not None and any(b not in spec.backends for b in result.answered),
           "split": bool(spec.same_backend) and len(result.answered) > 1}
    if spec.backends is not None and (len(spec.backends) <= 1 or spec.client not in spec.backends):
        out["sources"] = tuple(sorted(result.sources))
    return out


def describe(spec, result) -> str:
    """One backend's observation, short: `reachable x2 (w1 x2; source 10.0.1.2)`."""
    text = ", ".join(f"{k} x{v}" for k, v in sorted(result.outcomes.items())) or "no result"
    extra = []
    if result.answered:
        extra.append(", ".join(f"{b} x{n}" for b, n in sorted(result.answered.items())))
    if result.sources:
        extra.append("source " + ", ".join(sorted(result.sources)))
    if spec.backends is not None and any(b not in spec.backends for b in result.answered):
        extra.append(f"outside eligible {', '.join(spec.backends) or 'none'}")
    if spec.same_backend and len(result.answered) > 1:
        extra.append("not one backend")
    return text + (f" ({'; '.join(extra)})" if extra else "")


def compare(scenario, reports: dict, crashed: dict | None = None) -> list[str]:
    """Every disagreement between the backends' reports of one scenario (backend -> Report), and
    every crash (backend -> error): [] when they agree everywhere."""
    out = [f"{b} crashed: {why}" for b, why in (crashed or {}).items()]
    specs = scenario.checks
    for backend, report in reports.items():
        if len(report.results) != len(specs):
            out.append(f"{backend} reported {len(report.results)} of {len(specs)} checks")
    if len(reports) < 2 or any(len(r.results) != len(specs) for r in reports.values()):
        return out
    for i, spec in enumerate(specs):
        seen = {b: observed(spec, r.results[i]) for b, r in reports.items()}
        if len({tuple(sorted(s.items())) for s in seen.values()}) == 1:
            continue
        if _documented(seen, {b: r.results[i] for b, r in reports.items()}):
            continue
        lines = [f"{spec.name}:"] + [f"  {b}: {describe(spec, r.results[i])}" for b, r in reports.items()]
        out.append("\n".join(lines))
    return out


def _documented(seen: dict, results: dict) -> bool:
    """Outcomes that differ only as one documented difference says, backend by backend, the rest
    of the observation alike."""
    rest = {tuple((k, v) for k, v in sorted(s.items()) if k not in ("outcomes", "counts")) for s in seen.values()}
    keys = {r.difference for r in results.values() if r.difference}
    if len(rest) != 1 or len(keys) != 1:
        return False
    key = keys.pop()
    diff = BY_KEY[key]
    reference = (diff.outcomes[REFERENCE],)
    return all(s["outcomes"] == (diff.outcomes[b],) and (s["outcomes"] == reference or results[b].difference == key)
               for b, s in seen.items() if b in diff.outcomes)


# -- saving a disagreement -------------------------------------------------------------------

def with_expectations(doc: dict, scenario, reports: dict) -> dict:
    """The scenario's data with each check's expectation taken from the majority of the backends
    (backend -> Report): the outcome most of them met most often, and the source address the
    servers saw where sources were compared and the majority saw one; the fields that only apply
    to reachable dropped otherwise, and a `backends` or `sameBackend` the majority broke dropped
    too. So the saved file fails on the backend that went its own way, whichever it is."""
    import copy
    doc = copy.deepcopy(doc)
    complete = [r for r in reports.values() if len(r.results) == len(scenario.checks)]
    if not complete:
        return doc
    for i, (item, spec) in enumerate(zip(generate.checks_of(doc), scenario.checks)):
        results = [r.results[i] for r in complete if r.results[i].outcomes]
        if not results:
            continue
        outcome = Counter(Counter(r.outcomes).most_common(1)[0][0] for r in results).most_common(1)[0][0]
        item["expect"] = outcome
        if outcome != "reachable":
            for key in REACHABLE_ONLY:
                item.pop(key, None)
            continue
        seen = [observed(spec, r) for r in results]
        if Counter(x["stray"] for x in seen).most_common(1)[0][0]:
            item.pop("backends", None)
        if Counter(x["split"] for x in seen).most_common(1)[0][0]:
            item.pop("sameBackend", None)
        sources = Counter(x.get("sources") for x in seen).most_common(1)[0][0]
        if sources and len(sources) == 1:
            item["source"] = sources[0]
    return doc


def save(run: ScenarioRun, directory: str) -> str:
    """Write the scenario of a disagreement, replayable, with a header saying what happened."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"fuzz-{run.seed}-{run.index}.yaml")
    bseed = backend_seed(run.seed, run.index)
    header = [f"dataplane fuzz scenarios: seed {run.seed}, index {run.index} "
              f"(regenerate: dataplane fuzz scenarios --seed {run.seed} --start {run.index} --count 1)",
              f"backends: {', '.join(run.backends)}; their choice seed (ebpf, emulator): {bseed}",
              "expectations: what most backends saw (outcome, and source where compared)",
              f"replay: sudo dataplane run {path} --backend B --seed {bseed}   (or --backend all)",
              "", "what the backends saw:"]
    for text in run.disagreements:
        header.extend("  " + line for line in text.splitlines())
    body = generate.dump(with_expectations(run.doc, run.scenario, run.reports))
    with open(path, "w") as f:
        f.write("".join(f"# {line}".rstrip() + "\n" for line in header) + body)
    return path


# -- running ---------------------------------------------------------------------------------

class Fuzzer:
    """Runs generated scenarios on the chosen backends; the live ones share one process pool."""

    def __init__(self, backends=registry.CONFORMANCE, save_dir: str | None = "fuzz-failures", progress=print):
        self.backends = tuple(backends)
        self.live = [b for b in self.backends if not registry.class_of(b).simulated]
        self.save_dir = save_dir
        self.progress = progress
        self.pool = None
        self.tag = f"fz{os.getpid() % 1000}"

    def __enter__(self):
        from ..runner import on_terminate
        self.workdir = tempfile.TemporaryDirectory(prefix="dataplane-fuzz-")
        self.old_handlers = on_terminate()      # SIGTERM, SIGHUP: an exception, so __exit__ cleans up
        return self

    def __exit__(self, exc_type, *exc):
        import signal
        try:
            if self.pool is not None and exc_type is not None:
                self._stop_workers()
            elif self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
            self.workdir.cleanup()
        finally:
            for sig, handler in self.old_handlers.items():
                signal.signal(sig, handler)

    def _stop_workers(self, grace: float = 60.0) -> None:
        """Interrupted: each worker's run_live turns one SIGTERM into its lab's teardown; a worker
        still there after `grace` seconds is killed, and any lab of this fuzzer's left behind is
        removed here."""
        from ...lab.lab import all_labs, teardown
        procs = [p for p in getattr(self.pool, "_processes", {}).values() if p.is_alive()]
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + grace
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.pool.shutdown(wait=False, cancel_futures=True)
        for name in all_labs():
            if name.startswith(self.tag + "-"):
                teardown(name)

    def _pool(self):
        if self.pool is None and self.live:
            self.pool = ProcessPoolExecutor(len(self.live), mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_ignore_sigint)
        return self.pool

    def _submit(self, path: str, bseed: int, index: int) -> dict:
        """Start the live backends' runs: backend -> future (a broken pool is replaced once)."""
        for attempt in range(2):
            pool = self._pool()
            try:
                return {b: pool.submit(_run, path, b, bseed, f"{self.tag}-{i}-{index}")
                        for i, b in enumerate(self.backends) if b in self.live}
            except BrokenProcessPool:
                self.pool = None
                if attempt:
                    raise
        return {}

    def run(self, seed: int, index: int) -> ScenarioRun:
        start = time.monotonic()
        doc = generate.scenario_doc(seed, index)
        run = ScenarioRun(seed, index, doc, self.backends)
        path = os.path.join(self.workdir.name, f"fuzz-{seed}-{index}.yaml")
        with open(path, "w") as f:
            f.write(generate.dump(doc))
        try:
            run.scenario = load(path)
        except DataplaneError as exc:           # the generator wrote what the format refuses: a finding
            run.disagreements = [f"the generated scenario does not load: {exc}"]
            run.seconds = time.monotonic() - start
            if self.save_dir:
                os.makedirs(self.save_dir, exist_ok=True)
                run.saved = os.path.join(self.save_dir, f"fuzz-{seed}-{index}.yaml")
                header = [f"dataplane fuzz scenarios: seed {seed}, index {index}: does not load"] + str(exc).splitlines()
                with open(run.saved, "w") as f:
                    f.write("".join(f"# {line}\n" for line in header) + generate.dump(doc))
            return run
        bseed = backend_seed(seed, index)
        futures = self._submit(path, bseed, index)
        for b in self.backends:
            if b not in futures:
                try:
                    run.reports[b] = _run(path, b, bseed, "unused")
                except Exception as exc:         # noqa: BLE001 - a crash is a finding, not an abort
                    run.crashed[b] = _why(exc)
        for b, fut in futures.items():
            try:
                run.reports[b] = fut.result()
            except BrokenProcessPool as exc:
                run.crashed[b] = _why(exc)
                self.pool = None
            except Exception as exc:             # noqa: BLE001
                run.crashed[b] = _why(exc)
        run.reports = {b: run.reports[b] for b in self.backends if b in run.reports}
        run.disagreements = compare(run.scenario, run.reports, run.crashed)
        run.seconds = time.monotonic() - start
        if run.disagreements and self.save_dir:
            run.saved = save(run, self.save_dir)
        return run


def _why(exc: BaseException) -> str:
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last[:500]


def fuzz(count: int, seed: int, backends=registry.CONFORMANCE, save_dir: str | None = "fuzz-failures",
         progress=print, start: int = 0) -> list[ScenarioRun]:
    """Generate and run `count` scenarios of `seed` (indexes start..start+count-1), printing one
    line per scenario and a summary."""
    runs = []
    progress(f"fuzz scenarios: seed {seed}, {count} scenario(s) on {', '.join(backends)}")
    with Fuzzer(backends, save_dir, progress) as fuzzer:
        for index in range(start, start + count):
            run = fuzzer.run(seed, index)
            runs.append(run)
            topo = run.doc["topology"]
            verdict = "agree" if run.agree else f"DISAGREE ({len(run.disagreements)}), saved {run.saved}"
            progress(f"seed {seed} index {index}: {topo['model']}, {len(topo['nodes'])} node(s), "
                     f"{len(topo['pods'])} pods, {run.checks} checks on {len(run.backends)} backends, "
                     f"{run.seconds:.1f}s: {verdict}")
            for text in run.disagreements:
                for line in text.splitlines():
                    progress("    " + line)
    bad = [r for r in runs if not r.agree]
    checks = sum(r.checks for r in runs)
    progress(f"seed {seed}: {len(runs)} scenarios, {checks} checks on {', '.join(backends)}: "
             f"{len(runs) - len(bad)} agree, {len(bad)} disagree"
             + (f" (saved in {save_dir})" if bad and save_dir else ""))
    return runs
