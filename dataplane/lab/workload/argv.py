"""Command lines that start the lab's test client (dataplane.lab.workload.client) for a check, and
the reading of its answer."""
from __future__ import annotations

import json

from ...spec.checks import CheckSpec


def client_argv(python: str, spec: CheckSpec) -> list[str]:
    argv = [python, "-m", "dataplane.lab.workload.client", "--to", str(spec.ip), "--port", str(spec.port),
            "--protocol", spec.protocol, "--requests", str(spec.requests), "--timeout", str(spec.timeout)]
    if spec.interval:
        argv += ["--interval", str(spec.interval)]
    if spec.source_port:
        argv += ["--source-port", str(spec.source_port)]
    if spec.http_get:
        argv += ["--http-get", spec.http_get]
    if spec.half_close:
        argv.append("--half-close")
    if spec.delay:
        argv += ["--delay", f"{spec.delay:g}"]
    if spec.size:
        argv += ["--size", str(spec.size)]
    return argv


def hold_argv(python: str, spec: CheckSpec) -> list[str]:
    h = spec.hold
    argv = [python, "-m", "dataplane.lab.workload.client", "--hold", "--to", str(h.ip), "--port", str(h.port),
            "--timeout", str(spec.timeout)]
    if h.source_port:
        argv += ["--source-port", str(h.source_port)]
    return argv


def parse_client_output(stdout: str) -> list[dict]:
    return json.loads(stdout)["results"]
