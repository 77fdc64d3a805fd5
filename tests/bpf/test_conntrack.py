"""Conntrack lifetimes (issue 4): TCP follows SYN, established and FIN/RST with their own
timeouts, UDP times out, every packet renews both entries of its flow, a new SYN on a closed
tuple gets a fresh mapping, and garbage collection frees what expired. BPF and model agree on
each step, state and expiry included (Pair.assert_same_state)."""
from __future__ import annotations

from tests.bpf.packets import CLIENT, IP, TCP, VIP, ack, from_pod, parsed, syn, synack, table, to_pod, udp, UDP


def _open(p, sport=40000):
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=sport)))
    backend = parsed(got.data)[IP].dst
    p.send("to_pod", to_pod(backend, CLIENT, synack(dport=sport)))
    return backend


def test_tcp_lifetimes_follow_the_handshake_and_the_close(pair):
    p = pair(table())
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    backend = parsed(got.data)[IP].dst
    p.assert_same_state()                                      # both entries: SYN lifetime
    assert all(not v[7] for v in p.bpf_conntrack().values())
    p.send("to_pod", to_pod(backend, CLIENT, synack()))
    assert all(v[7] for v in p.bpf_conntrack().values())       # reply seen: established, both entries
    p.assert_same_state()
    p.advance(3600)                                            # an hour idle: established lives 6 h
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, ack()))
    assert want.reason == "M_DNAT"
    p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=40000, dport=80, flags="FA", seq=1001, ack=5001)))
    assert all(v[8] for v in p.bpf_conntrack().values())       # closing: 10 s
    p.assert_same_state()
    p.advance(11)
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, ack()))
    assert got.verdict == "drop" and want.reason == "DROP_CT_INVALID"   # the flow is gone


def test_unanswered_syn_expires_after_the_syn_timeout(pair):
    p = pair(table())
    p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    p.advance(59)
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, syn()))    # a retransmission, same flow
    assert want.reason == "M_DNAT"
    p.advance(61)
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    assert want.reason == "M_DNAT_NEW"


def test_new_syn_on_a_closed_tuple_gets_a_fresh_mapping(pair):
    p = pair(table())
    _open(p)
    p.send("to_pod", to_pod(parsed(p.send("from_pod", from_pod(CLIENT, VIP, ack()))[0].data)[IP].dst,
                            CLIENT, TCP(sport=8080, dport=40000, flags="R")))
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, syn()))    # within the close timeout
    assert want.reason == "M_DNAT_NEW" and any("fresh flow" in w for w in want.why)
    assert len(p.bpf_conntrack()) == 2 and not any(v[8] for v in p.bpf_conntrack().values())
    p.assert_same_state()


def test_udp_entries_renew_each_other(pair):
    p = pair(table())
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, udp()))
    backend = parsed(got.data)[IP].dst
    p.advance(50)
    p.send("to_pod", to_pod(backend, CLIENT, UDP(sport=5353, dport=40000) / b"x"))   # the reply renews both
    p.advance(50)
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, udp()))
    assert want.reason == "M_DNAT"
    p.assert_same_state()


def test_timeouts_are_configurable(pair):
    p = pair(table(), timeouts={"udp": 5, "syn": 2})
    p.send("from_pod", from_pod(CLIENT, VIP, udp()))
    p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    p.advance(3)
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    assert want.reason == "M_DNAT_NEW"                            # SYN timeout 2 s
    p.advance(3)
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, udp()))
    assert want.reason == "M_DNAT_NEW"                            # UDP timeout 5 s


def test_garbage_collection_frees_the_dead(pair):
    p = pair(table())
    for sport in range(41000, 41050):                             # 50 short connections, closed
        _open(p, sport)
        p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=sport, dport=80, flags="FA")))
    long_lived = _open(p, 42000)                                  # and one that stays
    p.send("from_pod", from_pod(CLIENT, VIP, ack(sport=42000)))
    assert len(p.bpf_conntrack()) == 2 * 51
    p.advance(11)                                                 # past the close timeout
    assert p.collect() == (100, 100)
    assert len(p.bpf_conntrack()) == 2
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, ack(sport=42000)))
    assert want.reason == "M_DNAT" and parsed(got.data)[IP].dst == long_lived
    p.assert_same_state()
