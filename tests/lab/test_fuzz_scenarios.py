"""Scenario fuzzing, bounded: generated scenarios on every backend (ebpf, iptables,
iptables-legacy, nftables, emulator), every check agreeing across them except where
docs/differences.md documents otherwise. Two fixed seeds (small labs: the eBPF backend compiles its
programs per node) and one fresh seed, printed, so that every run of the suite searches a little
further. A failure names the saved scenario that replays it."""
from __future__ import annotations

import pytest

from dataplane.backends import CONFORMANCE
from dataplane.run.fuzz.scenarios import Fuzzer, fresh_seed

pytestmark = pytest.mark.lab

# (seed, index): a flat one-node cluster with a LoadBalancer, affinity and two updates; an island
# one-node cluster with NodePort and LoadBalancer services, affinity and two updates
FIXED = [(3, 0), (21, 0)]


def test_generated_scenarios_agree_on_every_backend(tmp_path, capsys):
    seed = fresh_seed()
    with capsys.disabled():
        print(f"\nfresh seed of this run: {seed} (replay: sudo dataplane fuzz scenarios --seed {seed} --count 1)")
    lines = []
    with Fuzzer(CONFORMANCE, str(tmp_path / "failures"), lines.append) as fuzzer:     # one process pool
        runs = [fuzzer.run(s, index) for s, index in FIXED + [(seed, 0)]]
    for r in runs:
        lines.append(f"seed {r.seed} index {r.index}: {r.checks} checks, {r.seconds:.1f}s, "
                     + ("agree" if r.agree else "DISAGREE"))
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert [tuple(r.backends) for r in runs] == [CONFORMANCE] * 3
    assert all(len(r.reports) == len(CONFORMANCE) for r in runs), [r.crashed for r in runs]
    bad = [f"seed {r.seed} index {r.index} (fresh seed {seed}; saved {r.saved}):\n" + "\n".join(r.disagreements)
           for r in runs if not r.agree]
    assert not bad, "\n".join(bad)
