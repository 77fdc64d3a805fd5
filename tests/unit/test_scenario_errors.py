"""Bad scenarios: every error names the file (and line), the field and what was expected."""
from __future__ import annotations

import pytest

from dataplane.errors import ScenarioError, ScenarioErrors
from dataplane.spec.scenario import load
from tests.helpers import BASE, write

CASES = {
    "unknown top-level field": (
        BASE + "chekcs: []\n", "chekcs", "unknown field 'chekcs'; did you mean 'checks'?"),
    "unknown topology field": (
        BASE.replace("model: flat", "model: flat\n  podCidr: 10.0.0.0/16"),
        "topology.podCidr", "unknown field 'podCidr'"),
    "unknown pod field": (
        BASE.replace("{name: client, node: node1}", "{name: client, node: node1, lables: {a: b}}"),
        "topology.pods[0].lables", "did you mean 'labels'?"),
    "bad model": (
        BASE.replace("model: flat", "model: mesh"), "topology.model",
        "expected one of flat, island, air-gapped, got 'mesh'"),
    "pod IP outside its node's CIDR": (
        BASE.replace("{name: client, node: node1}", "{name: client, node: node1, ip: 10.0.2.7}"),
        "topology.pods[0].ip", "10.0.2.7 is not a host address of node node1's podCIDR 10.0.1.0/24"),
    "pod IP is the network address": (
        BASE.replace("{name: client, node: node1}", "{name: client, node: node1, ip: 10.0.1.0}"),
        "topology.pods[0].ip", "not a host address"),
    "duplicate pod IP": (
        BASE.replace("{name: client, node: node1}", "{name: client, node: node1, ip: 10.0.1.9}")
            .replace("{name: web-1, node: node1,", "{name: web-1, node: node1, ip: 10.0.1.9,"),
        "topology.pods[1].ip", "already the IP of pod client"),
    "duplicate pod names": (
        BASE.replace("name: web-2,", "name: web-1,"), "topology.pods[2].name", "duplicate name 'web-1'"),
    "pod named like a node": (
        BASE.replace("name: web-2,", "name: node2,"), "topology.pods[2].name",
        "duplicate name 'node2' (already a node"),
    "name too long for an interface": (
        BASE.replace("name: web-2,", "name: backend-web-2x,"), "topology.pods[2].name",
        "'backend-web-2x' is 14 characters; at most 13, because its interface is named 'v-backend-web-2x'"),
    "name not a DNS label": (
        BASE.replace("name: web-2,", "name: Web_2,"), "topology.pods[2].name", "not a DNS label"),
    "reserved name": (
        BASE.replace("[node1, node2]", "[node1, underlay]").replace("node: node2", "node: node1"),
        "topology.nodes[1].name", "reserved for the lab's own namespace"),
    "overlapping CIDRs": (
        BASE.replace("model: flat", "model: flat\n  serviceCIDR: 10.0.128.0/17"),
        "topology.serviceCIDR", "10.0.128.0/17 overlaps clusterCIDR 10.0.0.0/16"),
    "overlapping pod CIDRs": (
        BASE.replace("[node1, node2]", "[{name: node1, podCIDR: 10.0.1.0/24}, {name: node2, podCIDR: 10.0.1.128/25}]"),
        "topology.nodes[1].podCIDR", "overlaps node node1's podCIDR 10.0.1.0/24"),
    "pod CIDR outside the cluster CIDR": (
        BASE.replace("[node1, node2]", "[{name: node1, podCIDR: 10.1.1.0/24}, node2]"),
        "topology.nodes[0].podCIDR", "10.1.1.0/24 is not inside clusterCIDR 10.0.0.0/16"),
    "link-local cluster CIDR": (
        BASE.replace("model: flat", "model: flat\n  clusterCIDR: 169.254.0.0/16"),
        "topology.clusterCIDR", "overlaps the link-local range"),
    "bad CIDR": (
        BASE.replace("model: flat", "model: flat\n  clusterCIDR: 10.0.0.1/16"),
        "topology.clusterCIDR", "expected an IPv4 CIDR such as 10.0.0.0/16, got '10.0.0.1/16'"),
    "node IP outside the node network": (
        BASE.replace("[node1, node2]", "[{name: node1, ip: 10.241.0.1}, node2]"),
        "topology.nodes[0].ip", "10.241.0.1 is not a host address of nodeNetwork 10.240.0.0/24"),
    "outside host on the gateway address": (
        BASE.replace("{name: ext}", "{name: ext, ip: 10.128.1.254}"),
        "topology.outside[0].ip", "already used by the underlay gateway"),
    "pod on a missing node": (
        BASE.replace("{name: client, node: node1}", "{name: client, node: node9}"),
        "topology.pods[0].node", "no node named 'node9' (nodes: node1, node2)"),
    "service port out of range": (
        BASE + "services:\n  - {name: web, selector: {app: web}, ports: [{port: 70000}]}\n",
        "services[0].ports[0].port", "expected a port number from 1 to 65535, got 70000"),
    "service target port out of range": (
        BASE + "services:\n  - {name: web, selector: {app: web}, ports: [{port: 80, targetPort: 0}]}\n",
        "services[0].ports[0].targetPort", "expected a port number from 1 to 65535, got 0"),
    "node port outside the range": (
        BASE + "services:\n  - {name: web, type: NodePort, selector: {app: web}, ports: [{port: 80, nodePort: 8080}]}\n",
        "services[0].ports[0].nodePort", "8080 is outside the node port range 30000-32767"),
    "cluster IP outside the service CIDR": (
        BASE + "services:\n  - {name: web, clusterIP: 10.200.0.1, selector: {app: web}, ports: [{port: 80}]}\n",
        "services[0].clusterIP", "10.200.0.1 is outside the service CIDR 10.96.0.0/12"),
    "unnamed ports on a multi-port service": (
        BASE + "services:\n  - {name: web, selector: {app: web}, ports: [{port: 80}, {port: 81}]}\n",
        "services[0].ports", "every port of a multi-port service needs a name"),
    "pod port out of range": (
        BASE.replace("{name: client, node: node1}", "{name: client, node: node1, ports: [0]}"),
        "topology.pods[0].ports[0]", "expected a port such as 8080"),
    "check from an unknown pod": (
        BASE + "checks:\n  - {from: pod/nobody, to: pod/web-1, port: 8080}\n",
        "checks[0].from", "no pod named 'nobody' (pods: client, web-1, web-2)"),
    "check to an address outside the lab": (
        BASE + "checks:\n  - {from: pod/client, to: 8.8.8.8, port: 53}\n",
        "checks[0].to", "8.8.8.8 is not a lab address"),
    "check with a wrong expectation": (
        BASE + "checks:\n  - {from: pod/client, to: pod/web-1, port: 8080, expect: works}\n",
        "checks[0].expect", "expected one of reachable, refused, dropped, got 'works'"),
    "everyBackend that passes only by luck": (
        BASE + "checks:\n  - {from: pod/client, to: pod/web-1, port: 8080, requests: 10, backends: [web-1, web-2],"
               " everyBackend: true}\n",
        "checks[0].everyBackend", "the check would fail in about 1 run of 512; ask for at least 18 requests"),
    "minBackends that passes only by luck": (
        BASE + "checks:\n  - {from: pod/client, to: pod/web-1, port: 8080, requests: 6, backends: [web-1, web-2, client],"
               " minBackends: 2}\n",
        "checks[0].minBackends", "about 1 run of 243; ask for at least 12 requests"),
    "minBackends above the backends allowed": (
        BASE + "checks:\n  - {from: pod/client, to: pod/web-1, port: 8080, requests: 50, backends: [web-1],"
               " minBackends: 2}\n",
        "checks[0].minBackends", "2 backends cannot answer when `backends` lists 1"),
    "check with backends but not reachable": (
        BASE + "checks:\n  - {from: pod/client, to: pod/web-1, port: 8080, expect: refused, backends: [web-1]}\n",
        "checks[0].backends", "backends only applies when expect is reachable"),
    "half-close on UDP": (
        BASE + "checks:\n  - {from: pod/client, to: pod/web-1, port: 8080, protocol: UDP, halfClose: true}\n",
        "checks[0].halfClose", "only applies to TCP"),
    "server delay not shorter than the timeout": (
        BASE + "checks:\n  - {from: pod/client, to: pod/web-1, port: 8080, delay: 5}\n",
        "checks[0].delay", "the server answers after 5 s, so `timeout` (2 s) must be longer"),
    "size out of range": (
        BASE + "checks:\n  - {from: pod/client, to: pod/web-1, port: 8080, size: 70000}\n",
        "checks[0].size", "expected bytes from 0 to 60000, got 70000"),
    "held connection to a service port it does not serve": (
        BASE + "services:\n  - {name: web, selector: {app: web}, ports: [{port: 80}]}\n"
               "checks:\n  - {from: pod/client, to: pod/web-1, port: 8080, "
               "holdConnection: {from: node/node1, to: service/web, port: 81}}\n",
        "checks[0].holdConnection.port", "service default/web serves no TCP port 81"),
    "held connection with an unknown field": (
        BASE + "checks:\n  - {from: pod/client, to: pod/web-1, port: 8080, "
               "holdConnection: {from: node/node1, to: pod/web-1, port: 8080, srcPort: 4}}\n",
        "checks[0].holdConnection.srcPort", "did you mean 'sourcePort'?"),
    "delay with httpGet": (
        BASE + "checks:\n  - {from: pod/client, to: pod/web-1, port: 8080, httpGet: /, delay: 1}\n",
        "checks[0].delay", "does not apply with httpGet"),
    "outside link wider than the links": (
        BASE.replace("model: flat", "model: flat\n  outsideLinkMTU: 9000"), "topology.outsideLinkMTU",
        "9000 is larger than mtu 1500"),
    "masquerade port range over the nodes' ephemeral ports": (
        BASE.replace("model: flat", "model: flat\n  masquerade: {portRange: 40000-45000}"),
        "topology.masquerade.portRange", "overlaps the nodes' ip_local_port_range 32768-60999"),
    "masquerade port range over the node ports": (
        BASE.replace("model: flat", "model: flat\n  masquerade: {portRange: 20000-30000}"),
        "topology.masquerade.portRange", "overlaps nodePortRange 30000-32767"),
    "wrong type": (
        BASE.replace("model: flat", "model: flat\n  mtu: big"), "topology.mtu", "expected a number"),
    "health-check node port without LoadBalancer and eTP Local": (
        BASE + "services:\n  - {name: web, type: NodePort, externalTrafficPolicy: Local, healthCheckNodePort: 32000, "
               "selector: {app: web}, ports: [{port: 80}]}\n",
        "services[0].healthCheckNodePort", "only a LoadBalancer service with externalTrafficPolicy Local"),
    "duplicate YAML key": (
        BASE.replace("model: flat", "model: flat\n  model: island"), None, "duplicate key 'model'"),
    "malformed YAML": (
        BASE + "checks: [\n", None, "malformed YAML"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_names_file_field_and_expectation(tmp_path, case):
    text, field, message = CASES[case]
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as err:
        load(path)
    e = err.value
    assert e.file.startswith(str(path)), e
    assert e.file[len(str(path)):].startswith(":"), f"no line number in {e.file}"
    if field is not None:
        assert e.field == field, str(e)
    assert message in e.message, str(e)
    assert str(e).startswith(f"{path}:"), str(e)


def test_error_line_points_at_the_field(tmp_path):
    path = write(tmp_path, BASE.replace("{name: client, node: node1}", "{name: client, node: node1, ip: 10.0.2.7}"))
    with pytest.raises(ScenarioError) as err:
        load(path)
    lines = path.read_text().splitlines()
    line = int(err.value.file.rsplit(":", 1)[1])
    assert "10.0.2.7" in lines[line - 1]


def test_missing_file():
    with pytest.raises(ScenarioError, match="no such file"):
        load("/nonexistent/scenario.yaml")


def test_not_a_mapping(tmp_path):
    with pytest.raises(ScenarioError, match="expected a mapping, got a list"):
        load(write(tmp_path, "- a\n- b\n"))


def _errors(tmp_path, text) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioErrors) as err:
        load(path)
    return [f"{e.file.rsplit(':', 1)[1]} {e.field}: {e.message}" for e in err.value.errors]


def test_every_error_of_a_file_at_once(tmp_path):
    """A mistyped field is not hidden behind the missing one it should have been (issue 10)."""
    text = "name: t\ntopology:\n  model: flat\n  nodez: [node1]\nchekcs: []\n"
    errors = _errors(tmp_path, text)
    assert len(errors) == 3, errors
    assert errors[0].startswith("3 topology.nodes: a lab needs at least one node"), errors
    assert errors[1].startswith("4 topology.nodez: unknown field 'nodez'; did you mean 'nodes'?"), errors
    assert errors[2].startswith("5 chekcs: unknown field 'chekcs'; did you mean 'checks'?"), errors


def test_each_item_is_checked_on_its_own(tmp_path):
    text = BASE.replace("{name: web-1, node: node1, labels: {app: web}}", "{name: web-1, node: node9}") \
               .replace("{name: web-2, node: node2, labels: {app: web}}", "{name: web-2, node: node2, lables: {}}") \
               .replace("{name: ext}", "{name: ext, ip: 10.0.0.1}")
    errors = _errors(tmp_path, text)
    assert [e.split(":")[0] for e in errors] == ["7 topology.pods[1].node", "8 topology.pods[2].lables",
                                                 "10 topology.outside[0].ip"], errors


def test_a_node_in_error_is_not_reported_again_by_its_pods(tmp_path):
    errors = _errors(tmp_path, BASE.replace("[node1, node2]", "[{name: node1, ip: 10.241.0.1}, node2]"))
    assert len(errors) == 1 and "topology.nodes[0].ip" in errors[0], errors


def test_errors_of_services_and_of_the_checks_beside_them(tmp_path):
    text = BASE + ("services:\n  - {name: web, selector: {app: web}, ports: [{port: 80, protocl: TCP}]}\n"
                   "  - {name: db, selector: {app: db}, ports: [{port: 99999}]}\n")
    errors = _errors(tmp_path, text)
    assert len(errors) == 2 and "protocl" in errors[0] and "99999" in errors[1], errors


def test_several_errors_print_one_line_each(tmp_path):
    path = write(tmp_path, "name: t\ntopology:\n  model: mesh\n  mtu: 12\n  nodes: [node1]\n")
    with pytest.raises(ScenarioErrors) as err:
        load(path)
    lines = str(err.value).splitlines()
    assert lines[0] == "2 errors:"
    assert lines[1] == f"  {path}:3: topology.model: expected one of flat, island, air-gapped, got 'mesh'"
    assert lines[2].startswith(f"  {path}:4: topology.mtu: expected a number from 576 to 9000, got 12")


def test_a_misspelt_required_field_is_named_once(tmp_path):
    errors = _errors(tmp_path, "name: t\ntopolgy:\n  nodes: [node1]\nservics: []\n")
    assert errors == ["2 topolgy: unknown field 'topolgy'; did you mean 'topology'? ('topology' is required)",
                      "4 servics: unknown field 'servics'; did you mean 'services'? (expected one of: checks, "
                      "description, manifests, name, services, topology)"]


def test_a_misspelt_required_field_of_an_item(tmp_path):
    errors = _errors(tmp_path, BASE.replace("{name: client, node: node1}", "{name: client, nod: node1}"))
    assert errors == ["6 topology.pods[0].nod: unknown field 'nod'; did you mean 'node'? ('node' is required)"]


def test_a_list_of_the_wrong_type_does_not_hide_the_rest(tmp_path):
    errors = _errors(tmp_path, BASE + "services: 5\nchekcs: []\n")
    assert [e.split(":")[0] for e in errors] == ["11 services", "12 chekcs"], errors
    errors = _errors(tmp_path, BASE.replace("[node1, node2]", "node1").replace("{name: ext}", "{name: ext, ip: 1.2.3.4}"))
    assert [e.split(":")[0] for e in errors] == ["4 topology.nodes", "10 topology.outside[0].ip"], errors


def test_an_invalid_name_does_not_hide_the_services(tmp_path):
    errors = _errors(tmp_path, BASE.replace("name: t", "name: Bad_Name")
                     + "services:\n  - {name: web, selector: {app: web}, ports: [{port: 80, protocl: TCP}]}\n")
    assert [e.split(":")[0] for e in errors] == ["1 name", "12 services[0].ports[0].protocl"], errors


def test_an_invalid_update_stops_the_steps_after_it(tmp_path):
    text = BASE + ("services:\n  - {name: web, selector: {app: web}, ports: [{port: 80}]}\n"
                   "checks:\n  - update: {services: [{name: web2, selector: {app: web}, ports: [{port: 80, protocl: TCP}]}]}\n"
                   "  - {from: pod/client, to: service/web2}\n")
    errors = _errors(tmp_path, text)
    assert len(errors) == 1 and "protocl" in errors[0], errors


def test_an_invalid_network_field_is_not_compared_as_its_default(tmp_path):
    errors = _errors(tmp_path, BASE.replace("model: flat", "model: flat\n  nodeNetwork: 10.240.0.0/33\n"
                                                             "  outsideNetwork: 10.240.0.0/16"))
    assert len(errors) == 1 and "nodeNetwork" in errors[0], errors
