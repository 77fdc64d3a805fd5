"""Run a scenario on a live lab: build, program the backend, run every check, tear down.

Teardown runs however the run ends: checks failing, an exception, Ctrl-C (SIGINT) or SIGTERM.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from ..judge.checks import CheckResult, evaluate
from ..judge.differences import judged
from ..judge.load import evaluate_load
from ..lab.workload.argv import client_argv, parse_client_output
from ..spec.checks import CheckSpec
from ..lab import netns
from ..lab.lab import Lab
from ..spec.load import EndLoad, LoadSpec
from ..spec.scenario import Scenario, Sleep, Update


@dataclass
class Report:
    scenario: str
    backend: str
    lab: str
    results: list[CheckResult] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    seed: int | None = None          # the backend's choice seed: `--seed` replays the run
    events: list[str] = field(default_factory=list)   # what updates changed
    counters: dict = field(default_factory=dict)      # node -> {counter: packets}, non-zero only

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "backend": self.backend, "passed": self.passed,
                "seed": self.seed, "checks": [r.to_json() for r in self.results],
                "events": self.events, "counters": self.counters, "ignored": self.ignored}


class Terminated(BaseException):
    """SIGTERM or SIGHUP, turned into an exception so that `finally` blocks tear the lab down."""


def _on_sigterm(signum, frame):
    raise Terminated()


def on_terminate() -> dict:
    """SIGTERM and SIGHUP raise Terminated from now on; the handlers they had, to restore."""
    return {sig: signal.signal(sig, _on_sigterm) for sig in (signal.SIGTERM, signal.SIGHUP)}


def run_check(lab: Lab, spec: CheckSpec) -> CheckResult:
    if spec.capture:
        from ..lab import sniffers
        from ..judge.checks import capture_targets, with_capture
        with sniffers.live(lab, [spec.client, *capture_targets(spec, lab.spec)]) as frames:
            result = _run_client(lab, spec)
        return with_capture(result, spec, lab.spec, frames)
    return _run_client(lab, spec)


def _run_client(lab: Lab, spec: CheckSpec) -> CheckResult:
    ns = lab.record.objects[spec.client]
    budget = spec.requests * (spec.timeout * 2 + 1 + spec.interval) + 10
    holder = None
    try:
        if spec.hold is not None:
            holder, failed = _hold(lab, spec)
            if failed is not None:
                return CheckResult(spec.name, False, failed)
        try:
            proc = netns.run(ns, client_argv(sys.executable, spec), timeout=budget, cgroup=lab.cgroup_of(spec.client))
        except subprocess.TimeoutExpired:
            return CheckResult(spec.name, False, f"client did not finish within {budget:.0f}s")
        if proc.returncode != 0:
            return CheckResult(spec.name, False,
                               f"client failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
        held = _release(holder, spec) if holder is not None else None
        return evaluate(spec, parse_client_output(proc.stdout), held)
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()


def _hold(lab: Lab, spec: CheckSpec):
    """Start the client that holds the check's connection: (process, None) once it holds it, or
    (process, why not)."""
    import json
    from ..lab.workload.argv import hold_argv
    proc = netns.popen(lab.record.objects[spec.hold.client], hold_argv(sys.executable, spec),
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                       cgroup=lab.cgroup_of(spec.hold.client))
    line = _read_line(proc, spec.timeout + 10)
    try:
        first = json.loads(line)
    except ValueError:
        return proc, f"the held connection did not open: {line.strip() or 'no answer'}"
    if not first.get("held"):
        return proc, (f"the held connection {spec.hold.client} -> {spec.hold.target}:{spec.hold.port} "
                      f"did not open: {first.get('outcome')} ({first.get('error')})")
    return proc, None


def _release(proc, spec: CheckSpec) -> dict | None:
    """Use the held connection once; its result (None if the holder said nothing)."""
    import json
    try:
        out, _ = proc.communicate("go\n", timeout=spec.timeout + 10)
    except subprocess.TimeoutExpired:
        return None
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _read_line(proc, timeout: float) -> str:
    import select
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def run_simulated(scenario: Scenario, backend, progress=lambda m: None, explain: bool = False) -> Report:
    """The scenario on the emulator: same checks, same judge, no kernel."""
    from ..emulator.net import SimNet
    from ..lab.plan import make_plan
    report = Report(scenario.name, backend.name, "(simulated)", ignored=list(scenario.ignored),
                    seed=backend.seed)
    plan = make_plan(scenario.topology, scenario.name, scenario.frontend_routes)
    net = SimNet(plan, scenario.services, backend.seed, backend.timeouts)
    table = scenario.services

    def simulate(step: CheckSpec) -> CheckResult:
        ns = plan.netns_of(step.client)
        results = []
        held = None
        if step.hold is not None:
            held, failed = net.hold(plan.netns_of(step.hold.client), step.hold.ip, step.hold.port,
                                    step.hold.source_port, step.timeout)
            if failed is not None:
                return CheckResult(step.name, False, f"the held connection {step.hold.client} -> "
                                   f"{step.hold.target}:{step.hold.port} did not open: "
                                   f"{failed['outcome']} ({failed['error']})")
        if step.capture:
            net.recording = {}
        for i in range(step.requests):
            if i and step.interval:
                net.advance(step.interval)
            results.append(net.request(ns, step.ip, step.port, step.protocol, step.source_port, step.http_get,
                                       step.half_close, step.delay, step.size, step.timeout))
        result = evaluate(step, results, net.release(held, step.timeout) if held is not None else None)
        if step.capture:
            from ..judge.checks import with_capture
            frames = {n.obj: net.recording.get(n.name, []) for n in plan.namespaces}
            net.recording = None
            result = with_capture(result, step, scenario.topology, frames)
        return result

    from ..emulator.load import SimLoads
    loads = SimLoads(net, plan)
    updates = []            # (began, synced, name) on the emulator's clock, for the loads' failures
    for step in _steps(scenario, progress):
        if isinstance(step, Sleep):
            loads.sleep(step.seconds)
        elif isinstance(step, Update):
            report.events.extend(net.sync(step.table))
            table = step.table
            updates.append((net.now / 1e9, net.now / 1e9, step.name))
            loads.updated()
        elif isinstance(step, LoadSpec):
            loads.start(step)
        elif isinstance(step, EndLoad):
            report.results.append(evaluate_load(step, loads.stop(step.name), updates))
        else:
            result = judged(step, table, backend.name, simulate)
            if explain and not result.passed:
                result.explanation = _explanation(scenario, table, step, backend)
            report.results.append(result)
        net.collect()
    from ..contract.consts import INDEX
    report.counters = {n.obj: {k: v for k, v in sorted(n.datapath.s.metrics.items(), key=lambda kv: INDEX[kv[0]]) if v}
                       for n in (net.ns[ns.name] for ns in plan.namespaces) if n.datapath is not None}
    return report


def _steps(scenario: Scenario, progress):
    """The scenario's steps, announcing each."""
    checks = len(scenario.judged)
    n = 0
    for step in scenario.steps:
        if isinstance(step, Sleep):
            progress(f"sleep {step.seconds:g}s")
        elif isinstance(step, Update):
            progress(f"update: {step.name}")
        elif isinstance(step, LoadSpec):
            progress(f"load {step.name}: {step.rate:g}/s from {', '.join(step.clients)} to "
                     f"{step.target}:{step.port}/{step.protocol}, in the background")
        else:
            n += 1
            progress(f"check {n}/{checks}: {step.check if isinstance(step, EndLoad) else step.name}")
        yield step


def bring_up(scenario: Scenario, backend, lab_name: str, progress=lambda m: None, keep: bool = False) -> Lab:
    """Build the scenario's lab and program the backend on it. If programming fails (Ctrl-C
    included), nothing is left behind, unless `keep`: then the lab stays for a look at what the
    backend did install. (A lab whose build fails is always removed: Lab.create.)"""
    progress(f"building lab {lab_name} from {scenario.file}")
    lab = Lab.create(scenario.topology, lab_name, scenario.file, progress, backend.name,
                     scenario.frontend_routes)
    try:
        progress(f"programming backend {backend.name}")
        backend.setup(lab, scenario.services)
    except BaseException:
        if keep:
            progress(f"kept lab {lab_name} after the failure: `dataplane down {lab_name}` removes it")
        else:
            tear_down(lab, backend)
        raise
    return lab


def tear_down(lab: Lab, backend) -> None:
    """The backend's teardown, then the lab's, which runs even if the backend's fails."""
    try:
        backend.teardown(lab)
    finally:
        lab.teardown()


def run_live(scenario: Scenario, backend, lab_name: str, keep: bool = False,
             progress=lambda m: None, explain: bool = False) -> Report:
    """The scenario on a lab of namespaces (or, for a simulated backend, on the emulator). With
    `explain`, each failing check's result carries the path of one of its connections on this
    backend (run/explain.py), taken while the lab is still up."""
    if backend.simulated:
        return run_simulated(scenario, backend, progress, explain)
    report = Report(scenario.name, backend.name, lab_name, ignored=list(scenario.ignored), seed=backend.seed)
    old = on_terminate()
    lab = loads = None
    try:
        lab = bring_up(scenario, backend, lab_name, progress, keep)
        from .loads import LiveLoads
        loads = LiveLoads(lab)
        updates = []        # (began, synced, name) on CLOCK_MONOTONIC, for the loads' failures
        table = scenario.services
        for step in _steps(scenario, progress):
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
            elif isinstance(step, Update):
                began = time.monotonic()
                for line in backend.sync(lab, step.table):
                    progress(line)
                    report.events.append(line)
                table = step.table
                updates.append((began, time.monotonic(), step.name))
            elif isinstance(step, LoadSpec):
                loads.start(step)
            elif isinstance(step, EndLoad):
                report.results.append(evaluate_load(step, loads.stop(step.load), updates))
            else:
                result = judged(step, table, backend.name, lambda s: run_check(lab, s))
                if explain and not result.passed:
                    result.explanation = _explanation(scenario, table, step, backend, lab)
                report.results.append(result)
            backend.collect()      # garbage-collect expired flows between steps
        report.counters = {node: {k: v for k, v in m.items() if v} for node, m in backend.metrics().items()}
        return report
    finally:
        try:
            if loads is not None:
                loads.stop_all()        # generators are lab processes: the lab's teardown would kill them too
        finally:
            _finish(lab, backend, keep, lab_name, progress, old)


def _explanation(scenario: Scenario, table, step: CheckSpec, backend, lab=None) -> list[str]:
    """`explain` for a failing check, on the backend that failed it: the reference model for eBPF
    and the emulator, the rules the lab's nodes hold for kube-proxy's modes."""
    from . import explain as ex
    try:
        target = ex.target_of_check(scenario, table, step)
        name = "ebpf" if backend.simulated else backend.name
        live = None
        if name != "ebpf":
            def live(node, _mode):
                ns = lab.plan.netns_of(node)
                return backend.rules(ns), f"installed in {ns}"
        [out] = ex.explain(scenario, table, target, (name,), seed=backend.seed or 0, live=live)
        return ex.format_text([out]).splitlines()
    except Exception as exc:      # an explanation must never cost the run its report
        return [f"(no explanation: {exc})"]


def _finish(lab, backend, keep: bool, lab_name: str, progress, old_handlers: dict) -> None:
    try:
        if lab is not None and not keep:
            tear_down(lab, backend)
        elif lab is not None:
            progress(f"kept lab {lab_name}: `dataplane down {lab_name}` removes it")
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
