"""Fragments of service traffic (issue 9, defect 10), BPF and oracle side by side: the first
fragment of a datagram carries its ports and is translated like any packet of its flow; the later
ones, which carry no L4 header, are tied to it by (source, destination, IP id, protocol) and get
the same address translation. Reassembled, every datagram is what the flow's translation says,
with a valid checksum (its L4 checksum, in the first fragment, updated for the whole datagram)."""
from __future__ import annotations

from scapy.layers.inet import fragment
from scapy.layers.l2 import Ether

from dataplane.spec.table import ServiceTable
from tests.bpf.harness import NODE_IP
from tests.bpf.packets import CLIENT, IP, UDP, VIP, WEB2, parsed, table, to_pod
from tests.bpf.test_nodeport import EXT, SERVICES
from tests.bpf.test_updates import topology

NODE = str(NODE_IP)
POD_MAC, NODE_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:01"
BIG = b"q" * 3000


def _frames(src, dst, sport, dport, payload=BIG, ident=77, src_mac=POD_MAC, dst_mac=NODE_MAC):
    """A UDP datagram larger than the MTU, cut as a 1500-byte link would."""
    pkt = IP(src=src, dst=dst, id=ident) / UDP(sport=sport, dport=dport) / payload
    return [bytes(Ether(src=src_mac, dst=dst_mac) / f) for f in fragment(pkt, fragsize=1480)]


def _send_all(p, hook, frames):
    out = []
    for f in frames:
        got, want = p.send(hook, f)
        out.append((got, want))
    return out


def _reassemble(datas) -> IP:
    """The datagram the receiver rebuilds, checked: offsets contiguous, one IP id."""
    parts = sorted((parsed(d)[IP] for d in datas), key=lambda ip: ip.frag)
    assert len({ip.id for ip in parts}) == 1 and len({(ip.src, ip.dst) for ip in parts}) == 1
    data, at = b"", 0
    for ip in parts:
        assert ip.frag * 8 == at
        chunk = bytes(ip.payload)
        data += chunk
        at += len(chunk)
    first = parts[0]
    whole = IP(src=first.src, dst=first.dst, proto=17) / data
    return IP(bytes(whole))


def _udp_valid(ip: IP) -> bool:
    got = ip[UDP].chksum
    fresh = ip.copy()
    del fresh[UDP].chksum
    return IP(bytes(fresh))[UDP].chksum == got


def test_a_fragmented_datagram_to_a_vip_and_its_fragmented_answer(pair):
    p = pair(table())
    results = _send_all(p, "from_pod", _frames(CLIENT, VIP, 40000, 53))
    assert [w.reason for _, w in results] == ["M_DNAT_NEW", "M_DNAT", "M_DNAT"]
    sent = _reassemble([g.data for g, _ in results])
    backend = sent.dst
    assert sent.src == CLIENT and sent[UDP].dport == 5353 and bytes(sent[UDP].payload) == BIG
    assert _udp_valid(sent)
    answer = _frames(backend, CLIENT, 5353, 40000, ident=99, src_mac=NODE_MAC, dst_mac=POD_MAC)
    results = _send_all(p, "to_pod", answer)
    assert [w.reason for _, w in results] == ["M_REVNAT"] * 3
    back = _reassemble([g.data for g, _ in results])
    assert (back.src, back[UDP].sport, back.dst, back[UDP].dport) == (VIP, 53, CLIENT, 40000)
    assert _udp_valid(back)
    p.assert_same_state()


def test_fragments_through_a_node_port_are_masqueraded(pair):
    p = pair(table(SERVICES, topology(app1="other")))              # only web-2, on node2
    results = _send_all(p, "from_netdev", _frames(EXT, NODE, 45000, 30053, src_mac=NODE_MAC, dst_mac=POD_MAC))
    assert [w.reason for _, w in results] == ["M_DNAT_NEW", "M_DNAT", "M_DNAT"]
    out = _send_all(p, "to_netdev", [g.data for g, _ in results])
    assert [w.reason for _, w in out] == ["M_SNAT"] * 3
    sent = _reassemble([g.data for g, _ in out])
    assert (sent.src, sent.dst, sent[UDP].dport) == (NODE, WEB2, 5353) and _udp_valid(sent)
    port = sent[UDP].sport
    answer = _frames(WEB2, NODE, 5353, port, ident=5, src_mac=NODE_MAC, dst_mac=POD_MAC)
    back = _send_all(p, "from_netdev", answer)
    assert [w.reason for _, w in back] == ["M_UNSNAT"] * 3
    leaving = _send_all(p, "to_netdev", [g.data for g, _ in back])
    assert [w.reason for _, w in leaving] == ["M_REVNAT"] * 3
    reply = _reassemble([g.data for g, _ in leaving])
    assert (reply.src, reply[UDP].sport, reply.dst, reply[UDP].dport) == (NODE, 30053, EXT, 45000)
    assert bytes(reply[UDP].payload) == BIG and _udp_valid(reply)
    p.assert_same_state()


def test_a_pods_fragmented_datagram_is_masqueraded_whole(pair):
    p = pair(ServiceTable())
    out = _send_all(p, "to_netdev", _frames(CLIENT, "10.128.1.1", 40000, 53))
    assert [w.reason for _, w in out] == ["M_SNAT_NEW", "M_SNAT", "M_SNAT"]
    sent = _reassemble([g.data for g, _ in out])
    assert sent.src == NODE and _udp_valid(sent)
    p.assert_same_state()


def test_fragments_of_traffic_that_needs_no_translation_pass_untouched(pair):
    p = pair(table())
    frames = _frames(CLIENT, WEB2, 40000, 8080)
    for got, want in _send_all(p, "from_pod", frames):
        assert want.reason == "M_PASS"
    assert [g.data for g, _ in _send_all(p, "from_pod", frames)] == frames


def test_a_udp_datagram_without_checksum_keeps_none(pair):
    p = pair(table())
    pkt = IP(src=CLIENT, dst=VIP, id=3) / UDP(sport=40001, dport=53, chksum=0) / BIG
    frames = [bytes(Ether(src=POD_MAC, dst=NODE_MAC) / f) for f in fragment(pkt, fragsize=1480)]
    results = _send_all(p, "from_pod", frames)
    sent = _reassemble([g.data for g, _ in results])
    assert sent[UDP].chksum == 0 and sent[UDP].dport == 5353
    p.assert_same_state()


def test_two_datagrams_in_flight_are_kept_apart(pair):
    """Interleaved fragments of two datagrams of two flows, told apart by IP id."""
    p = pair(table())
    a = _frames(CLIENT, VIP, 40002, 53, ident=1000)
    b = _frames(CLIENT, VIP, 40003, 53, ident=1001, payload=b"z" * 3000)
    out_a, out_b = [], []
    for fa, fb in zip(a, b):
        out_a.append(p.send("from_pod", fa)[0].data)
        out_b.append(p.send("from_pod", fb)[0].data)
    da, db = _reassemble(out_a), _reassemble(out_b)
    assert bytes(da[UDP].payload) == BIG and bytes(db[UDP].payload) == b"z" * 3000
    assert _udp_valid(da) and _udp_valid(db)
    p.assert_same_state()
