"""Kubernetes Service and EndpointSlice manifests load into the same service table as scenario services."""
from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from dataplane.errors import ScenarioError
from dataplane.spec.scenario import load
from tests.conftest import SCENARIOS
from tests.helpers import BASE, write


def scenario_with(tmp_path, manifest: str):
    write(tmp_path, manifest, "objects.yaml")
    return write(tmp_path, BASE + "manifests: [objects.yaml]\n")


def test_kubectl_list_maps_onto_the_lab(tmp_path):
    (tmp_path / "objects.yaml").write_text((SCENARIOS / "manifests" / "web.yaml").read_text())
    sc = load(write(tmp_path, BASE + "manifests: [objects.yaml]\n"))
    web = sc.services.get("web")
    assert web.cluster_ip == IPv4Address("10.96.0.20")
    assert [(p.name, p.port, p.protocol, p.target_port) for p in web.ports] == [("http", 80, "TCP", 8080)]
    # The selector picks the lab's pods, with the service's targetPort.
    assert sorted((e.pod, e.node, str(e.address), e.port_for("http", "TCP")) for e in web.endpoints) == [
        ("web-1", "node1", "10.0.1.3", 8080), ("web-2", "node2", "10.0.2.2", 8080)]
    # No selector: the EndpointSlice is taken as given.
    db = sc.services.get("legacy-db")
    assert [(e.pod, e.node, e.ready, e.port_for("sql", "TCP")) for e in db.endpoints] == [("web-2", "node2", True, 8080)]
    # Headless and ExternalName services are reported, not silently dropped.
    assert len(sc.ignored) == 2
    assert any("web-headless" in i and "headless" in i for i in sc.ignored)
    assert any("external-api" in i and "ExternalName" in i for i in sc.ignored)


def test_multi_document_file(tmp_path):
    path = scenario_with(tmp_path, """\
        apiVersion: v1
        kind: Service
        metadata: {name: a}
        spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: b}
        spec: {type: NodePort, selector: {app: web}, ports: [{port: 81, protocol: UDP}]}
        """)
    sc = load(path)
    assert sorted(s.key for s in sc.services) == ["default/a", "default/b"]
    b = sc.services.get("b")
    assert b.type == "NodePort" and b.ports[0].node_port == 30000 and b.ports[0].protocol == "UDP"
    assert sc.services.get("a").cluster_ip != b.cluster_ip


def test_unsupported_kind_is_an_error(tmp_path):
    path = scenario_with(tmp_path, """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec: {}
        """)
    with pytest.raises(ScenarioError) as err:
        load(path)
    assert err.value.file.startswith(str(tmp_path / "objects.yaml"))
    assert err.value.field == "kind"
    assert "unsupported manifest kind Deployment (apps/v1)" in err.value.message
    assert "Service (v1)" in err.value.message and "EndpointSlice (discovery.k8s.io/v1)" in err.value.message


def test_unknown_spec_field_is_an_error(tmp_path):
    path = scenario_with(tmp_path, """\
        apiVersion: v1
        kind: Service
        metadata: {name: a}
        spec: {selector: {app: web}, ports: [{port: 80}], sesionAffinity: ClientIP}
        """)
    with pytest.raises(ScenarioError, match=r"spec.sesionAffinity: unknown field 'sesionAffinity'; did you mean 'sessionAffinity'"):
        load(path)


def test_endpoint_slice_address_must_be_a_lab_pod(tmp_path):
    path = scenario_with(tmp_path, """\
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: s, labels: {kubernetes.io/service-name: x}}
        addressType: IPv4
        endpoints: [{addresses: [10.244.1.5]}]
        ports: [{port: 80}]
        """)
    with pytest.raises(ScenarioError, match=r"endpoints\[0\].addresses: 10.244.1.5 is not the address of any pod"):
        load(path)


def test_slice_without_service_is_reported(tmp_path):
    sc = load(scenario_with(tmp_path, """\
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: s, labels: {kubernetes.io/service-name: nosuch}}
        addressType: IPv4
        endpoints: [{addresses: [10.0.1.3]}]
        ports: [{port: 80}]
        """))
    assert any("no service default/nosuch" in i for i in sc.ignored)


def test_terminating_and_unready_pods(tmp_path):
    text = BASE.replace("{name: web-1, node: node1, labels: {app: web}}",
                        "{name: web-1, node: node1, labels: {app: web}, terminating: true}")
    text = text.replace("{name: web-2, node: node2, labels: {app: web}}",
                        "{name: web-2, node: node2, labels: {app: web}, ready: false}")
    sc = load(write(tmp_path, text + "services:\n  - {name: web, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n"))
    eps = {e.pod: e for e in sc.services.get("web").endpoints}
    assert (eps["web-1"].ready, eps["web-1"].serving, eps["web-1"].terminating) == (False, True, True)
    assert (eps["web-2"].ready, eps["web-2"].serving, eps["web-2"].terminating) == (False, False, False)


def test_named_target_port(tmp_path):
    text = BASE.replace("{name: web-1, node: node1, labels: {app: web}}",
                        "{name: web-1, node: node1, labels: {app: web}, ports: [{name: http, port: 9090}]}")
    text = text.replace("{name: web-2, node: node2, labels: {app: web}}",
                        "{name: web-2, node: node2, labels: {app: web}, ports: [8080]}")
    sc = load(write(tmp_path, text + "services:\n  - {name: web, selector: {app: web}, ports: [{port: 80, targetPort: http}]}\n"))
    eps = {e.pod: e.port_for("", "TCP") for e in sc.services.get("web").endpoints}
    # web-2 has no port named http: like Kubernetes, it has no endpoint port for that service port.
    assert eps == {"web-1": 9090, "web-2": None}


def test_duplicate_service_across_scenario_and_manifest(tmp_path):
    write(tmp_path, """\
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {selector: {app: web}, ports: [{port: 80}]}
        """, "objects.yaml")
    path = write(tmp_path, BASE + "services:\n  - {name: web, selector: {app: web}, ports: [{port: 80}]}\n"
                 "manifests: [objects.yaml]\n")
    with pytest.raises(ScenarioError, match="duplicate service default/web"):
        load(path)
