"""Health-check node ports in a live lab: one server per node (dataplane.backends.healthcheck_server)
serving every healthCheckNodePort that node has, from a state file that each sync rewrites. The
servers run in the node namespaces, so lab teardown removes them with everything else."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from ..errors import LabError
from ..lab import netns, state
from ..spec.policy import health_checks


class HealthChecks:
    def __init__(self, lab):
        self.lab = lab
        self.procs: dict = {}      # node -> (ports, Popen)

    def _state_file(self, node: str) -> str:
        d = os.path.join(state.STATE_DIR, self.lab.name + ".logs")
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, f"{node}.health")

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
