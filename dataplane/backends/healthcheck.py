"""Health-check node ports in a live lab: one server per node (dataplane.backends.healthcheck_server)
serving every healthCheckNodePort that node has, from a state file that each sync rewrites. The
servers run in the node namespaces, so lab teardown removes them with everything else. Each
server's pid and ports are kept beside its state file, so an agent that restarts (reload, or after
being killed) adopts the servers still running instead of starting rivals for their ports."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from ..errors import LabError
from ..lab import netns, state
from ..spec.policy import health_checks


class _Adopted:
    """A server an earlier agent started: enough of Popen to stop it."""

    def __init__(self, pid: int):
        self.pid = pid

    def terminate(self) -> None:
        try:
            os.kill(self.pid, 15)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> None:
        import time
        end = time.monotonic() + (timeout or 10)
        while time.monotonic() < end and os.path.exists(f"/proc/{self.pid}"):
            try:
                if os.waitpid(self.pid, os.WNOHANG) != (0, 0):
                    return
            except ChildProcessError:
                pass
            time.sleep(0.05)


class HealthChecks:
    def __init__(self, lab):
        self.lab = lab
        self.procs: dict = {}      # node -> (ports, Popen or _Adopted)
        for node in lab.spec.nodes:
            found = self._running(node.name)
            if found is not None:
                self.procs[node.name] = found

    def _running(self, node: str):
        """(ports, process) of the server an earlier agent left running for `node`, or None."""
        try:
            with open(self._state_file(node) + ".pid") as f:
                info = json.load(f)
            with open(f"/proc/{info['pid']}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError, KeyError):
            return None
        if b"dataplane.backends.healthcheck_server" not in argv or self._state_file(node).encode() not in argv:
            return None
        return tuple(info["ports"]), _Adopted(info["pid"])

    def _state_file(self, node: str) -> str:
        return os.path.join(state.lab_files(self.lab.name), f"{node}.health")

    def sync(self, table) -> None:
        for node in self.lab.spec.nodes:
            checks = health_checks(table, node.name)
            path = self._state_file(node.name)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({str(p): [k, n] for p, (k, n) in checks.items()}, f)
            os.replace(tmp, path)
            ports = tuple(sorted(checks))
            running = self.procs.get(node.name)
            if running and running[0] == ports:
                continue
            if running:
                running[1].terminate()
                running[1].wait(timeout=10)
            if not ports:
                self.procs.pop(node.name, None)
                continue
            argv = [sys.executable, "-m", "dataplane.backends.healthcheck_server", "--state", path]
            for p in ports:
                argv += ["--port", str(p)]
            proc = netns.popen(self.lab.record.objects[node.name], argv, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True,
                               text=True, cgroup=self.lab.cgroup_of(node.name))
            if proc.stdout.readline().strip() != "ready":
                raise LabError(f"health-check server on {node.name} did not start")
            proc.stdout.close()
            self.procs[node.name] = (ports, proc)
            with open(path + ".pid", "w") as f:
                json.dump({"pid": proc.pid, "ports": list(ports)}, f)
