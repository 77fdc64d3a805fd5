"""The pod hooks' fast path (bpf/pod.c, pod4_fast_pass) and the addresses map it reads, through the
eBPF backend's own syncs (full and change-tracked). The packet fuzzer judges the path against the
oracle; these rows pin the lifecycle of the map, including the case the fuzzer found: a UDP flow
that outlives its deleted service must keep its reverse NAT, so its addresses stay until the flow
is gone."""
from __future__ import annotations

import socket
from ipaddress import IPv4Address

import pytest

from dataplane.backends.ebpf import EbpfBackend
from dataplane.backends.ebpf.testrun import run
from dataplane.contract.consts import ADDR_F_ENDPOINT, ADDR_F_FRONTEND, CT_REPLY, CT_SERVICE
from dataplane.spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable
from tests.bpf.packets import CLIENT, IP, UDP, WEB1, from_pod, parsed, udp
from tests.bpf.test_change_tracking import _backend

VIP = IPv4Address("10.96.0.20")
OTHER = "10.0.1.7"                 # a pod nobody serves from


def _dns(endpoints=(WEB1,)) -> Service:
    return Service("default", "dns", "ClusterIP", VIP, (ServicePort("", 53, "UDP", 5353),),
                   endpoints=tuple(Endpoint(IPv4Address(a), (EndpointPort("", 5353, "UDP"),), "node1", None)
                                   for a in endpoints))


def _filler(i: int) -> Service:
    return Service("default", f"f{i:03d}", "ClusterIP", IPv4Address("10.96.1.0") + i,
                   (ServicePort("", 80, "TCP", 8080),),
                   endpoints=(Endpoint(IPv4Address("10.0.3.0") + i, (EndpointPort("", 8080, "TCP"),), "node1", None),))


def _addresses(program) -> dict:
    return {str(IPv4Address(socket.ntohl(k.value))): v.value for k, v in program.table("addresses").items()}


def _metric(program, name):
    return program.metrics().get(name, 0)


@pytest.mark.parametrize("tracked, evicted", [(True, None), (False, None), (True, CT_REPLY), (True, CT_SERVICE)],
                         ids=["change-tracked", "full", "reply-half-evicted", "service-half-evicted"])
def test_a_udp_flow_outliving_its_service_keeps_its_addresses(program, tracked, evicted):
    """`evicted`: the LRU table lost one half of the flow before the sync; the next packet heals
    it from the other, so the addresses the healed half is keyed by must stay too."""
    b: EbpfBackend = _backend(program)
    table = ServiceTable()
    for i in range(40 if tracked else 0):            # a table large enough for the tracked path
        table.add(_filler(i))
    table.add(_dns())
    b.sync(None, table)
    assert _addresses(program)[str(VIP)] == ADDR_F_FRONTEND and _addresses(program)[WEB1] == ADDR_F_ENDPOINT
    out = run(program.fns["from_pod"].fd, bytes(from_pod(CLIENT, str(VIP), udp(40000, 53))))
    assert parsed(out.data)[IP].dst == WEB1
    if evicted:
        ct = program.table("conntrack")
        for k in [k for k in ct.keys() if k.dir == evicted]:
            del ct[k]
    # the service is deleted: kube-proxy's reconciler leaves its UDP flows to expire (datapath.md)
    gone = table.updated([], ["default/dns"]) if tracked else ServiceTable()
    b.sync(None, gone)
    assert _addresses(program).get(str(VIP)) and _addresses(program).get(WEB1), "still named by the flow"
    if evicted != CT_SERVICE:   # (a client's datagram finds no flow without its half, fast path or not)
        again = run(program.fns["from_pod"].fd, bytes(from_pod(CLIENT, str(VIP), udp(40000, 53))))
        assert parsed(again.data)[IP].dst == WEB1, "the client's next datagram still reaches its backend"
    reply = run(program.fns["from_pod"].fd, bytes(from_pod(WEB1, CLIENT, udp(5353, 40000))))
    assert parsed(reply.data)[IP].src == str(VIP) and parsed(reply.data)[UDP].sport == 53, "reverse NAT kept"
    # the flow gone (its entries expired and collected), the next sync lets the addresses go
    program.table("conntrack").clear()
    b.sync(None, gone.updated([_filler(99)]) if tracked else ServiceTable())
    assert str(VIP) not in _addresses(program) and WEB1 not in _addresses(program)
    assert b.current["node1"].addresses == {socket.ntohl(k.value): v.value
                                             for k, v in program.table("addresses").items()}


def test_pod_to_pod_takes_the_fast_path_and_a_reply_does_not(program):
    """Both pass, and both count M_PASS or M_REVNAT as the full path would: the fuzzer holds the
    equivalence; here, that a reply from an endpoint is still translated and that traffic nobody
    serves is passed untouched."""
    b = _backend(program)
    table = ServiceTable()
    table.add(_dns())
    b.sync(None, table)
    before = _metric(program, "M_PASS")
    frame = bytes(from_pod(CLIENT, OTHER, udp(40001, 9999)))
    out = run(program.fns["from_pod"].fd, frame)
    assert out.verdict == "pass" and out.data == frame and _metric(program, "M_PASS") == before + 1
    run(program.fns["from_pod"].fd, bytes(from_pod(CLIENT, str(VIP), udp(40002, 53))))
    revnat = _metric(program, "M_REVNAT")
    reply = run(program.fns["from_pod"].fd, bytes(from_pod(WEB1, CLIENT, udp(5353, 40002))))
    assert parsed(reply.data)[IP].src == str(VIP) and _metric(program, "M_REVNAT") == revnat + 1
