"""`run --backend all`: one table (check x backend) and one JSON document."""
from __future__ import annotations

import json

import click

from dataplane.judge.checks import CheckResult
from dataplane.report import matrix, matrix_json
from dataplane.run.runner import Report


def reports():
    out = []
    for backend, second in (("ebpf", CheckResult("unserved", True, "refused x1", {"refused": 1})),
                            ("iptables", CheckResult("unserved", True, "dropped x1", {"dropped": 1},
                                                     difference="cluster-ip-unserved-port")),
                            ("nftables", CheckResult("unserved", False, "expected refused, got dropped x1",
                                                     {"dropped": 1}))):
        r = Report("s", backend, "lab")
        r.results = [CheckResult("serves", True, "reachable x3", {"reachable": 3}), second]
        out.append(r)
    return out


def test_table_has_a_row_per_check_and_a_column_per_backend():
    text = click.unstyle(matrix(reports()))
    lines = text.splitlines()
    assert lines[0] == "scenario s: 2 checks on 3 backends"
    assert lines[1].split() == ["check", "ebpf", "iptables", "nftables"]
    assert lines[2].split() == ["serves", "PASS", "PASS", "PASS"]
    assert lines[3].split() == ["unserved", "PASS", "PASS*", "FAIL"]
    assert "* documented difference cluster-ip-unserved-port (docs/differences.md): iptables: dropped" in text
    assert "FAIL on nftables: unserved: expected refused, got dropped x1" in text
    assert lines[-1] == "5 of 6 checks passed"


def test_json_groups_results_by_check():
    doc = json.loads(matrix_json(reports()))
    assert doc["backends"] == ["ebpf", "iptables", "nftables"] and doc["passed"] is False
    assert [c["name"] for c in doc["checks"]] == ["serves", "unserved"]
    assert doc["checks"][1]["results"]["iptables"]["outcomes"] == {"dropped": 1}
    assert set(doc["reports"]) == {"ebpf", "iptables", "nftables"}


def test_a_loads_cell_counts_its_failed_requests():
    out = []
    for backend, failed in (("ebpf", 0), ("nftables", 2)):
        r = Report("s", backend, "lab")
        r.results = [CheckResult("load l", not failed, "...", {"reachable": 147 - failed, "refused": failed} if failed
                                 else {"reachable": 147}, failures=[{}] * failed, requests=147)]
        out.append(r)
    lines = click.unstyle(matrix(out)).splitlines()
    assert lines[2].split() == ["load", "l", "PASS", "0/147", "FAIL", "2/147"]
