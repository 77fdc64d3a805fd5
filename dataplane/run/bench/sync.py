"""Control-plane figures on a BenchLab: `dataplane bench sync`.

Per backend and N, time.perf_counter around the backend's sync call (rules tools or map writes
included, conntrack cleanup included):

  apply all    the table emptied (untimed), then N filler services written in one sync
  change one   one service gains an endpoint: a sync told of that one change (the table's change
               tracker, `ServiceTable.updated`, as the agent's apply or an informer event tells it);
               then it loses it again, timed apart ("endpoint removed"): a change that can doom
               flows, so the eBPF backend walks its conntrack tables, which a gain does not need
  churn        for SECONDS, a random service gains or loses that endpoint, one sync per change:
               changes absorbed per second of sync time; then the same with BATCH changes per sync (as
               kube-proxy batches the events of its minSyncPeriod)
  memory       the kernel's unreclaimable memory (SUnreclaim + Percpu + VmallocUsed of
               /proc/meminfo) after apply all, less before it, per service, each read a second after
               the sync before it (memory freed through RCU is freed by then). The eBPF service
               maps allocate entries on demand, so theirs grows with N; its conntrack table is
               preallocated at load and is not in the figure. Machine-wide: anything else the
               machine does in that window is in it, so only N >= 1,000 is shown.

Every figure is repeated REPS times on the same lab, its median and spread reported.
"""
from __future__ import annotations

import os
import platform
import random
import subprocess
import time

from .lab import BenchLab, table, toggled
from .traffic import _row

BATCH = 100
SETTLE = 1.0        # seconds before each memory reading: RCU-deferred frees done


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu})"


def revision() -> str:
    """The checkout's commit, with '+' if it has changes: a figure names the code it measured."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (rev + ("+" if dirty else "")) if rev else "?"


def kernel_memory() -> int:
    fields = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            fields[k] = int(v.split()[0]) * 1024
    return fields.get("SUnreclaim", 0) + fields.get("Percpu", 0) + fields.get("VmallocUsed", 0)


def _toggled(lab: BenchLab, current, keys) -> object:
    """current with an endpoint toggled in each of the services `keys`, as one tracked change."""
    extra = lab.pods["remote"]
    return current.updated([toggled(current.services[k], extra) for k in keys])


def control(lab: BenchLab, full, reps: int, seconds: float, rng: random.Random) -> list[dict]:
    """The figures of syncing `full` (a table of lab.py's), N its services besides the bench's own."""
    name = lab.backend.name
    keys = [k for k, s in full.services.items() if s.namespace != "bench" and s.endpoints]
    n = sum(1 for s in full if s.namespace != "bench")
    apply_s, change_s, removal_s, memory = [], [], [], []
    empty = table(0, lab.pods)
    for _ in range(reps):
        lab.sync(empty)
        lab.progress(f"{name}: apply {n:,} services")
        time.sleep(SETTLE)
        before = kernel_memory()
        t0 = time.perf_counter()
        lab.sync(full)
        apply_s.append((time.perf_counter() - t0) * 1000)
        time.sleep(SETTLE)
        memory.append((kernel_memory() - before) / n)
        lab.progress(f"{name}: change one of {n:,}")
        key = rng.choice(keys)
        nxt = _toggled(lab, lab.table, [key])
        t0 = time.perf_counter()
        lab.sync(nxt)
        change_s.append((time.perf_counter() - t0) * 1000)
        back = _toggled(lab, lab.table, [key])
        t0 = time.perf_counter()
        lab.sync(back)
        removal_s.append((time.perf_counter() - t0) * 1000)
    rows = [_row("sync", name, n, "apply all", "ms", apply_s), _row("sync", name, n, "change one", "ms", change_s),
            _row("sync", name, n, "change one, endpoint removed", "ms", removal_s)]
    if n >= 1000:
        rows.append(_row("sync", name, n, "kernel memory per service", "bytes", memory))
    for batch in (1, BATCH):
        rates = []
        for _ in range(reps):
            lab.progress(f"{name}: endpoint churn for {seconds:g} s, {batch} per sync, {n:,} services")
            rates.append(_churn(lab, keys, seconds, batch, rng))
        rows.append(_row("sync", name, n, f"churn, {batch} per sync", "changes/s", rates))
    return rows


def _churn(lab: BenchLab, keys: list, seconds: float, batch: int, rng: random.Random) -> float:
    """Changes per second absorbed: changes over the time spent in the syncs alone (the tables
    are built outside it); at least one sync, however long it takes."""
    batch = min(batch, len(keys))
    changes, spent = 0, 0.0
    while changes == 0 or spent < seconds:
        nxt = _toggled(lab, lab.table, rng.sample(keys, batch))    # the change, as an informer hands it over
        t0 = time.perf_counter()
        lab.sync(nxt)
        spent += time.perf_counter() - t0
        changes += batch
    return changes / spent
