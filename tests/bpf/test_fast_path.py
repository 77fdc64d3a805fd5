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
from dataplane.backends.ebpf.address_filter import SLOTS_PER_WORD, slot_of
from dataplane.backends.ebpf.testrun import run
from dataplane.contract.consts import ADDR_F_ENDPOINT, ADDR_F_FRONTEND, CT_REPLY, CT_SERVICE
from dataplane.spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable
from tests.bpf.packets import CLIENT, IP, UDP, WEB1, from_pod, parsed, syn, udp
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
    # the flow gone (its entries expired and collected): a sync that walks nothing (an unrelated
    # addition; nothing at all) leaves the addresses to the agent's garbage collection, which
    # lets them go
    program.table("conntrack").clear()
    b.sync(None, gone.updated([_filler(99)]) if tracked else ServiceTable())
    assert str(VIP) in _addresses(program) and WEB1 in _addresses(program)
    assert b.collect() >= 2
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


def _filter_words(program) -> dict:
    return {k.value: v.value for k, v in program.table("address_filter").items() if v.value}


def _expected_words(program) -> dict:
    """The filter the addresses map should have: each address's flags in its slot, OR'ed."""
    slots = program.table("address_filter").max_entries * SLOTS_PER_WORD
    words = {}
    for addr, flags in _addresses(program).items():
        s = slot_of(int(IPv4Address(addr)), slots)
        words[s // SLOTS_PER_WORD] = words.get(s // SLOTS_PER_WORD, 0) | flags << (2 * (s % SLOTS_PER_WORD))
    return words


def test_the_filter_is_the_exact_summary_of_the_addresses_map_through_syncs(program):
    """Full and change-tracked syncs that add, change and remove addresses, a flow keeping one,
    and an adopting agent's rebuild over a filter left with a stale bit: after each, every word
    is the OR of the flags of the addresses in its slots, no more (a stale bit only costs a
    lookup; a missing one would pass service traffic untranslated)."""
    b = _backend(program)
    table = ServiceTable()
    for i in range(60):
        table.add(_filler(i))
    table.add(_dns())
    b.sync(None, table)
    assert _filter_words(program) == _expected_words(program) and _filter_words(program)
    run(program.fns["from_pod"].fd, bytes(from_pod(CLIENT, str(VIP), udp(40003, 53))))   # a flow to keep
    table = table.updated([_filler(70)], ["default/f001", "default/f002", "default/dns"])
    b.sync(None, table)
    assert _filter_words(program) == _expected_words(program)
    assert WEB1 in _addresses(program) and str(VIP) in _addresses(program), "named by the flow"
    b.sync(None, ServiceTable())
    assert _filter_words(program) == _expected_words(program)
    # an agent stopped between its two writes left a bit nothing sets; the next one's filter,
    # built from the addresses map, clears it
    t = program.table("address_filter")
    t[t.Key(7)] = t.Leaf(t[t.Key(7)].value | 0b10)
    program.address_filter = None
    b.sync(None, table)
    assert _filter_words(program) == _expected_words(program)


def test_the_program_finds_every_frontend_user_space_put_in_the_filter(program):
    """The slot of an address is computed twice, in C (lb4_address_slot) and in Python (slot_of):
    were they to differ anywhere, a frontend's bit would be missing where the program looks, and
    its packets would take the fast path. 400 VIPs spread over the whole address space: a SYN to
    a port none of them serves is refused by the full path (kube-proxy's REJECT), never passed."""
    import random
    r = random.Random(13)
    b = _backend(program)
    table = ServiceTable()
    vips = {IPv4Address(r.randrange(0x0B000000, 0xDF000000)) for _ in range(400)}
    for i, vip in enumerate(sorted(vips)):
        table.add(Service("default", f"v{i:03d}", "ClusterIP", vip, (ServicePort("", 80, "TCP", 8080),),
                          endpoints=(Endpoint(IPv4Address(WEB1), (EndpointPort("", 8080, "TCP"),), "node1", None),)))
    b.sync(None, table)
    passed = []
    for vip in vips:
        frame = bytes(from_pod(CLIENT, str(vip), syn(40000, 81)))
        out = run(program.fns["from_pod"].fd, frame)
        if out.verdict == "pass" and out.data == frame:
            passed.append(str(vip))
    assert not passed, f"passed untouched: {passed[:5]}"


def test_a_missing_bit_and_drift_behind_our_back_are_repaired(program):
    """The dangerous direction: a filter word that lost a bit (zeroed behind our back) is restored
    by repair (which reconcile runs); and an address written into the addresses map behind our
    back, sharing its slot with an endpoint, then removed by the repair of the map, leaves the
    endpoint's bit set (the filter counts from its own record, not from what the caller says
    the map held)."""
    from dataplane.backends.ebpf import maps
    from dataplane.backends.ebpf.address_filter import filter_of
    b = _backend(program)
    table = ServiceTable()
    endpoint, intruder = IPv4Address("10.0.4.105"), IPv4Address("10.0.4.228")
    slots = program.table("address_filter").max_entries * SLOTS_PER_WORD
    assert slot_of(int(endpoint), slots) == slot_of(int(intruder), slots), "the premise: one slot"
    table.add(_dns(endpoints=(str(endpoint),)))
    b.sync(None, table)
    word = slot_of(int(endpoint), slots) // SLOTS_PER_WORD
    t = program.table("address_filter")
    assert t[t.Key(word)].value, "the endpoint's bit is set"
    t[t.Key(word)] = t.Leaf(0)
    assert filter_of(program).repair() is True and _filter_words(program) == _expected_words(program)
    assert filter_of(program).repair() is False
    # drift: the intruder added behind our back, then the map repaired (reconcile's apply)
    a = program.table("addresses")
    a[a.Key(socket.htonl(int(intruder)))] = a.Leaf(ADDR_F_ENDPOINT)
    maps.apply(program, maps.read_node_maps(program), b.current["node1"])
    assert str(intruder) not in _addresses(program)
    assert _filter_words(program) == _expected_words(program) and t[t.Key(word)].value


def test_the_fast_path_leaves_a_flow_of_ours_alone_only_when_neither_end_is_in_the_filter(program):
    """Tells the fast path from the full one: a reply entry planted for CLIENT -> OTHER (as a
    backend's reply to a client) is found by the full path, which rewrites the packet; the fast
    path never looks, and passes it untouched. So the packet is untouched while CLIENT is nobody's
    endpoint, and rewritten once a service names CLIENT (an all-ones filter would fail the first
    half, an all-zeros one the second)."""
    b = _backend(program)
    table = ServiceTable()
    table.add(_dns())
    b.sync(None, table)
    ct = program.table("conntrack")
    k = ct.Key()
    k.saddr, k.daddr = socket.htonl(int(IPv4Address(CLIENT))), socket.htonl(int(IPv4Address(OTHER)))
    k.sport, k.dport, k.proto, k.dir = socket.htons(40001), socket.htons(9999), 17, CT_REPLY
    v = ct.Leaf()
    v.expires, v.nat_addr, v.nat_port = 2 ** 62, socket.htonl(int(VIP)), socket.htons(53)
    ct[k] = v
    frame = bytes(from_pod(CLIENT, OTHER, udp(40001, 9999)))
    out = run(program.fns["from_pod"].fd, frame)
    assert out.verdict == "pass" and out.data == frame, "the fast path: the entry never looked at"
    table = table.updated([_dns(endpoints=(WEB1, CLIENT))])
    b.sync(None, table)
    ct[k] = v
    again = run(program.fns["from_pod"].fd, frame)
    assert parsed(again.data)[IP].src == str(VIP), "the full path: CLIENT is an endpoint now, its reply translated"
