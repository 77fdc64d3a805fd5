"""The scenario catalogue: the Kubernetes e2e behaviours the issues name are each covered by a
scenario, every scenario passes on the emulator (no root needed; the conformance matrix in
tests/lab runs them on every backend), and every scenario is described in the docs: the README's
table, or for the lessons (scenarios/lessons/) docs/lessons/README.md and a page of its own."""
from __future__ import annotations

import pytest

from dataplane.backends import get
from dataplane.run.runner import run_live
from dataplane.spec.scenario import load
from tests.conftest import ROOT, SCENARIOS

LESSONS = sorted(SCENARIOS.glob("lessons/*.yaml"))
ALL = sorted(p.stem for p in SCENARIOS.glob("*.yaml")) + [f"lessons/{p.stem}" for p in LESSONS]
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


def test_every_scenario_is_described():
    """Each scenario has a row in the README's table; each lesson a line in docs/lessons/README.md
    (its file, its page) and a page of its own, docs/lessons/NN-topic.md, that runs it."""
    readme = (ROOT / "README.md").read_text()
    for path in SCENARIOS.glob("*.yaml"):
        assert f"| `scenarios/{path.name}` |" in readme, f"{path.name} is not in the README's scenario table"
    assert LESSONS, "no lessons in scenarios/lessons/"
    index = (ROOT / "docs" / "lessons" / "README.md").read_text()
    for path in LESSONS:
        assert f"scenarios/lessons/{path.name}" in index, f"{path.name} is not in docs/lessons/README.md"
        assert f"({path.stem}.md)" in index, f"docs/lessons/README.md does not link {path.stem}.md"
        page = ROOT / "docs" / "lessons" / f"{path.stem}.md"
        assert page.exists(), f"{path.name} has no page {page.relative_to(ROOT)}"
        assert f"scenarios/lessons/{path.name}" in page.read_text(), f"{page.name} does not say how to run it"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_names(path):
    """Lesson NN-topic.yaml is named lesson-<topic>, short: lab names come from scenario names, and
    the test matrix prefixes them (t0-...)."""
    name = load(path).name
    assert name.startswith("lesson-") and len(name) <= 14, name
