"""`dataplane fuzz packets`, bounded: generated frames through the BPF programs and the oracle
must agree, the search must reach every translation path, and a planted bug must be found,
shrunk to a few events, saved and replayed."""
from __future__ import annotations

import json
import random

from dataplane.run.fuzz import packets

# what a run of 20,000 frames must have reached, or the generator has gone blind
MUST_REACH = ("M_DNAT_NEW", "M_DNAT", "M_REVNAT", "M_SNAT_NEW", "M_SNAT", "M_UNSNAT", "M_HAIRPIN", "M_ICMP_REVNAT",
              "M_AFFINITY_HIT", "REJECT_NO_ENDPOINTS", "REJECT_PORT_UNSERVED", "DROP_NO_LOCAL_ENDPOINT",
              "DROP_CT_LOST", "DROP_IP_OPTIONS", "DROP_BAD_LEN", "DROP_SNAT_EXHAUSTED")


def test_twenty_thousand_frames_agree(tmp_path, node_netns):
    out = packets.fuzz(20000, 1, tmp_path, progress=print)
    print(packets.summary(out, 1))
    assert out.mismatch is None, packets.summary(out, 1)
    assert out.stats.frames >= 20000
    missed = [c for c in MUST_REACH if not out.stats.counters[c]]
    assert not missed, f"the generated frames never reached {missed}"


def test_a_fresh_seed_agrees(tmp_path, node_netns):
    seed = random.SystemRandom().randrange(2**32)
    print(f"fresh seed: {seed} (replay: dataplane fuzz packets --seed {seed} --count 3000)")
    out = packets.fuzz(3000, seed, tmp_path, progress=print)
    assert out.mismatch is None, packets.summary(out, seed)


def test_a_planted_bug_is_found_shrunk_saved_and_replayed(tmp_path, node_netns, monkeypatch):
    """An oracle that picks the next eligible endpoint (an off-by-one in the backend choice): the
    search finds it, the reproducer is a handful of events, replaying it fails while the bug is
    there and passes once it is gone."""
    from dataplane.oracle.datapath import PodHooks
    choose = PodHooks._lb4_choose_backend

    def off_by_one(self, svc, client, h, now, why):
        return choose(self, svc, client, h + 1, now, why)

    monkeypatch.setattr(PodHooks, "_lb4_choose_backend", off_by_one)
    out = packets.fuzz(20000, 2, tmp_path, progress=print)
    assert out.mismatch is not None, "an off-by-one in the backend choice went unnoticed"
    report = packets.summary(out, 2)
    assert "MISMATCH" in report and f"--replay {out.saved}" in report
    case = json.loads(out.saved.read_text())
    assert 1 <= len(case["events"]) <= 3, report
    assert packets.replay(out.saved).mismatch is not None
    monkeypatch.setattr(PodHooks, "_lb4_choose_backend", choose)
    assert packets.replay(out.saved).mismatch is None


def test_sigterm_removes_the_fuzzers_namespace(node_netns):
    """Interrupted (SIGTERM) while it runs: exits non-zero, its namespace is gone."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from dataplane.lab import netns

    # faulthandler: if it does not exit, SIGABRT makes it print where every thread is
    proc = subprocess.Popen([sys.executable, "-c", "from dataplane.cli import main; main()", "fuzz", "packets",
                             "--count", "10000000", "--seed", "3"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    ns = f"dp-fuzz{proc.pid}.node1"
    said = []
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "frames/s" not in line and time.monotonic() < deadline:      # running: cases under way
            line = proc.stderr.readline()
        assert "frames/s" in line, "the fuzzer never got going"
        # from now on its stderr is read aside, so that a full pipe can never hold it up
        reader = threading.Thread(target=lambda: said.extend(proc.stderr), daemon=True)
        reader.start()
        assert ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
            reader.join(timeout=10)
            raise AssertionError("fuzz packets did not exit within 60 s of SIGTERM; where it was:\n"
                                 + "".join(said)[-6000:]) from None
        assert code == 130, "".join(said)[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = netns.exists(ns)
        if left:
            netns.remove(ns)        # one failure here must not fail every lab test after it
    assert not left, f"{ns} was left behind"
