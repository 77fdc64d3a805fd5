"""Background loads on a live lab: one generator process (dataplane.lab.workload.load) per client,
started by a scenario's `load` step and stopped by its `endLoad` (judge/load.py judges the
summaries). Whatever is still
running when the run ends (a failure, Ctrl-C) is killed by `stop_all`."""
from __future__ import annotations

import json
import select
import subprocess
import sys

from ..lab import netns
from ..spec.load import LoadSpec

START_TIMEOUT = 10.0      # seconds for a generator to say it runs


def generator_argv(python: str, spec: LoadSpec) -> list[str]:
    return [python, "-m", "dataplane.lab.workload.load", "--to", str(spec.ip), "--port", str(spec.port),
            "--protocol", spec.protocol, "--rate", f"{spec.rate:g}", "--timeout", f"{spec.timeout:g}"]


class LiveLoads:
    def __init__(self, lab):
        self.lab = lab
        self.running: dict[str, dict] = {}      # load name -> client -> Popen, or why it did not start

    def start(self, spec: LoadSpec) -> None:
        procs = self.running[spec.name] = {}
        for client in spec.clients:
            proc = netns.popen(self.lab.record.objects[client], generator_argv(sys.executable, spec),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cgroup=self.lab.cgroup_of(client))
            procs[client] = proc
            ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
            line = proc.stdout.readline() if ready else ""
            if not line.startswith('{"started"'):
                _kill(proc)
                procs[client] = f"the load generator did not start: {line.strip() or _stderr(proc)}"

    def stop(self, spec: LoadSpec) -> dict:
        """Stop a load: client -> its generator's summary, or why there is none."""
        return {client: _stop(proc, spec.timeout) for client, proc in self.running.pop(spec.name).items()}

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
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"the load generator failed (exit {proc.returncode}): {err.strip()[-300:] or 'no output'}"


def _stderr(proc) -> str:
    _kill(proc)
    return (proc.stderr.read() or "").strip()[-300:] or f"exit {proc.returncode}"


def _kill(proc) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
