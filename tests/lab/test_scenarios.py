"""The conformance matrix: every scenario on every backend: ebpf (real namespaces, TC, sockets),
kube-proxy's iptables mode (iptables-nft and iptables-legacy) and nftables mode (real rules in
the node namespaces) and the emulator with the oracle at the hooks. Each must pass, every check with
the same outcome on every backend, except where docs/differences.md documents otherwise."""
from __future__ import annotations

import pytest

from dataplane.backends import CONFORMANCE, get
from dataplane.judge.differences import BY_KEY
from dataplane.run.runner import run_live
from dataplane.spec.scenario import load
from tests.conftest import SCENARIOS

ALL = sorted(p.stem for p in SCENARIOS.glob("*.yaml"))


@pytest.mark.parametrize("name", ALL)
def test_scenario_on_every_backend(name):
    sc = load(SCENARIOS / f"{name}.yaml")
    ebpf = run_live(sc, get("ebpf"), f"t-{name}"[:20])
    reports = [ebpf] + [run_live(sc, get(b, strict=False, seed=ebpf.seed), f"t-{name}"[:20])
                        for b in CONFORMANCE if b != "ebpf"]
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
