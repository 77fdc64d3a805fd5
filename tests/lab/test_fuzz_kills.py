"""The bounded run of `dataplane fuzz kills` (issue 12: SIGKILL at random moments, then
`down --all` leaves nothing): ten rounds of a fixed seed, and the audit it relies on has teeth."""
from __future__ import annotations


from dataplane.lab import audit, netns
from dataplane.run.fuzz.kills import fuzz_kills
from tests.conftest import SCENARIOS
from tests.lab.conftest import dataplane


def test_ten_rounds_of_sigkill_leave_nothing():
    said = []
    rounds = fuzz_kills(10, 12, str(SCENARIOS / "clusterip.yaml"), progress=said.append)
    assert len(rounds) == 10, said
    bad = [r.describe() for r in rounds if not r.clean]
    assert not bad, bad
    # the rounds did kill something in each phase they chose, mostly after the phase began
    assert sum(r.reached for r in rounds) >= 8, said
    assert len({r.phase for r in rounds}) >= 3, said
    assert "10 rounds, 10 clean" in said[-1]


def test_the_audit_sees_what_down_all_must_remove():
    netns.create("dp-t-audit.node1")
    try:
        assert "netns dp-t-audit.node1" in audit.leftovers()
    finally:
        dataplane("down", "--all", check=True)
    assert audit.leftovers() == []


def test_fuzz_kills_refuses_while_labs_exist(tmp_path):
    netns.create("dp-t-busy.node1")
    try:
        proc = dataplane("fuzz", "kills", "--count", "1", "--scenario", str(SCENARIOS / "clusterip.yaml"))
        assert proc.returncode != 0 and "remove them first" in proc.stderr
        assert netns.exists("dp-t-busy.node1")
    finally:
        dataplane("down", "--all", check=True)
