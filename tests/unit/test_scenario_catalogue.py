"""The scenario catalogue: the Kubernetes e2e behaviours the issues name are each covered by a
scenario, and every scenario passes on the emulator (no root needed; the conformance matrix in
tests/lab runs them on every backend)."""
from __future__ import annotations

import pytest

from dataplane.backends import get
from dataplane.run.runner import run_live
from dataplane.spec.scenario import load
from tests.conftest import SCENARIOS

ALL = sorted(p.stem for p in SCENARIOS.glob("*.yaml"))
CLUSTERIP = ["clusterip", "multiport", "affinity", "hairpin", "no-endpoints", "internal-traffic-local",
             "terminating", "endpoint-update"]


def test_the_clusterip_list_is_complete():
    assert set(CLUSTERIP) <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_scenario_on_the_emulator(name):
    report = run_live(load(SCENARIOS / f"{name}.yaml"), get("emulator", seed=1), "unused")
    failed = [f"{r.name}: {r.detail}" for r in report.results if not r.passed]
    assert report.results and not failed, failed


def test_e2e_behaviours_are_all_covered():
    """The Kubernetes e2e behaviours issue 3 names, each in a scenario's comment."""
    text = "\n".join((SCENARIOS / f"{n}.yaml").read_text() for n in CLUSTERIP)
    for behaviour in ["should preserve source pod IP", "should serve multiport endpoints",
                      "should allow pods to hairpin back to themselves", "should be rejected when no endpoints",
                      "session affinity work / timeout work / be able to switch",
                      "should respect internalTrafficPolicy=Local", "should fallback to terminating endpoints",
                      "should serve endpoints on same port and different protocols",
                      "should be updated after adding or deleting ports"]:
        assert behaviour in text.replace("\n# ", " "), behaviour


def test_edge_e2e_behaviours_are_all_covered():
    """The Kubernetes e2e behaviours issue 4 names, each in a scenario's comment."""
    text = "\n".join(p.read_text() for p in SCENARIOS.glob("*.yaml")).replace("\n# ", " ")
    for behaviour in ["should be able to create a functioning NodePort service",
                      "should have session affinity work for NodePort service",
                      "should fail health check node port if there are only terminating endpoints",
                      "should fallback to local terminating endpoints when there are no ready endpoints "
                      "with externalTrafficPolicy=Local",
                      "should be able to preserve UDP traffic when server pod cycles for a NodePort service",
                      'ESIPP "should work for type=NodePort"', '"should only target nodes with endpoints"']:
        assert behaviour in text, behaviour
