"""The conformance matrix: every scenario on every backend: ebpf (real namespaces, TC, sockets),
kube-proxy's iptables mode (iptables-nft and iptables-legacy) and nftables mode (real rules in
the node namespaces) and the emulator with the oracle at the hooks. Each must pass, every check with
the same outcome on every backend, except where docs/differences.md documents otherwise. The
lessons (scenarios/lessons/, docs/lessons/) are in the matrix too, as `lessons/NN-topic`."""
from __future__ import annotations

import multiprocessing
import random
from concurrent.futures import ProcessPoolExecutor

import pytest

from dataplane import backends
from dataplane.backends import CONFORMANCE, get
from dataplane.judge.differences import BY_KEY
from dataplane.run.runner import run_live
from dataplane.spec.scenario import load
from tests.conftest import SCENARIOS

ALL = sorted(p.stem for p in SCENARIOS.glob("*.yaml")) + \
    sorted(f"lessons/{p.stem}" for p in SCENARIOS.glob("lessons/*.yaml"))


def _run(path: str, backend: str, seed: int, lab: str):
    """One backend's run, in a process of its own (a run owns its signal handlers and its lab)."""
    return run_live(load(path), get(backend, strict=False, seed=seed), lab)


@pytest.mark.parametrize("name", ALL)
def test_scenario_on_every_backend(name):
    """The live backends run side by side, each on a lab of its own (the matrix spends most of its
    time waiting: timeouts of dropped checks, sleeps); the emulator runs here."""
    path = str(SCENARIOS / f"{name}.yaml")
    seed = random.SystemRandom().randrange(1 << 32)
    live = [b for b in CONFORMANCE if not backends.class_of(b).simulated]
    short = name.rpartition("/")[2]                 # lab names: no "lessons/"
    with ProcessPoolExecutor(len(live), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {b: pool.submit(_run, path, b, seed, f"t{i}-{short}"[:20]) for i, b in enumerate(live)}
        simulated = {b: _run(path, b, seed, "unused") for b in CONFORMANCE if b not in futures}
        done = {b: f.result() for b, f in futures.items()}
    reports = [done.get(b) or simulated[b] for b in CONFORMANCE]
    ebpf = reports[0]
    assert [r.backend for r in reports] == list(CONFORMANCE)
    for report in reports:
        failed = [f"{r.name}: {r.detail}" for r in report.results if not r.passed]
        assert not failed, f"{report.backend}: " + "; ".join(failed)
    for i, check in enumerate(ebpf.results):
        outcomes = {r.backend: sorted(r.results[i].outcomes) for r in reports}
        documented = {r.results[i].difference for r in reports if r.results[i].difference}
        if len({tuple(o) for o in outcomes.values()}) > 1:
            # outcomes may differ only as one documented difference says, backend by backend
            assert len(documented) == 1, f"{check.name}: undocumented difference {outcomes}"
            diff = BY_KEY[documented.pop()]
            assert outcomes == {b: [diff.outcomes[b]] for b in CONFORMANCE}, check.name
