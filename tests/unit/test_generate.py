"""The scenario generator (dataplane/spec/generate.py): every scenario it writes loads, the same
seed writes the same scenario, and across seeds it covers every network model, service type,
policy and kind of check. Rootless; the comparison of backends is tested in test_fuzz_compare."""
from __future__ import annotations

from collections import Counter

import pytest

from dataplane.spec.generate import KINDS, MODELS, checks_of, scenario_doc, scenario_text
from dataplane.spec.scenario import Sleep, Update, load

SEEDS = range(200)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """(data, Scenario) of every seed's first scenario, and of a few later indexes."""
    d = tmp_path_factory.mktemp("generated")
    out = []
    for seed, index in [(s, 0) for s in SEEDS] + [(7, i) for i in range(1, 30)]:
        path = d / f"fuzz-{seed}-{index}.yaml"
        path.write_text(scenario_text(seed, index))
        out.append((scenario_doc(seed, index), load(path)))
    return out


def test_every_generated_scenario_loads(loaded):
    assert len(loaded) == len(SEEDS) + 29
    for doc, scenario in loaded:
        assert len(scenario.checks) == len(checks_of(doc)) >= 4


def test_same_seed_same_text_other_seeds_differ():
    assert scenario_text(5, 3) == scenario_text(5, 3)
    texts = {scenario_text(s, i) for s in range(20) for i in range(3)}
    assert len(texts) == 60


def test_labs_stay_small_and_runs_bounded(loaded):
    for doc, scenario in loaded:
        topo = scenario.topology
        assert 1 <= len(topo.nodes) <= 3 and len(topo.pods) <= 8 and len(topo.hosts) <= 1
        assert sum(s.seconds for s in scenario.steps if isinstance(s, Sleep)) <= 5
        assert not isinstance(scenario.steps[-1], Sleep)
        checks = scenario.checks
        assert all(c.timeout <= 2 for c in checks)
        assert sum(c.requests * c.timeout for c in checks) <= 60
        assert sum(1 for c in checks if c.timeout == 1) <= 3      # checks expected unanswered


def test_checks_guess_no_outcome(loaded):
    """A check expects the default, except at a service port it does not serve: there the
    reference outcome of the documented difference (cluster-ip-unserved-port)."""
    for doc, scenario in loaded:
        items, table = iter(checks_of(doc)), scenario.services
        for step in scenario.steps:
            if isinstance(step, Update):
                table = step.table
            if isinstance(step, (Sleep, Update)):
                continue
            item, check = next(items), step
            assert item.get("expect", "reachable") in ("reachable", "refused")
            if check.expect == "refused":
                assert item["name"].split(":")[0].endswith("pod-unserved-port")
            if check.same_backend and not check.source_port:   # deterministic only with affinity or one UDP flow
                serving = [svc for svc in table if any(
                    p.port == check.port and check.ip in (svc.cluster_ip, *svc.external_ips, *svc.load_balancer_ips)
                    or p.node_port == check.port for p in svc.ports)]
                assert serving and all(svc.session_affinity == "ClientIP" for svc in serving), item["name"]
            assert check.min_backends is None and check.max_share is None and not check.every_backend


def test_coverage_across_seeds(loaded):
    seen = Counter()
    for doc, scenario in loaded:
        seen[f"model {scenario.topology.network}"] += 1
        seen[f"nodes {len(scenario.topology.nodes)}"] += 1
        tables = [scenario.services] + [s.table for s in scenario.steps if isinstance(s, Update)]
        for table in tables:
            for svc in table:
                seen[f"type {svc.type}"] += 1
                seen[f"itp {svc.internal_traffic_policy}"] += 1
                if svc.type != "ClusterIP":
                    seen[f"etp {svc.external_traffic_policy}"] += 1
                if svc.session_affinity == "ClientIP":
                    seen[f"affinity {svc.affinity_timeout}"] += 1
                seen[f"ports {min(len(svc.ports), 3)}"] += 1
                seen.update("named targetPort" for p in svc.ports if isinstance(p.target_port, str))
                seen.update(f"protocol {p.protocol}" for p in svc.ports)
                if svc.load_balancer_source_ranges:
                    seen["source ranges"] += 1
                if svc.external_ips:
                    seen["external IPs"] += 1
                for ep in svc.endpoints:
                    seen["endpoint " + ("terminating" if ep.terminating else "ready" if ep.ready else "unready")] += 1
        for pod in scenario.topology.pods:
            seen["pod unready" if not pod.ready else "pod terminating" if pod.terminating else "pod ready"] += 1
        for step in scenario.steps:
            if isinstance(step, Sleep):
                seen["sleep"] += 1
        owner = {s["clusterIP"]: s["name"] for s in doc["services"] if "clusterIP" in s}
        for item in doc["checks"]:
            if "update" in item:
                u = item["update"]
                seen.update(f"update {k}" for k in ("pods", "services", "deleteServices") if k in u)
                for s in u.get("services", ()):
                    if owner.get(s.get("clusterIP"), s["name"]) != s["name"]:   # another service's IP
                        seen["update reuses a cluster IP"] += 1
                    owner.setdefault(s.get("clusterIP"), s["name"])
        for item, check in zip(checks_of(doc), scenario.checks):
            seen["kind " + item["name"].split(":")[0].split(" ", 1)[1]] += 1
            seen[f"check {check.protocol}"] += 1
            seen.update(k for k, on in (("sourcePort", check.source_port), ("halfClose", check.half_close),
                                        ("size 3000", check.size == 3000), ("requests>1", check.requests > 1),
                                        ("sameBackend", check.same_backend), ("backends", check.backends))
                        if on)
    want = ([f"model {m}" for m in MODELS] + [f"nodes {n}" for n in (1, 2, 3)]
            + [f"type {t}" for t in ("ClusterIP", "NodePort", "LoadBalancer")]
            + ["itp Cluster", "itp Local", "etp Cluster", "etp Local", "affinity 1", "affinity 2", "affinity 3",
               "ports 1", "ports 2", "ports 3", "named targetPort", "protocol TCP", "protocol UDP", "source ranges",
               "external IPs", "endpoint ready", "endpoint unready", "endpoint terminating", "pod unready",
               "pod terminating", "pod ready", "sleep", "update pods", "update services", "update deleteServices",
               "update reuses a cluster IP", "check TCP", "check UDP", "sourcePort", "halfClose", "size 3000",
               "requests>1", "sameBackend", "backends"]
            + [f"kind {k}" for k in KINDS])
    missing = [w for w in want if not seen[w]]
    assert not missing, f"never generated in {len(loaded)} scenarios: {missing}"
