"""The lab plan: what each network model wires, without building it."""
from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from dataplane.lab.plan import make_plan
from dataplane.lab.names import lab_of_netns
from dataplane.spec.scenario import load
from tests.conftest import SCENARIOS
from tests.helpers import BASE, write


def plan_for(tmp_path, model, lab="t1"):
    return make_plan(load(write(tmp_path, BASE.replace("model: flat", f"model: {model}"))).topology, lab)


def routes(plan, obj):
    ns = plan.netns_of(obj)
    return {(r.dst, r.gateway) for r in plan.routes if r.ns == ns}


@pytest.mark.parametrize("model", ["flat", "island", "air-gapped"])
def test_every_model_routes_pod_cidrs_between_nodes(tmp_path, model):
    plan = plan_for(tmp_path, model)
    assert ("10.0.2.0/24", "10.240.0.2") in routes(plan, "node1")
    assert ("10.0.1.0/24", "10.240.0.1") in routes(plan, "node2")
    # every pod: its /32 on eth0, default via the link-local gateway bound to the node's veth
    assert ("default", "169.254.1.1") in routes(plan, "client")
    assert ("10.0.1.2/32", None) in routes(plan, "node1")


def test_flat_underlay_knows_pod_cidrs(tmp_path):
    plan = plan_for(tmp_path, "flat")
    assert routes(plan, "underlay") == {("10.0.1.0/24", "10.240.0.1"), ("10.0.2.0/24", "10.240.0.2")}
    assert (plan.netns_of("underlay"), "net.ipv4.ip_forward", "1") in plan.sysctls


def test_island_underlay_knows_only_nodes(tmp_path):
    plan = plan_for(tmp_path, "island")
    assert routes(plan, "underlay") == set()
    assert ("default", "10.240.0.254") in routes(plan, "node1")
    assert (plan.netns_of("underlay"), "net.ipv4.ip_forward", "1") in plan.sysctls


def test_air_gapped_has_no_way_out(tmp_path):
    plan = plan_for(tmp_path, "air-gapped")
    assert routes(plan, "underlay") == set()
    assert all(dst != "default" for dst, _ in routes(plan, "node1") | routes(plan, "node2"))
    assert (plan.netns_of("underlay"), "net.ipv4.ip_forward", "0") in plan.sysctls
    # ... but the service CIDR is routed, toward an underlay that forwards nothing (kube-proxy's
    # rules run after routing: an unrouted cluster IP would never reach them)
    assert ("10.96.0.0/12", "10.240.0.254") in routes(plan, "node1")
    # ... and the services' load-balancer and external IPs, which other nodes reach by default
    from ipaddress import IPv4Address
    topology = load(write(tmp_path, BASE.replace("model: flat", "model: air-gapped"))).topology
    plan = make_plan(topology, "t1", ((IPv4Address("10.201.0.1"), "node1"),))
    assert ("10.201.0.1/32", "10.240.0.254") in routes(plan, "node2")
    assert routes(plan, "underlay") == set()


def test_names_are_lab_scoped_and_fit_ifnamsiz(tmp_path):
    plan = plan_for(tmp_path, "flat", lab="a-b")
    assert all(lab_of_netns(ns.name) == "a-b" for ns in plan.namespaces)
    assert len({ns.name for ns in plan.namespaces}) == len(plan.namespaces) == 7
    for v in plan.veths:
        assert len(v.ifname) <= 15 and len(v.peer_ifname) <= 15
    macs = [m for v in plan.veths for m in (v.mac, v.peer_mac)]
    assert len(set(macs)) == len(macs)
    assert all(int(m.split(":")[0], 16) & 0b11 == 0b10 for m in macs)  # local, unicast
    # Lab names with a dash never claim each other's namespaces.
    assert lab_of_netns("dp-a.node1") == "a" and lab_of_netns("dp-a-b.node1") == "a-b"
    assert lab_of_netns("other") is None and lab_of_netns("dp-nodot") is None


def test_no_link_is_planned_in_the_root_namespace(tmp_path):
    plan = plan_for(tmp_path, "flat")
    lab_ns = {ns.name for ns in plan.namespaces}
    for v in plan.veths:
        assert v.ns in lab_ns and v.peer_ns in lab_ns
    assert {a.ns for a in plan.addresses} <= lab_ns and {r.ns for r in plan.routes} <= lab_ns


def test_default_addresses(tmp_path):
    spec = load(write(tmp_path, BASE)).topology
    assert [(n.name, n.ip, str(n.pod_cidr)) for n in spec.nodes] == [
        ("node1", IPv4Address("10.240.0.1"), "10.0.1.0/24"), ("node2", IPv4Address("10.240.0.2"), "10.0.2.0/24")]
    assert [(p.name, str(p.ip)) for p in spec.pods] == [("client", "10.0.1.2"), ("web-1", "10.0.1.3"),
                                                        ("web-2", "10.0.2.2")]
    assert str(spec.hosts[0].ip) == "10.128.1.1"


def test_automatic_pod_ips_avoid_explicit_ones(tmp_path):
    text = BASE.replace("{name: web-1, node: node1,", "{name: web-1, node: node1, ip: 10.0.1.2,")
    spec = load(write(tmp_path, text)).topology
    ips = {p.name: str(p.ip) for p in spec.pods}
    assert ips["web-1"] == "10.0.1.2" and ips["client"] == "10.0.1.3"


def test_describe_lists_everything(tmp_path):
    text = plan_for(tmp_path, "island").describe()
    assert "netns dp-t1.node1  (node node1)" in text
    assert "route 10.0.2.0/24 via 10.240.0.2 dev eth0" in text
    assert "bridge br-nodes: v-node1, v-node2" in text


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_load(path):
    sc = load(path)
    assert sc.checks, f"{path} has no checks"
    make_plan(sc.topology, "x")


def test_outside_link_mtu_narrows_only_the_underlay_side(tmp_path):
    text = BASE.replace("model: flat", "model: island\n  outsideLinkMTU: 1400")
    plan = make_plan(load(write(tmp_path, text)).topology, "t1")
    underlay, ext = plan.netns_of("underlay"), plan.netns_of("ext")
    (link,) = [v for v in plan.veths if v.ns == underlay and v.peer_ns == ext]
    assert (link.mtu, link.peer_mtu) == (1400, None)           # the host's own end keeps `mtu`
    assert {b.ifname: b.mtu for b in plan.bridges} == {"br-nodes": None, "br-outside": 1400}
    assert all(v.mtu is None for v in plan.veths if v is not link)


def test_nodes_state_their_ephemeral_port_range(tmp_path):
    plan = plan_for(tmp_path, "island")
    for node in ("node1", "node2"):
        assert (plan.netns_of(node), "net.ipv4.ip_local_port_range", "32768 60999") in plan.sysctls
