"""`dataplane apply` and `delete` on the cluster state (spec.changes) and the agent's journal
(run.agent.desired): all or nothing, kubectl's replace semantics, errors that name file and line,
and a journal that replays to the same table."""
from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from dataplane.errors import ScenarioError
from dataplane.lab import state
from dataplane.run.agent.desired import Desired, scenario_digest
from dataplane.spec.changes import apply_files, delete_service
from dataplane.spec.scenario import load

SCENARIO = """\
name: agent-unit
topology:
  model: flat
  nodes: [node1, node2]
  pods:
    - {name: client, node: node1}
    - {name: web-1, node: node1, labels: {app: web}}
    - {name: web-2, node: node2, labels: {app: web}}
    - {name: db-1, node: node2, labels: {app: db}}
services:
  - name: web
    clusterIP: 10.96.0.20
    selector: {app: web}
    ports: [{port: 80, targetPort: 8080}]
"""

NEW_SERVICE = """\
services:
  - name: db
    selector: {app: db}
    ports: [{port: 5432, targetPort: 8080}]
"""

MANIFEST = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy}
spec:
  clusterIP: 10.96.0.40
  ports: [{name: sql, port: 5432, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: legacy-abc
  labels: {kubernetes.io/service-name: legacy}
addressType: IPv4
ports: [{name: sql, port: 8080, protocol: TCP}]
endpoints:
  - addresses: [10.0.2.3]
"""


@pytest.fixture
def scenario(tmp_path):
    p = tmp_path / "sc.yaml"
    p.write_text(SCENARIO)
    return load(p)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_an_update_document_adds_a_service_and_leaves_the_old_state_alone(scenario, tmp_path):
    new, lines = apply_files(scenario.cluster, [_write(tmp_path, "u.yaml", NEW_SERVICE)], [])
    assert lines == ["service default/db created"]
    assert new.table().get("db") is not None and len(new.table().get("db").endpoints) == 1
    assert scenario.cluster.table().get("db") is None


def test_a_manifest_replaces_a_service_keeping_its_cluster_ip_and_gives_endpoints(scenario, tmp_path):
    new, lines = apply_files(scenario.cluster, [_write(tmp_path, "m.yaml", MANIFEST)], [])
    assert "service default/web configured" in lines and "service default/legacy created" in lines
    web = new.table().get("web")
    assert web.type == "NodePort" and web.cluster_ip == IPv4Address("10.96.0.20")
    legacy = new.table().get("legacy")
    assert [str(e.address) for e in legacy.endpoints] == ["10.0.2.3"]


def test_an_invalid_file_changes_nothing_and_names_file_line_and_field(scenario, tmp_path):
    good = _write(tmp_path, "good.yaml", NEW_SERVICE)
    bad = _write(tmp_path, "bad.yaml", "services:\n  - name: broken\n    selector: {app: web}\n"
                                       "    ports: [{port: 99999}]\n")
    before = scenario.cluster.table()
    with pytest.raises(ScenarioError) as err:
        apply_files(scenario.cluster, [good, bad], [])
    text = str(err.value)
    assert "bad.yaml" in text and ":4" in text and "port" in text
    assert scenario.cluster.table() == before


def test_delete_removes_a_service_and_refuses_an_unknown_one(scenario):
    new, lines = delete_service(scenario.cluster, "web")
    assert lines == ["service default/web deleted"] and new.table().get("web") is None
    with pytest.raises(ScenarioError, match="no service default/nope"):
        delete_service(scenario.cluster, "default/nope")


def test_the_journal_replays_to_the_same_table(scenario, tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_DIR", str(tmp_path / "labs"))
    rec = state.LabRecord(name="agent-unit", scenario=str(tmp_path / "sc.yaml"))
    rec.scenario_sha256 = scenario_digest(rec.scenario)
    d = Desired(rec)
    for change in (lambda: d.prepare_apply([_write(tmp_path, "m.yaml", MANIFEST)]), lambda: d.prepare_delete("web"),
                   lambda: d.prepare_apply([_write(tmp_path, "u.yaml", NEW_SERVICE)])):
        cluster, _, texts = change()
        d.write(texts)
        d.cluster = cluster
    again = Desired(rec)
    # equal but for `source` (the journal's copy of a file, not the file)
    assert {s.key: replace(s, source="") for s in again.table()} == {s.key: replace(s, source="") for s in d.table()}
    assert sorted(s.key for s in again.table()) == ["default/db", "default/legacy"]


def test_a_changed_scenario_is_refused_on_restart(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_DIR", str(tmp_path / "labs"))
    p = tmp_path / "sc.yaml"
    p.write_text(SCENARIO)
    rec = state.LabRecord(name="agent-unit", scenario=str(p), scenario_sha256=scenario_digest(str(p)))
    p.write_text(SCENARIO.replace("10.96.0.20", "10.96.0.21"))
    with pytest.raises(Exception, match="changed since the lab came up"):
        Desired(rec)


def test_the_example_changes_apply_to_the_scenario_they_name():
    from tests.conftest import SCENARIOS
    sc = load(SCENARIOS / "clusterip.yaml")
    cluster, lines = apply_files(sc.cluster, [str(SCENARIOS / "changes" / "new-service.yaml")], [])
    assert lines == ["service default/web-two created", "pod web-3 changed"]
    cluster, lines = apply_files(cluster, [str(SCENARIOS / "changes" / "web-nodeport.yaml")], [])
    web = cluster.table().get("web")
    assert lines == ["service default/web configured"]
    assert (web.type, str(web.cluster_ip), web.ports[0].node_port) == ("NodePort", "10.96.0.10", 30080)
