"""Background loads on a live lab: one generator process (dataplane.lab.workload.load) per client,
started by a scenario's `load` step and stopped by its `endLoad` (judge/load.py judges the
summaries). Whatever is still running when the run ends (a failure, Ctrl-C, SIGTERM) is killed by
`stop_all`: a generator stays tracked until it has been stopped."""
from __future__ import annotations

import json
import select
import subprocess
import sys

from ..lab import netns
from ..spec.load import LoadSpec

START_TIMEOUT = 10.0      # seconds for a generator to say it runs
SUMMARY_KEYS = {"t0", "requests", "skipped", "due", "seconds", "outcomes", "answered", "failures", "ms"}


def generator_argv(python: str, spec: LoadSpec) -> list[str]:
    return [python, "-m", "dataplane.lab.workload.load", "--to", str(spec.ip), "--port", str(spec.port),
            "--protocol", spec.protocol, "--rate", f"{spec.rate:g}", "--timeout", f"{spec.timeout:g}"]


class LiveLoads:
    def __init__(self, lab):
        self.lab = lab
        self.running: dict[str, dict] = {}      # load name -> client -> Popen, or why it did not start

    def start(self, spec: LoadSpec) -> None:
        procs = self.running[spec.name] = {}    # tracked before the first process exists
        for client in spec.clients:
            proc = netns.popen(self.lab.record.objects[client], generator_argv(sys.executable, spec),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cgroup=self.lab.cgroup_of(client))
            procs[client] = proc
            ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
            line = proc.stdout.readline() if ready else ""
            if not line.startswith('{"started"'):
                err = _kill(proc)
                procs[client] = f"the load generator did not start: {line.strip() or err or f'exit {proc.returncode}'}"

    def stop(self, spec: LoadSpec) -> dict:
        """Stop a load: client -> its generator's summary, or why there is none. Each generator
        leaves `running` only once stopped, so an interruption here leaves the rest to stop_all."""
        procs = self.running[spec.name]
        out = {}
        for client in list(procs):
            out[client] = _stop(procs[client], spec.timeout)
            del procs[client]
        del self.running[spec.name]
        return out

    def stop_all(self) -> None:
        for procs in self.running.values():
            for proc in procs.values():
                if not isinstance(proc, str):
                    _kill(proc)
        self.running.clear()


def _stop(proc, timeout: float):
    """Tell a generator to stop; its summary, or why there is none."""
    if isinstance(proc, str):
        return proc
    try:
        out, err = proc.communicate("stop\n", timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return f"the load generator did not stop within {timeout + 10:g} s"
    try:
        summary = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        summary = None
    if proc.returncode != 0 or not isinstance(summary, dict) or not SUMMARY_KEYS <= summary.keys():
        return f"the load generator failed (exit {proc.returncode}): {err.strip()[-300:] or 'no summary'}"
    return summary


def _kill(proc) -> str:
    """Kill a generator and close its pipes; what it had written on stderr."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    err = ""
    if proc.stderr is not None and not proc.stderr.closed:
        err = (proc.stderr.read() or "").strip()[-300:]
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None and not pipe.closed:
            pipe.close()
    return err
