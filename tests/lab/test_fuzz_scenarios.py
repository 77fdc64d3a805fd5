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


def test_sigterm_tears_down_every_lab_of_the_fuzzer(tmp_path):
    """Interrupted while its labs are up: exits 130, no lab, namespace or worker of it left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from dataplane.lab.lab import all_labs

    proc = subprocess.Popen([sys.executable, "-c", "from dataplane.cli import main; main()", "fuzz", "scenarios",
                             "--count", "5", "--seed", "77", "--save", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    tag = f"fz{proc.pid % 1000}-"
    try:
        deadline = time.monotonic() + 180
        while not any(n.startswith(tag) for n in all_labs()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert any(n.startswith(tag) for n in all_labs()), "the fuzzer never built a lab"
        time.sleep(3)                                   # mid-build or mid-check
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not [n for n in all_labs() if n.startswith(tag)]
    deadline = time.monotonic() + 15              # multiprocessing's resource tracker ends just after
    while True:
        leftovers = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not leftovers, f"processes of the fuzzer left: {leftovers}"
