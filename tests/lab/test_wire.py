"""What the rewritten packets look like on the wire, captured with scapy inside the pods: the
backend sees its own address and the client's; the client sees only the VIP. With checksum
offload off, every checksum the BPF programs updated incrementally must verify (EDGE-CASES 27);
with offload on (veth's default) the same traffic must flow."""
from __future__ import annotations

import sys
from ipaddress import IPv4Address

import pytest

from dataplane.lab import sniffers
from dataplane.backends import get
from dataplane.judge.checks import evaluate
from dataplane.lab.workload.argv import client_argv, parse_client_output
from dataplane.spec.checks import CheckSpec
from dataplane.lab import netns
from dataplane.lab.lab import Lab
from dataplane.spec.scenario import load
from tests.bpf.packets import ICMP, IP, TCP, UDP, Ether, checksums_valid
from tests.helpers import write

SCENARIO = """\
name: wire
topology:
  model: island
  nodes: [node1, node2]
  pods:
    - {name: client, node: node1}
    - {name: web, node: node2, labels: {app: web}}
services:
  - name: web
    clusterIP: 10.96.0.90
    selector: {app: web}
    ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, targetPort: 8080, protocol: UDP}]
"""
VIP, CLIENT, WEB = "10.96.0.90", "10.0.1.2", "10.0.2.2"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    sc = load(write(tmp_path_factory.mktemp("wire"), SCENARIO))
    lab = Lab.create(sc.topology, "t-wire")
    backend = get("ebpf", seed=5)
    try:
        backend.setup(lab, sc.services)
        yield lab
    finally:
        backend.teardown(lab)
        lab.teardown()


def capture_during(lab, pods, action) -> dict:
    """Frames seen on each pod's eth0 while `action()` runs."""
    with sniffers.live(lab, pods) as frames:
        action()
    return {pod: [Ether(f) for f in got] for pod, got in frames.items()}


def request(lab, protocol, port):
    spec = CheckSpec(name="wire", client="client", target="service/web", ip=IPv4Address(VIP),
                     port=port, protocol=protocol, expect="reachable", backends=("web",), requests=3)
    out = netns.run(lab.record.objects["client"], client_argv(sys.executable, spec), timeout=30)
    result = evaluate(spec, parse_client_output(out.stdout))
    assert result.passed, result.detail


def set_tx_offload(lab, pods, on: bool):
    for pod in pods:
        netns.run(lab.record.objects[pod], ["ethtool", "-K", "eth0", "tx", "on" if on else "off"], timeout=10)


@pytest.mark.parametrize("offload", [True, False], ids=["offload on", "offload off"])
@pytest.mark.parametrize("protocol,port,l4", [("TCP", 80, TCP), ("UDP", 53, UDP)])
def test_rewritten_fields_and_checksums_on_the_wire(lab, offload, protocol, port, l4):
    set_tx_offload(lab, ["client", "web"], offload)
    try:
        seen = capture_during(lab, ["client", "web"], lambda: request(lab, protocol, port))
    finally:
        set_tx_offload(lab, ["client", "web"], True)
    at_web = [f for f in seen["web"] if l4 in f and ICMP not in f]
    at_client = [f for f in seen["client"] if l4 in f and ICMP not in f]
    to_web = [f for f in at_web if f[IP].dst == WEB]
    to_client = [f for f in at_client if f[IP].dst == CLIENT]
    assert to_web and to_client
    # the backend sees the client's own address, and its own address and target port
    assert {(f[IP].src, f[IP].dst, f[l4].dport) for f in to_web} == {(CLIENT, WEB, 8080)}
    # the client sees only the VIP: no backend address ever reaches it
    assert {(f[IP].src, f[l4].sport) for f in to_client} == {(VIP, port)}
    assert all(f[IP].src != WEB and f[IP].dst != WEB for f in at_client)
    if not offload:
        # full checksums from the sender, updated incrementally by BPF on the way: all must verify
        bad = [f.summary() for f in to_web + to_client if not checksums_valid(bytes(f))]
        assert bad == []
