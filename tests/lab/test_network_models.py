"""The three network models of Kubernetes, built for real and probed with real sockets.

One lab per model; the same probes everywhere; the expected outcome of each probe per model is
written here, from the Kubernetes networking model, not read from the scenario files.
"""
from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from dataplane.spec.checks import CheckSpec
from dataplane.lab.lab import Lab
from dataplane.run.runner import run_check
from dataplane.spec.scenario import load
from tests.helpers import BASE, write

R, D = "reachable", "dropped"
# probe: (client, target, protocol, source the server must see)
PROBES = {
    "pod to pod, other node":      ("client", "web-2", "TCP", "client"),
    "pod to pod, other node, UDP": ("client", "web-2", "UDP", "client"),
    "pod to pod, same node":       ("client", "web-1", "TCP", "client"),
    "pod to own node":             ("client", "node1", "TCP", "client"),
    "pod to other node":           ("client", "node2", "TCP", "client"),
    "node to pod, other node":     ("node1", "web-2", "TCP", "client"),
    "node to node":                ("node1", "node2", "TCP", "client"),
    "outside to pod":              ("ext", "web-1", "TCP", "client"),
    "outside to pod, UDP":         ("ext", "web-2", "UDP", "client"),
    "outside to node":             ("ext", "node2", "TCP", "client"),
    "pod to outside":              ("web-2", "ext", "TCP", "client"),
    "node to outside":             ("node1", "ext", "TCP", "client"),
}
EXPECT = {
    #                                 flat island air-gapped
    "pod to pod, other node":        (R, R, R),
    "pod to pod, other node, UDP":   (R, R, R),
    "pod to pod, same node":         (R, R, R),
    "pod to own node":               (R, R, R),
    "pod to other node":             (R, R, R),
    "node to pod, other node":       (R, R, R),
    "node to node":                  (R, R, R),
    "outside to pod":                (R, D, D),
    "outside to pod, UDP":           (R, D, D),
    "outside to node":               (R, R, D),
    "pod to outside":                (R, D, D),   # island: needs masquerade, which comes later
    "node to outside":               (R, R, D),
}
MODELS = ("flat", "island", "air-gapped")


@pytest.fixture(scope="module", params=MODELS)
def lab(request, tmp_path_factory):
    model = request.param
    sc = load(write(tmp_path_factory.mktemp(model), BASE.replace("model: flat", f"model: {model}")))
    lab = Lab.create(sc.topology, f"t-{model}")
    yield lab
    lab.teardown()


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_reachability(lab, probe):
    client, target, protocol, _ = PROBES[probe]
    expect = EXPECT[probe][MODELS.index(lab.spec.network)]
    client_ip = lab.spec.find(client).ip
    spec = CheckSpec(name=probe, client=client, target=target, ip=lab.spec.find(target).ip, port=8080,
                     protocol=protocol, expect=expect, backends=(target,) if expect == R else None,
                     source=client_ip if expect == R else None, timeout=1.0)
    result = run_check(lab, spec)
    assert result.passed, f"{lab.spec.network}: {probe}: {result.detail}"
    if expect == R:
        # no NAT anywhere in the lab: the server saw the client's own address
        assert result.sources == {str(client_ip): 1}
        assert result.answered == {target: 1}


def test_pod_addressing(lab):
    """Each pod has its /32 on eth0 and a default route via the link-local gateway; the node has a
    /32 route to it. Read back from the kernel, not from the plan."""
    from dataplane.lab import netns
    pod = lab.spec.find("web-2")
    with netns.ipr(lab.record.objects["web-2"]) as ipr:
        addrs = {(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(family=2)}
        default = [r for r in ipr.get_routes(family=2, table=254) if r["dst_len"] == 0]
    assert (str(pod.ip), 32) in addrs
    assert [r.get("gateway") for r in default] == ["169.254.1.1"]
    with netns.ipr(lab.record.objects["node2"]) as ipr:
        dsts = {(r.get("dst"), r["dst_len"]) for r in ipr.get_routes(family=2, table=254)}
        forward = netns.read_sysctl(lab.record.objects["node2"], "net.ipv4.ip_forward")
    assert (str(pod.ip), 32) in dsts and forward == "1"
    assert IPv4Address(str(pod.ip)) in lab.spec.node("node2").pod_cidr
