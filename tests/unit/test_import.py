"""`dataplane import`: a kubectl dump becomes a scenario whose lab has the dump's endpoints,
with what it cannot hold listed, and which runs."""
from __future__ import annotations

from ipaddress import IPv4Address

import pytest
import yaml
from click.testing import CliRunner

from dataplane.backends import get
from dataplane.cli import cli
from dataplane.errors import ScenarioError
from dataplane.run.runner import run_simulated
from dataplane.spec.importer import import_dump
from dataplane.spec.scenario import load
from tests.conftest import ROOT

DUMP = ROOT / "tests" / "data" / "kubectl-dump.yaml"


@pytest.fixture(scope="module")
def imported():
    return import_dump(DUMP)


def _scenario(tmp_path, imported, checks=None):
    doc = yaml.safe_load(imported.text(str(DUMP)))
    if checks:
        doc["checks"] = checks
    path = tmp_path / "imported.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load(path)


def test_the_dumps_endpoints_are_the_labs(tmp_path, imported):
    sc = _scenario(tmp_path, imported)
    eps = {s.key: sorted((str(e.address), e.ready, e.serving, e.terminating) for e in s.endpoints)
           for s in sc.services}
    assert eps == {
        "default/kubernetes": [],                           # the apiserver's endpoint has no node
        "kube-system/kube-dns": [("10.244.0.3", True, True, False), ("10.244.1.2", True, True, False)],
        "shop/web": [("10.244.1.5", True, True, False), ("10.244.2.4", False, True, True),
                     ("10.244.2.7", False, False, False)],
        "shop/cart": [("10.244.1.5", True, True, False)],
        "shop/legacy-db": [("10.244.2.9", True, True, False)],
    }
    web = sc.services.get("shop/web")
    assert (web.type, str(web.cluster_ip), web.external_traffic_policy, web.health_check_node_port) == (
        "LoadBalancer", "10.96.120.7", "Local", 31999)
    assert web.session_affinity == "ClientIP" and web.affinity_timeout == 600
    assert web.load_balancer_ips == (IPv4Address("172.20.0.10"),)
    assert [(p.port, p.node_port, p.target_port) for p in web.ports] == [(80, 30080, "http-web")]
    # the named targetPort resolves to the port the slice gives
    assert {e.port_for("http", "TCP") for e in web.endpoints} == {8000}
    assert sc.services.get("kube-system/kube-dns").selector == (("k8s-app", "kube-dns"),)


def test_the_topology_comes_from_the_addresses(tmp_path, imported):
    topo = _scenario(tmp_path, imported).topology
    assert [(n.name, str(n.pod_cidr)) for n in topo.nodes] == [
        ("kind-co-plane", "10.244.0.0/24"), ("kind-worker", "10.244.1.0/24"), ("kind-worker2", "10.244.2.0/24")]
    assert str(topo.cluster_cidr) == "10.244.0.0/16" and str(topo.service_cidr) == "10.96.0.0/16"
    pods = {p.name: (p.node, p.namespace, str(p.ip)) for p in topo.pods}
    assert pods["coredns-4xk2p"] == ("kind-co-plane", "kube-system", "10.244.0.3")
    assert pods["web-6c7-fghij"] == ("kind-worker2", "shop", "10.244.2.4")
    assert imported.renamed["node kind-control-plane"] == "kind-co-plane"
    assert imported.renamed["pod shop/web-6c7b8d9f4-abcde"] == "web-6c7-abcde"


NOTES = (   # what the lab cannot hold, each listed
    "Endpoints default/kubernetes (v1): only Services and EndpointSlices are imported",
    "EndpointSlice kube-system/kube-dns-v6: addressType IPv6",
    "endpoint 172.18.0.2 of service default/kubernetes: no nodeName",
    "Service shop/web: load-balancer ingress IPs 172.20.0.11 beyond the first",
    "Service shop/legacy-db: port sctp/SCTP",
    "Service shop/web-headless: headless",
    "Service shop/payments: ExternalName",
    "Service shop/cart: its selector {'app': 'shop'} cannot reproduce its endpoints",
)


@pytest.mark.parametrize("note", NOTES)
def test_what_cannot_be_represented_is_listed(imported, note):
    assert any(n.startswith(note) for n in imported.notes), imported.notes
    assert f"#   {note}" in imported.text("x")


def test_nothing_else_is_listed(imported):
    assert len(imported.notes) == len(NOTES), imported.notes


def test_the_imported_cluster_serves(tmp_path, imported):
    """On the emulator: a pod reaches kube-dns over UDP, the outside reaches the eTP Local load
    balancer on the node with the ready web pod, a pod reaches the selector-less legacy-db."""
    sc = _scenario(tmp_path, imported, checks=[
        {"from": "pod/web-6c7-abcde", "to": "service/kube-system/kube-dns", "port": 53, "protocol": "UDP", "requests": 20,
         "backends": ["coredns-4xk2p", "coredns-8hq7w"], "everyBackend": True},
        {"from": "host/ext", "to": "172.20.0.10", "port": 80, "requests": 5, "backends": ["web-6c7-abcde"],
         "source": "client"},
        {"from": "pod/coredns-4xk2p", "to": "service/shop/legacy-db", "requests": 3, "backends": ["ep-10-244-2-9"]},
        {"from": "pod/coredns-4xk2p", "to": "service/default/kubernetes", "expect": "refused"},
    ])
    report = run_simulated(sc, get("emulator", seed=1))
    assert [r.passed for r in report.results] == [True] * 4, [r.detail for r in report.results]


def test_many_services_import_faithfully(tmp_path):
    """300 services over 120 pods on 3 nodes, selectors shared and overlapping: every service's
    endpoints in the lab are the dump's (the importer checks that itself; no note says otherwise)."""
    items = []
    for s in range(300):
        pods = [(s * 7 + k) % 120 for k in range(1 + s % 3)]
        items.append({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": f"svc-{s}", "namespace": "default"},
                      "spec": {"clusterIP": f"10.96.{s // 200}.{s % 200 + 10}", "selector": {"app": f"a{s % 40}"},
                               "ports": [{"port": 80, "targetPort": 8080}]}})
        items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                      "metadata": {"name": f"svc-{s}-x", "namespace": "default",
                                   "labels": {"kubernetes.io/service-name": f"svc-{s}"}},
                      "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
                      "endpoints": [{"addresses": [f"10.244.{p % 3}.{p + 2}"], "nodeName": f"n{p % 3}",
                                     "targetRef": {"kind": "Pod", "name": f"p{p}"}} for p in pods]})
    dump = tmp_path / "dump.yaml"
    dump.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    result = import_dump(dump)
    assert not [n for n in result.notes if "differ" in n], result.notes
    sc = _scenario(tmp_path, result)
    assert len(sc.services) == 300 and len(sc.topology.pods) == 120


def test_a_dump_that_is_not_kubernetes_objects(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ScenarioError, match="expected Kubernetes objects"):
        import_dump(bad)


def test_the_command_writes_the_scenario_and_lists_the_rest(tmp_path):
    out = tmp_path / "mine.yaml"
    result = CliRunner().invoke(cli, ["import", str(DUMP), "-o", str(out), "--name", "mine"])
    assert result.exit_code == 0, result.output
    assert load(out).name == "mine"
    assert "wrote" in result.stderr and "3 nodes, 6 pods, 5 services" in result.stderr
    assert result.stderr.count("not represented: ") == len(NOTES)
