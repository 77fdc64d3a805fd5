"""The documented differences: the table in docs/ is the one in code, and checks fall in a
situation only when they really are in it."""
from __future__ import annotations

from dataclasses import dataclass

from dataplane import backends
from dataplane.judge.differences import DIFFERENCES, REFERENCE, expectation, markdown_table, situations
from tests.bpf.packets import table
from tests.conftest import ROOT

SVC = "services:\n  - {name: web, clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n"
TOPO = "name: t\ntopology:\n  nodes: [node1]\n  pods: [{name: a, node: node1, labels: {app: web}}]\n"


@dataclass(frozen=True)
class Spec:
    ip: str
    port: int
    protocol: str = "TCP"
    expect: str = "refused"


def test_docs_hold_the_table_from_code():
    assert markdown_table() in (ROOT / "docs" / "differences.md").read_text()


def test_every_difference_names_every_conformance_backend_and_the_reference():
    for d in DIFFERENCES:
        assert set(d.outcomes) == set(backends.CONFORMANCE), d.key
        assert REFERENCE in d.outcomes


def test_unserved_port_of_a_cluster_ip_only():
    t = table(SVC, TOPO)
    assert situations(Spec("10.96.0.10", 81), t) == {"cluster-ip-unserved-port"}
    assert situations(Spec("10.96.0.10", 80, "UDP"), t) == {"cluster-ip-unserved-port"}
    assert situations(Spec("10.96.0.10", 80), t) == set()          # served
    assert situations(Spec("10.96.0.11", 81), t) == set()          # not a cluster IP


def test_expectation_per_backend_and_conflicts():
    t = table(SVC, TOPO)
    spec, diff, conflict = expectation(Spec("10.96.0.10", 81), t, "iptables")
    assert (spec.expect, diff.key, conflict) == ("dropped", "cluster-ip-unserved-port", None)
    spec, diff, conflict = expectation(Spec("10.96.0.10", 81), t, "nftables")
    assert (spec.expect, conflict) == ("refused", None)
    _, _, conflict = expectation(Spec("10.96.0.10", 81, expect="reachable"), t, "ebpf")
    assert "docs/differences.md" in conflict
    spec, diff, conflict = expectation(Spec("10.96.0.10", 80, expect="reachable"), t, "iptables")
    assert (spec.expect, diff, conflict) == ("reachable", None, None)
