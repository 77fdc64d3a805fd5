"""`dataplane explain` offline (no kernel): the eBPF path from the reference model and the
emulator, kube-proxy's modes from a walk of their rendered rules, compared; `run --explain` on the
emulator; the errors of a wrong --from or --to. Rows of (scenario, client, target) -> what every
backend must say."""
from __future__ import annotations

import json

import pytest

from dataplane.errors import DataplaneError
from dataplane.run import explain as ex
from dataplane.spec.scenario import load
from tests.conftest import SCENARIOS

WEB = {"10.0.1.3:8080", "10.0.2.2:8080", "10.0.2.3:8080"}


def run(scenario: str, client: str, to: str, protocol=None, backends=ex.BACKENDS):
    sc = load(SCENARIOS / scenario)
    target = ex.resolve(sc, sc.services, client, to, protocol)
    return {e.backend: e for e in ex.explain(sc, sc.services, target, backends)}


@pytest.mark.parametrize("scenario,client,to,verdict,candidates,masquerade", [
    # a ClusterIP from a pod: the same three candidates everywhere, DNAT to one of them
    ("clusterip.yaml", "pod/client", "service/web", "DNAT", WEB, False),
    ("clusterip.yaml", "pod/client", "service/web:dns", "DNAT", WEB, False),
    # a port the cluster IP does not serve: no candidates; rejected, but iptables mode has no rule
    # for it and lets it be routed on (docs/differences.md, cluster-ip-unserved-port), where
    # ip-masq-agent masquerades it (the service CIDR is no non-masquerade destination)
    ("clusterip.yaml", "pod/client", "10.96.0.10:81",
     {"ebpf": "REJECT", "iptables": "ACCEPT, masqueraded", "nftables": "REJECT"}, set(),
     {"iptables": True, "nftables": False}),
    # a node port with externalTrafficPolicy Local on a node with the endpoint: that one only
    ("nodeport.yaml", "host/ext", "node/node2:30081", "DNAT", {"10.0.2.2:8080"}, False),
    # a node's own process: the eBPF socket hook picks the backend at connect(); kube-proxy's OUTPUT chains,
    # which mark it for masquerade (its source is outside the cluster CIDR: it leaves as the node either way)
    ("host-network.yaml", "node/node1", "service/web", "DNAT", {"10.0.1.2:8080", "10.0.2.2:8080"}, True),
    # a load-balancer IP with eTP Local: met by the node the underlay routes it to, not the first node
    ("loadbalancer.yaml", "host/ext", "10.200.0.11:80", "DNAT", {"10.0.1.2:8080"}, False),
    # eTP Cluster from outside: any endpoint, masqueraded to the node
    ("nodeport.yaml", "host/ext", "node/node1:30080", "DNAT", {"10.0.1.2:8080", "10.0.2.2:8080"}, True),
])
def test_every_backend_explains_the_same_candidates_and_verdict(scenario, client, to, verdict, candidates,
                                                                 masquerade):
    out = run(scenario, client, to)
    assert list(out) == ["ebpf", "iptables", "nftables"]
    for backend, e in out.items():
        assert e.verdict == (verdict[backend] if isinstance(verdict, dict) else verdict), (backend, e.steps)
        assert set(e.candidates) == candidates, (backend, e.candidates)
        if verdict == "DNAT":
            assert e.chosen in candidates
    for backend in ("iptables", "nftables"):
        want = masquerade[backend] if isinstance(masquerade, dict) else masquerade
        assert any(n.startswith("masqueraded:") for n in out[backend].notes) == want, out[backend].notes


def test_the_ebpf_explanation_walks_the_hooks_of_the_first_packet_and_its_reply():
    e = run("clusterip.yaml", "pod/client", "service/web", backends=("ebpf",))["ebpf"]
    steps = "\n".join(e.steps)
    assert "frontend 10.96.0.10:80/TCP of default/web" in e.steps[0]
    assert "from_pod(v-client)" in e.steps[1] and "M_DNAT_NEW" in e.steps[1] and "hash 0x" in e.steps[1]
    assert e.chosen in e.steps[1]
    assert "M_REVNAT" in steps and "10.96.0.10:80 -> 10.0.1.2" in steps        # the reply, from the VIP
    assert e.candidates == sorted(WEB, key=lambda a: tuple(int(x) for x in a.replace(":", ".").split(".")))


def test_the_kube_proxy_walks_name_their_chains():
    out = run("clusterip.yaml", "pod/client", "service/web", backends=("iptables", "nftables"))
    ipt = [s for s in out["iptables"].steps if "KUBE-" in s]
    assert any(s.startswith("nat KUBE-SERVICES") for s in ipt) and any("KUBE-SVC-" in s for s in ipt)
    assert any("DNAT to" in s and "KUBE-SEP-" in s for s in ipt)
    nft = out["nftables"].steps
    assert any("services:" in s and "@service-ips" in s for s in nft) and any("numgen random mod 3" in s for s in nft)


@pytest.mark.parametrize("client,to,protocol,message", [
    ("pod/nobody", "service/web", None, "no such client in clusterip; clients: pod/client"),
    ("node/client", "service/web", None, "no such client"),
    ("pod/client", "service/nope", None, "no service 'nope'; services: default/closed, default/web"),
    ("pod/client", "service/web:smtp", None, "default/web has no port 'smtp'; its ports: http, dns"),
    ("pod/client", "service/web:http", "UDP", "--protocol UDP: default/web port http is TCP"),
    ("pod/client", "web", None, "expected service/NAME[:PORT], node/NAME:PORT or ADDRESS:PORT"),
])
def test_a_wrong_client_or_target_is_named(client, to, protocol, message):
    sc = load(SCENARIOS / "clusterip.yaml")
    with pytest.raises(DataplaneError, match="^--") as err:
        ex.resolve(sc, sc.services, client, to, protocol)
    assert message in str(err.value)


def test_run_explain_adds_the_path_to_failing_checks_only(tmp_path):
    from dataplane import backends
    from dataplane.run.runner import run_simulated
    text = (SCENARIOS / "clusterip.yaml").read_text()
    wrong = text.replace("    backends: [web-1, web-2, web-3]\n    source: client\n", "    expect: refused\n", 1)
    assert wrong != text
    (tmp_path / "s.yaml").write_text(wrong)
    report = run_simulated(load(tmp_path / "s.yaml"), backends.get("emulator", seed=5), explain=True)
    failed = [r for r in report.results if not r.passed]
    assert len(failed) == 1 and failed[0].explanation[0].startswith("=== ebpf: client (10.0.1.2) -> 10.96.0.10:80/TCP")
    assert any(line.startswith("verdict: DNAT to 10.0.") for line in failed[0].explanation)
    assert all(r.explanation is None for r in report.results if r.passed)
    assert json.loads(json.dumps(report.to_json()))["checks"][0]["explanation"] == failed[0].explanation


def test_a_frontend_from_outside_is_met_by_the_node_the_underlay_routes_it_to():
    sc = load(SCENARIOS / "loadbalancer.yaml")
    routes = dict((str(ip), node) for ip, node in sc.frontend_routes)
    for ip, node in routes.items():
        assert ex.resolve(sc, sc.services, "host/ext", f"{ip}:80", None).node == node
    assert ex.resolve(sc, sc.services, "host/ext", "node/node2:30081", None).node == "node2"


def test_egress_masquerade_is_explained_on_every_backend_it_is_walked_on():
    out = run("lessons/07-masquerade.yaml", "pod/client", "10.128.1.1:8080")
    assert out["ebpf"].verdict == "ACCEPT, masqueraded" and out["iptables"].verdict == "ACCEPT, masqueraded"
    assert any("M_SNAT_NEW" in s for s in out["ebpf"].steps)
    # nftables mode leaves egress masquerade to ip-masq-agent's iptables rules, which its walk does not read
    assert out["nftables"].verdict == "ACCEPT" and any("ip-masq-agent" in n for n in out["nftables"].notes)


def test_every_check_of_every_scenario_is_explained_alike_on_every_backend():
    """Generated from the catalogue, not picked: every check's connection explained by the
    reference model (eBPF) and by walks of kube-proxy's two rule sets. The candidates must be the
    same; so must the first decision (DNAT, REJECT, DROP or passing on), except where
    docs/differences.md says kube-proxy's modes disagree. (Masquerade is compared by neither: the
    nftables walk does not read ip-masq-agent's iptables rules.)"""
    from dataplane.judge.differences import expectation
    from dataplane.spec.checks import CheckSpec
    paths = sorted(SCENARIOS.glob("*.yaml")) + sorted((SCENARIOS / "lessons").glob("*.yaml"))
    compared = 0
    for path in paths:
        sc = load(path)
        table = sc.services
        for step in sc.steps:
            if hasattr(step, "table"):
                table = step.table
            if not isinstance(step, CheckSpec):
                continue
            out = ex.explain(sc, table, ex.target_of_check(sc, table, step))
            where = f"{path.name}: {step.name}"
            assert len({tuple(sorted(e.candidates)) for e in out}) == 1, (where, [e.candidates for e in out])
            documented = any(expectation(step, table, b)[1] for b in ("ebpf", "iptables", "nftables"))
            if not documented:
                assert len({e.verdict.split(",")[0] for e in out}) == 1, (where, [e.verdict for e in out])
            compared += 1
    assert compared > 100
