"""How long a backend takes to program N services, to change one of them, and what a connection
costs with N services installed, on one lab node.

Method, per backend and N: build a one-node lab (pods `web` and `client`), set the backend up with
no services, then time `sync` to N services (everything written), then `sync` to the same table
with one service given a second endpoint (one change, made with the table's change tracker:
`ServiceTable.updated`), with time.perf_counter around the backend call (rules tools or map
writes included, conntrack cleanup included). Then the client opens
REQUESTS fresh TCP connections to the last service's cluster IP (last in kube-proxy's
KUBE-SERVICES order) and the median and 90th percentile of connect+request+answer are reported.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

from ... import backends
from ...lab.workload.argv import client_argv
from ...spec.checks import CheckSpec
from ...lab import netns
from ...lab.lab import Lab
from ...spec.table import ServiceTable
from .synthetic import one_node, services, vip

@dataclass
class Result:
    backend: str
    services: int
    apply_s: float          # sync from no services to N
    change_one_s: float     # sync of one changed service
    connect_ms_p50: float
    connect_ms_p90: float
    requests: int


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu})"


def run_one(backend_name: str, n: int, requests: int, lab_name: str = "bench", progress=lambda m: None) -> Result:
    spec = one_node()
    web = next(p for p in spec.pods if p.name == "web")
    table = services(n, pod_ip=str(web.ip))
    # one service gains an endpoint, told as a change (the table's tracker), as the agent's
    # apply or an informer event would tell it
    one = services(n, pod_ip=str(web.ip), two_endpoints={n // 2})
    key = f"default/svc-{n // 2:05d}"
    changed = table.updated([one.services[key]])
    backend = backends.get(backend_name)
    lab = Lab.create(spec, lab_name, progress=progress, backend=backend.name)
    try:
        backend.setup(lab, ServiceTable())
        progress(f"{backend_name}: applying {n} services")
        t0 = time.perf_counter()
        backend.sync(lab, table)
        t1 = time.perf_counter()
        backend.sync(lab, changed)
        t2 = time.perf_counter()
        progress(f"{backend_name}: {requests} connections to the last service")
        check = CheckSpec(name="bench", client="client", target="service", ip=vip(n - 1), port=80,
                          protocol="TCP", expect="reachable", requests=requests, timeout=2)
        out = netns.run(lab.record.objects["client"], client_argv(sys.executable, check), timeout=requests * 5 + 30)
        ms = [r["ms"] for r in json.loads(out.stdout)["results"] if r["outcome"] == "reachable"]
        if len(ms) != requests:
            raise RuntimeError(f"{backend_name}: only {len(ms)} of {requests} connections succeeded")
        ms.sort()
        return Result(backend_name, n, t1 - t0, t2 - t1, statistics.median(ms), ms[int(len(ms) * 0.9) - 1], requests)
    finally:
        try:
            backend.teardown(lab)
        finally:
            lab.teardown()
