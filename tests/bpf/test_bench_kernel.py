"""`dataplane bench kernel`, bounded: every path it times is the path it names (a frame that is
dropped, or takes another branch, would time something else), and it leaves nothing behind."""
from __future__ import annotations

import os

from dataplane.lab import netns
from dataplane.run.bench.kernel import PATHS, run_kernel


# the counter each call of a path must move (the programs count every decision)
EXPECTED = {"not-service": "M_PASS", "new-flow": "M_DNAT_NEW", "established": "M_DNAT", "reply": "M_REVNAT",
            "nodeport-new": "M_DNAT_NEW", "masquerade-new": "M_SNAT_NEW", "masquerade-est": "M_SNAT"}


def test_every_path_is_the_one_it_names():
    results = run_kernel(fills=(1, 200), calls=300, seed=3)
    assert [(r.path, r.services) for r in results] == [(p, n) for n in (1, 200) for p in PATHS]
    for r in results:
        assert r.calls == 300 and 0 < r.p50 <= r.p90 <= r.p99, r
        assert "drop" not in r.verdict, f"{r.path} at {r.services} services ends in {r.verdict}: {r.counters}"
        if r.path == "floor":
            assert r.counters == {}, r            # not our program
        else:
            assert r.counters.get(EXPECTED[r.path]) == 300, f"{r.path}: {r.counters}"
    assert not netns.exists(f"dp-bench{os.getpid()}.node1")
