"""`dataplane bench all` and its parts: which figures, with what sizes, in what order.

Per backend, one BenchLab (lab.py) holds every figure of that backend, so the figures of one
backend share a lab and a run: first the control-plane figures (sync.py) for each N, before any
traffic (an eBPF sync walks its conntrack table, and would pay for what the traffic left there);
then connect at each N (ascending); at the largest N the established-path figures (rr, crr,
throughput, nodeport).
The kernel figures (kernel.py) need no lab. Every lab is removed when its backend is done, also
on an error or Ctrl-C.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace

from . import sync, traffic
from .lab import BenchLab, table

BENCHES = ("sync", "connect", "rr", "throughput", "nodeport", "kernel")
LAB_BENCHES = ("sync", "connect", "rr", "throughput", "nodeport")


@dataclass(frozen=True)
class Params:
    backends: tuple = ("ebpf", "iptables", "iptables-legacy", "nftables")
    services: tuple = (1, 1000, 10000)
    reps: int = 3
    connects: int = 10000           # connections per connect figure and repeat
    round_trips: int = 10000        # per rr figure and repeat
    seconds: float = 5              # per throughput, crr, nodeport and churn figure and repeat
    kernel_fills: tuple = (1, 1000, 10000, 65536)
    kernel_calls: int = 20000
    seed: int = 1
    source: str = "synthetic"       # where the filler services came from (synthetic, or a dump)
    imported: object = None         # a Background (imported.py): the dump's services, beside the fillers


FULL = Params()
QUICK = Params(backends=("ebpf", "iptables", "nftables"), services=(1, 1000), reps=3, connects=2000,
               round_trips=2000, seconds=2, kernel_fills=(1, 1000, 10000), kernel_calls=3000)


@dataclass
class Run:
    params: Params
    benches: tuple
    machine: str
    revision: str
    date: str
    seconds: float = 0
    rows: list = field(default_factory=list)
    errors: list = field(default_factory=list)      # {"backend", "error"}: a backend whose run failed

    def to_json(self) -> dict:
        p = self.params
        return {"machine": self.machine, "revision": self.revision, "date": self.date,
                "seconds": round(self.seconds, 1), "benches": list(self.benches),
                "params": {"backends": list(p.backends), "services": list(p.services), "reps": p.reps,
                           "connects": p.connects, "round_trips": p.round_trips, "seconds": p.seconds,
                           "kernel_fills": list(p.kernel_fills), "kernel_calls": p.kernel_calls, "seed": p.seed,
                           "services_from": p.source},
                "rows": self.rows, "errors": self.errors}


def run(benches, params: Params, progress=lambda m: None) -> Run:
    out = Run(params, tuple(b for b in BENCHES if b in benches), sync.machine(), sync.revision(),
              time.strftime("%Y-%m-%d %H:%M %Z"))
    t0 = time.monotonic()
    if any(b in LAB_BENCHES for b in benches):
        for i, name in enumerate(params.backends):
            # each backend its own stream of the seed: the same random targets and changes for all
            rng = random.Random(f"{params.seed}:{name}")
            try:
                out.rows += _backend(name, f"bench{i}", benches, params, rng, progress)
            except Exception as exc:        # noqa: BLE001 - reported as a row; the other backends go on
                progress(f"{name}: failed: {exc}")
                out.errors.append({"backend": name, "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
    if "kernel" in benches:
        out.rows += _kernel(params, progress)
    out.seconds = time.monotonic() - t0
    return out


def _backend(name: str, lab_name: str, benches, params: Params, rng: random.Random, progress) -> list[dict]:
    rows = []
    background = params.imported.services if params.imported is not None else ()
    lab = BenchLab(name, lab_name, progress)
    try:
        sizes = sorted(params.services)
        if "sync" in benches:       # first, on a lab no traffic has filled a conntrack table of yet
            for fillers in sizes:
                rows += sync.control(lab, table(fillers, lab.pods, background), params.reps, params.seconds, rng)
        for fillers in sizes:
            full = table(fillers, lab.pods, background)
            n = fillers + len(background)
            lab.sync(full)
            if "connect" in benches:
                lab.forget_flows()
                rows += traffic.connect(lab, n, fillers, params.connects, params.reps, rng)
        # every traffic figure from empty conntrack tables, whatever ran before it
        if "rr" in benches:
            lab.forget_flows()
            rows += traffic.rr(lab, n, fillers, params.round_trips, params.reps)
        if "throughput" in benches:
            lab.forget_flows()
            rows += traffic.crr(lab, n, fillers, params.seconds, params.reps)
            lab.forget_flows()
            rows += traffic.throughput(lab, n, params.seconds, params.reps)
        if "nodeport" in benches:
            lab.forget_flows()
            rows += traffic.nodeport(lab, n, params.seconds, params.reps)
    finally:
        lab.close()
    return rows


def _kernel(params: Params, progress) -> list[dict]:
    from .kernel import run_kernel
    rows = []
    for r in run_kernel(params.kernel_fills, params.kernel_calls, seed=params.seed, progress=progress):
        for stat in ("p50", "p99"):
            v = getattr(r, stat)
            rows.append({"bench": "kernel", "backend": "ebpf", "services": r.services, "target": r.path,
                         "stat": stat, "unit": "ns", "value": v, "spread": [v, v], "reps": [v],
                         "samples": r.calls, "verdict": r.verdict})
    return rows


def quick_or_full(quick: bool, **overrides) -> Params:
    base = QUICK if quick else FULL
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
