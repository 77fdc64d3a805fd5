"""ClusterIP fixtures: each frame runs on the BPF program (BPF_PROG_TEST_RUN) and on the oracle
from the same state; Pair.send asserts they agree byte for byte, and each test asserts what
the specification says the result must be."""
from __future__ import annotations

import pytest

from tests.bpf.packets import (CLIENT, NODE1, NODE2, NODE_MAC, POD_MAC, VIP, WEB1, WEB2, ICMP, IP,
                               TCP, UDP, ARP, Ether, IPerror, UDPerror, TCPerror, ack, checksums_valid,
                               from_pod, parsed, syn, synack, table, to_pod, udp, WEB_ONLY_LOCAL)

BACKENDS = {WEB1, WEB2}


def test_syn_to_vip_is_dnated_to_a_backend(pair):
    p = pair(table())
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    out = parsed(got.data)
    assert got.verdict == "pass" and want.reason == "M_DNAT_NEW"
    assert out[IP].dst in BACKENDS and out[TCP].dport == 8080
    assert out[IP].src == CLIENT and out[TCP].sport == 40000        # the client IP is kept
    assert checksums_valid(got.data)
    p.assert_same_state()
    assert len(p.bpf_conntrack()) == 2                               # one entry per direction


def test_flow_keeps_its_backend_and_replies_come_from_the_vip(pair):
    p = pair(table())
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    backend = parsed(got.data)[IP].dst
    reply, want = p.send("to_pod", to_pod(backend, CLIENT, synack()))
    out = parsed(reply.data)
    assert want.reason == "M_REVNAT" and out[IP].src == VIP and out[TCP].sport == 80
    assert out[IP].dst == CLIENT and out[TCP].dport == 40000 and checksums_valid(reply.data)
    for _ in range(3):
        again, want = p.send("from_pod", from_pod(CLIENT, VIP, ack()))
        assert want.reason == "M_DNAT" and parsed(again.data)[IP].dst == backend
    p.assert_same_state()


def test_local_backend_reply_is_translated_on_its_own_veth(pair):
    """A reply from a backend on the client's node is seen first leaving the backend (from_pod)."""
    p = pair(table(services=WEB_ONLY_LOCAL))
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    assert parsed(got.data)[IP].dst == WEB1
    reply, want = p.send("from_pod", from_pod(WEB1, CLIENT, synack()))
    assert want.reason == "M_REVNAT" and parsed(reply.data)[IP].src == VIP
    # ... and the client's own veth then leaves it alone
    again, want = p.send("to_pod", to_pod(VIP, CLIENT, synack(sport=80)))
    assert want.reason == "M_PASS" and again.data == bytes(to_pod(VIP, CLIENT, synack(sport=80)))


def test_udp_round_trip_and_zero_checksum(pair):
    p = pair(table())
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, udp()))
    out = parsed(got.data)
    assert want.reason == "M_DNAT_NEW" and out[UDP].dport == 5353 and checksums_valid(got.data)
    backend = out[IP].dst
    reply, _ = p.send("to_pod", to_pod(backend, CLIENT, UDP(sport=5353, dport=40000) / b"web"))
    assert parsed(reply.data)[IP].src == VIP and parsed(reply.data)[UDP].sport == 53
    assert checksums_valid(reply.data)
    # a datagram without checksum (0) keeps none
    frame = from_pod(CLIENT, VIP, UDP(sport=40001, dport=53, chksum=0) / b"x")
    got, _ = p.send("from_pod", frame)
    assert parsed(got.data)[UDP].chksum == 0 and parsed(got.data)[UDP].dport == 5353
    p.assert_same_state()


def test_same_port_tcp_and_udp_are_independent(pair):
    p = pair(table())
    tcp, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn(dport=53)))
    dgram, _ = p.send("from_pod", from_pod(CLIENT, VIP, udp(dport=53)))
    assert parsed(tcp.data)[TCP].dport == 5354 and parsed(dgram.data)[UDP].dport == 5353


def test_every_port_of_a_multiport_service(pair):
    p = pair(table())
    for dport, l4, target in ((80, syn(dport=80), 8080), (53, udp(dport=53), 5353), (53, syn(dport=53), 5354)):
        got, want = p.send("from_pod", from_pod(CLIENT, VIP, l4))
        assert want.reason == "M_DNAT_NEW" and parsed(got.data)[l4.__class__].dport == target


def _assert_rejection(got, original):
    out = parsed(got.data)
    assert got.verdict == "redirect"                          # straight back out the pod's veth
    assert out[Ether].dst == POD_MAC and out[Ether].src == NODE_MAC
    assert out[IP].src == VIP and out[IP].dst == CLIENT and out[IP].proto == 1
    assert out[ICMP].type == 3 and out[ICMP].code == 3       # port unreachable: ECONNREFUSED
    quoted = bytes(original[IP])[:28]
    assert bytes(out[ICMP].payload)[:28] == quoted            # the client's header + 8 bytes
    assert checksums_valid(got.data)


def test_service_without_endpoints_rejects(pair):
    p = pair(table(services="""\
        services:
          - name: empty
            clusterIP: 10.96.0.10
            selector: {app: nothing}
            ports: [{name: a, port: 80}, {name: b, port: 80, protocol: UDP}]
        """))
    for frame in (from_pod(CLIENT, VIP, syn()), from_pod(CLIENT, VIP, UDP(sport=1, dport=80) / b"q")):
        got, want = p.send("from_pod", frame)
        assert want.reason == "REJECT_NO_ENDPOINTS"
        _assert_rejection(got, frame)
    assert p.bpf_conntrack() == {}


def test_vip_on_an_unserved_port_rejects(pair):
    p = pair(table())
    frame = from_pod(CLIENT, VIP, syn(dport=81))
    got, want = p.send("from_pod", frame)
    assert want.reason == "REJECT_PORT_UNSERVED"
    _assert_rejection(got, frame)
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, udp(dport=80)))   # 80 is TCP only
    assert want.reason == "REJECT_PORT_UNSERVED"


@pytest.mark.parametrize("l4", [IP(proto=47) / b"\0\0\x08\0gre", ICMP(type=8) / b"ping"],
                         ids=["GRE", "ICMP echo"])
def test_other_protocols_to_a_vip_are_dropped_unchanged(pair, l4):
    p = pair(table())
    frame = Ether(src=POD_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP, proto=l4.proto if isinstance(l4, IP) else 1) / (
        l4.payload if isinstance(l4, IP) else l4)
    got, want = p.send("from_pod", frame)
    assert got.verdict == "drop" and want.reason == "DROP_UNKNOWN_L4" and got.data == bytes(frame)


@pytest.mark.parametrize("frame", [
    from_pod(CLIENT, WEB2, syn(dport=8080)),
    from_pod(CLIENT, "10.128.1.1", udp(dport=53)),
    from_pod(CLIENT, WEB2, ICMP(type=8) / b"ping"),
    Ether(src=POD_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=CLIENT, pdst="169.254.1.1"),
    Ether(src=POD_MAC, dst=NODE_MAC, type=0x86DD) / (b"\x60" + b"\0" * 39),
], ids=["tcp to a pod", "udp outside", "icmp echo to a pod", "ARP", "IPv6"])
@pytest.mark.parametrize("hook", ["from_pod", "to_pod"])
def test_traffic_not_for_a_vip_passes_untouched(pair, frame, hook):
    p = pair(table())
    got, want = p.send(hook, frame)
    assert got.verdict == "pass" and want.reason == "M_PASS" and got.data == bytes(frame)


def _raw(ip_bytes: bytes) -> Ether:
    return Ether(src=POD_MAC, dst=NODE_MAC, type=0x0800) / ip_bytes


@pytest.mark.parametrize("mangle,reason", [
    (lambda b: bytes([0x44]) + b[1:], "DROP_BAD_IHL"),                     # IHL 4
    (lambda b: bytes([0x4f]) + b[1:], "DROP_BAD_IHL"),                     # IHL 15: beyond the packet
    (lambda b: b[:2] + (10).to_bytes(2, "big") + b[4:], "DROP_BAD_LEN"),   # total length < header
    (lambda b: b[:2] + (900).to_bytes(2, "big") + b[4:], "DROP_BAD_LEN"),  # total length > frame
], ids=["ihl 4", "ihl 15", "short total length", "long total length"])
@pytest.mark.parametrize("hook", ["from_pod", "to_pod"])
def test_malformed_ip_is_dropped_unchanged(pair, mangle, reason, hook):
    p = pair(table())
    frame = _raw(mangle(bytes(IP(src=CLIENT, dst=VIP) / syn())))
    got, want = p.send(hook, frame)
    assert got.verdict == "drop" and want.reason == reason and got.data == bytes(frame)


@pytest.mark.parametrize("proto", [6, 17])
def test_truncated_l4_header_is_dropped_unchanged(pair, proto):
    p = pair(table())
    frame = _raw(bytes(IP(src=CLIENT, dst=VIP, proto=proto) / b"\x9c\x40\x00\x50"))  # ports only
    got, want = p.send("from_pod", frame)
    assert got.verdict == "drop" and want.reason == "DROP_TRUNCATED_L4" and got.data == bytes(frame)


def test_ip_options_to_a_vip_are_dropped_elsewhere_passed(pair):
    p = pair(table())
    opts = b"\x94\x04\x00\x00"   # router alert
    to_vip = _raw(bytes(IP(src=CLIENT, dst=VIP, options=opts) / syn()))
    got, want = p.send("from_pod", to_vip)
    assert got.verdict == "drop" and want.reason == "DROP_IP_OPTIONS" and got.data == bytes(to_vip)
    to_pod_ip = _raw(bytes(IP(src=CLIENT, dst=WEB2, options=opts) / syn(dport=8080)))
    got, want = p.send("from_pod", to_pod_ip)
    assert got.verdict == "pass" and got.data == bytes(to_pod_ip)


def test_a_later_fragment_whose_first_was_not_seen(pair):
    """Its flow cannot be known: to a VIP it is dropped (DROP_FRAGMENT), elsewhere it passes.
    (Fragments of known flows: tests/bpf/test_fragments.py.)"""
    p = pair(table())
    later = _raw(bytes(IP(src=CLIENT, dst=VIP, frag=6, proto=17) / (b"x" * 24)))
    got, want = p.send("from_pod", later)
    assert got.verdict == "drop" and want.reason == "DROP_FRAGMENT" and got.data == bytes(later)
    elsewhere = _raw(bytes(IP(src=CLIENT, dst=WEB2, frag=6, proto=17) / (b"x" * 24)))
    got, want = p.send("from_pod", elsewhere)
    assert got.verdict == "pass"


def test_tcp_without_syn_or_flow_is_dropped_as_invalid(pair):
    p = pair(table())
    for flags in ("A", "FA", "R", "SA"):
        frame = from_pod(CLIENT, VIP, TCP(sport=40000, dport=80, flags=flags))
        got, want = p.send("from_pod", frame)
        assert got.verdict == "drop" and want.reason == "DROP_CT_LOST"
    assert p.bpf_conntrack() == {}


def test_icmp_error_from_the_backend_is_reverse_translated(pair):
    p = pair(table())
    sent, _ = p.send("from_pod", from_pod(CLIENT, VIP, udp(payload=b"a" * 32)))
    dnated = parsed(sent.data)
    backend = dnated[IP].dst
    err = to_pod(backend, CLIENT, ICMP(type=3, code=3) / bytes(dnated[IP])[:28])   # RFC 792 minimum quote
    got, want = p.send("to_pod", err)
    out = parsed(got.data)
    assert want.reason == "M_ICMP_REVNAT" and got.verdict == "pass"
    assert out[IP].src == VIP and out[IP].dst == CLIENT            # from the VIP the client used
    inner = out[IPerror]
    assert inner.src == CLIENT and inner.dst == VIP and out[UDPerror].dport == 53 and out[UDPerror].sport == 40000
    # the quote is now exactly what the client sent, checksums included
    original = bytes(from_pod(CLIENT, VIP, udp(payload=b"a" * 32))[IP])[:28]
    assert bytes(inner)[:28] == original
    assert checksums_valid(got.data)
    p.assert_same_state()


def test_icmp_frag_needed_from_a_router_keeps_its_source(pair):
    p = pair(table())
    sent, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    dnated = parsed(sent.data)
    err = to_pod(NODE2, CLIENT, ICMP(type=3, code=4, nexthopmtu=1400) / bytes(dnated[IP])[:48])
    got, want = p.send("to_pod", err)
    out = parsed(got.data)
    assert want.reason == "M_ICMP_REVNAT" and out[IP].src == NODE2
    assert out[IPerror].dst == VIP and out[TCPerror].dport == 80 and out[ICMP].nexthopmtu == 1400
    assert checksums_valid(got.data)


def test_icmp_error_about_unknown_flow_passes(pair):
    p = pair(table())
    quote = bytes(IP(src=CLIENT, dst=WEB2) / udp(dport=9))[:28]
    frame = to_pod(WEB2, CLIENT, ICMP(type=3, code=3) / quote)
    got, want = p.send("to_pod", frame)
    assert got.verdict == "pass" and want.reason == "M_PASS" and got.data == bytes(frame)


HAIRPIN = """\
services:
  - {name: self, clusterIP: 10.96.0.10, selector: {app: self}, ports: [{port: 80, targetPort: 8080}]}
"""
SELF_TOPOLOGY = """\
name: t
topology:
  nodes: [node1]
  pods:
    - {name: client, node: node1, labels: {app: self}}
"""


NAT_LO, NAT_HI = 61000, 65535      # the default node-IP port range


def test_hairpin_is_masqueraded_and_bounced_back(pair):
    p = pair(table(services=HAIRPIN, topology=SELF_TOPOLOGY))
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    out = parsed(got.data)
    assert got.verdict == "redirect" and want.reason == "M_DNAT_NEW"
    assert out[IP].src == NODE1 and out[IP].dst == CLIENT and out[TCP].dport == 8080
    assert NAT_LO <= out[TCP].sport <= NAT_HI                   # a port of the node-IP allocator
    assert out[Ether].dst == POD_MAC and checksums_valid(got.data)
    reply, want = p.send("from_pod", from_pod(CLIENT, NODE1, synack(dport=out[TCP].sport)))
    back = parsed(reply.data)
    assert reply.verdict == "redirect" and want.reason == "M_REVNAT"
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == (VIP, 80, CLIENT, 40000)
    p.assert_same_state()


TWO_VIPS = """\
services:
  - {name: self, clusterIP: 10.96.0.10, selector: {app: self}, ports: [{port: 80, targetPort: 8080}]}
  - {name: again, clusterIP: 10.96.0.11, selector: {app: self}, ports: [{port: 81, targetPort: 8080}]}
"""


def test_two_hairpin_flows_from_one_port_get_their_own_mappings(pair):
    """One pod port, two VIPs, the same target port: each flow's node-IP tuple is its own, so
    neither's replies are taken by the other."""
    p = pair(table(services=TWO_VIPS, topology=SELF_TOPOLOGY))
    a, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn(dport=80)))
    b, _ = p.send("from_pod", from_pod(CLIENT, "10.96.0.11", syn(dport=81)))
    pa, pb = parsed(a.data)[TCP].sport, parsed(b.data)[TCP].sport
    assert pa != pb
    for port, vip, vport in ((pa, VIP, 80), (pb, "10.96.0.11", 81)):
        reply, want = p.send("from_pod", from_pod(CLIENT, NODE1, synack(dport=port)))
        out = parsed(reply.data)
        assert want.reason == "M_REVNAT" and (out[IP].src, out[TCP].sport, out[TCP].dport) == (vip, vport, 40000)
    p.assert_same_state()


def test_hairpin_port_avoids_a_node_socket_holding_the_tuple(pair):
    """A node process connected from the port the client's own port would be (in range here) to
    the same pod port: the hairpin mapping takes another."""
    p = pair(table(services=HAIRPIN, topology=SELF_TOPOLOGY))
    p.open_socket(6, 61000, remote=(CLIENT, 8080))
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=61000)))
    port = parsed(got.data)[TCP].sport
    assert want.reason == "M_DNAT_NEW" and port != 61000 and NAT_LO <= port <= NAT_HI
    assert p.prog.metrics()["M_SNAT_PORT_MOVED"] == 1
    p.assert_same_state()


AFFINITY = """\
services:
  - name: web
    clusterIP: 10.96.0.10
    selector: {app: web}
    sessionAffinity: ClientIP
    sessionAffinityConfig: {clientIP: {timeoutSeconds: 10}}
    ports: [{port: 80, targetPort: 8080}]
"""


def test_session_affinity_until_timeout(pair):
    p = pair(table(services=AFFINITY), seed=11)
    first, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=30000)))
    chosen = parsed(first.data)[IP].dst
    for sport in range(30001, 30021):
        got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=sport)))
        assert parsed(got.data)[IP].dst == chosen
    assert p.prog.metrics()["M_AFFINITY_HIT"] == 20
    p.advance(11)   # past the timeout after the last use: a fresh choice (both sides agree which)
    seen = set()
    for sport in range(31000, 31040):
        p.advance(11)
        got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=sport)))
        seen.add(parsed(got.data)[IP].dst)
    assert seen == BACKENDS
    p.assert_same_state()


def test_udp_flow_expires_and_is_chosen_anew(pair):
    p = pair(table())
    p.send("from_pod", from_pod(CLIENT, VIP, udp()))
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, udp()))
    assert want.reason == "M_DNAT"
    p.advance(61)
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, udp()))
    assert want.reason == "M_DNAT_NEW"


def test_backend_choice_follows_the_seed(pair):
    """Same seed, same choices (replay); the oracle predicts each one."""
    choices = []
    for seed in (1, 1, 2):
        p = pair(table(), seed=seed)
        run = [str(parsed(p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=s)))[0].data)[IP].dst)
               for s in range(41000, 41020)]
        choices.append(run)
    assert choices[0] == choices[1] and choices[0] != choices[2]
    assert set(choices[0]) == BACKENDS


def test_client_error_about_a_reply_reaches_the_backend(pair):
    """Both directions: the client's port unreachable about a VIP reply (its socket is gone)
    quotes VIP:53 -> client and is sent to the VIP; it reaches the backend quoting what the
    backend sent (backend:5353 -> client)."""
    p = pair(table())
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, udp()))
    backend = parsed(got.data)[IP].dst
    reply, _ = p.send("to_pod", to_pod(backend, CLIENT, UDP(sport=5353, dport=40000) / b"late"))
    err = from_pod(CLIENT, VIP, ICMP(type=3, code=3) / bytes(parsed(reply.data)[IP])[:28])
    out_frame, want = p.send("from_pod", err)
    out = parsed(out_frame.data)
    assert want.reason == "M_ICMP_REVNAT" and out[IP].dst == backend and out[IP].src == CLIENT
    assert (out[IPerror].src, out[UDPerror].sport, out[IPerror].dst, out[UDPerror].dport) == (backend, 5353, CLIENT, 40000)
    assert checksums_valid(out_frame.data)
    p.assert_same_state()


def test_a_hairpin_flow_split_by_eviction_heals(pair):
    p = pair(table(services=HAIRPIN, topology=SELF_TOPOLOGY))
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    port = parsed(got.data)[TCP].sport
    for direction in (4, 1):                                   # the mapping, then the SERVICE half
        assert p.evict(direction) == 1
        if direction == 4:
            _, want = p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=40000, dport=80, flags="A")))
        else:
            _, want = p.send("from_pod", from_pod(CLIENT, NODE1, TCP(sport=8080, dport=port, flags="A")))
        p.assert_same_state()
    assert p.prog.metrics()["M_CT_RESTORED"] == 2
