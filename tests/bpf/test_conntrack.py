"""Conntrack lifetimes and the life of a flow: TCP follows SYN, established, closing per direction
(half-closed: close-wait) and closed (both FINs or a RST), UDP times out, every packet renews both
entries of its flow, a new SYN on a closed tuple gets a fresh mapping, a new connection that
reuses a closed flow's tuple is never translated by it, and garbage collection frees what expired.
BPF and oracle agree on each step, state and expiry included (Pair.assert_same_state)."""
from __future__ import annotations

from tests.bpf.packets import (CLIENT, IP, TCP, UDP, VIP, WEB1, WEB_ONLY_LOCAL, ack, from_pod, parsed, syn,
                               synack, table, to_pod, udp)

HOUR = 3600


def _open(p, sport=40000):
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=sport)))
    backend = parsed(got.data)[IP].dst
    p.send("to_pod", to_pod(backend, CLIENT, synack(dport=sport)))
    return backend


def _closing(p) -> set:
    """The (FIN original, FIN reply, RST) states of every entry."""
    return {v[8] for v in p.bpf_conntrack().values()}


def test_tcp_lifetimes_follow_the_handshake(pair):
    p = pair(table())
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    backend = parsed(got.data)[IP].dst
    p.assert_same_state()                                      # both entries: SYN lifetime
    assert all(not v[7] for v in p.bpf_conntrack().values())
    p.send("to_pod", to_pod(backend, CLIENT, synack()))
    assert all(v[7] for v in p.bpf_conntrack().values())       # reply seen: established, both entries
    p.assert_same_state()
    p.advance(23 * HOUR)                                       # established lives 24 h (kube-proxy's setting)
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, ack()))
    assert want.reason == "M_DNAT"
    p.advance(24 * HOUR + 1)
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, ack()))
    assert got.verdict == "drop" and want.reason == "DROP_CT_LOST"   # idle past 24 h: a lost flow


def test_half_closed_connection_lives_until_the_other_side_closes(pair):
    """The client sends its request and shuts its write side; the server answers much later than
    the close lifetime. The flow is half-closed (close-wait, 1 h), not closed."""
    p = pair(table())
    backend = _open(p)
    p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=40000, dport=80, flags="PA", seq=1001, ack=5001) / b"GET"))
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=40000, dport=80, flags="FA", seq=1004, ack=5001)))
    assert want.reason == "M_DNAT" and _closing(p) == {(True, False, False)}
    p.assert_same_state()
    p.send("to_pod", to_pod(backend, CLIENT, TCP(sport=8080, dport=40000, flags="A", seq=5001, ack=1005)))
    p.advance(15)                                              # the server thinks for 15 s
    got, want = p.send("to_pod", to_pod(backend, CLIENT, TCP(sport=8080, dport=40000, flags="PA", seq=5001,
                                                                ack=1005) / b"answer"))
    assert want.reason == "M_REVNAT" and parsed(got.data)[IP].src == VIP and parsed(got.data)[TCP].sport == 80
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=40000, dport=80, flags="A", seq=1005, ack=5007)))
    assert want.reason == "M_DNAT"
    p.advance(50 * 60)                                         # still within close-wait (1 h)
    got, want = p.send("to_pod", to_pod(backend, CLIENT, TCP(sport=8080, dport=40000, flags="FA", seq=5007,
                                                                ack=1005)))
    assert want.reason == "M_REVNAT" and _closing(p) == {(True, True, False)}   # closed both ways: 10 s
    p.assert_same_state()
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=40000, dport=80, flags="A", seq=1005, ack=5008)))
    assert want.reason == "M_DNAT"                            # the last ACK still goes through
    p.advance(11)
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, ack()))
    assert got.verdict == "drop" and want.reason == "DROP_CT_LOST"


def test_half_close_by_the_server_and_reset(pair):
    p = pair(table())
    backend = _open(p)
    p.send("to_pod", to_pod(backend, CLIENT, TCP(sport=8080, dport=40000, flags="FA", seq=5001, ack=1001)))
    assert _closing(p) == {(False, True, False)}
    p.advance(HOUR - 10)
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=40000, dport=80, flags="PA") / b"more"))
    assert want.reason == "M_DNAT"                            # the client may still send
    p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=40000, dport=80, flags="R")))
    assert _closing(p) == {(False, True, True)}               # reset: closed, 10 s
    p.assert_same_state()
    p.advance(11)
    assert p.collect() == (2, 2)


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
    assert len(p.bpf_conntrack()) == 2 and _closing(p) == {(False, False, False)}
    p.assert_same_state()


def test_new_syn_on_a_half_closed_tuple_stays_in_the_flow(pair):
    """Only a closed flow is reopened by a SYN (netfilter: TIME_WAIT/CLOSE); on a half-closed one
    it is a segment of the flow, to the same backend."""
    p = pair(table())
    backend = _open(p)
    p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=40000, dport=80, flags="FA")))
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    assert want.reason == "M_DNAT" and parsed(got.data)[IP].dst == backend
    p.assert_same_state()


def test_direct_connection_reusing_a_closed_flows_port_is_not_translated(pair):
    """A client closes a VIP connection (RST, as a client closing with SO_LINGER 0 does) and opens
    one straight to the backend from the same port: the backend's answers must reach it as the
    backend's, not rewritten to the VIP by the old flow's reply entry."""
    p = pair(table(services=WEB_ONLY_LOCAL))
    assert _open(p) == WEB1
    p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=40000, dport=80, flags="R", seq=1001)))
    got, want = p.send("from_pod", from_pod(CLIENT, WEB1, syn(dport=8080)))
    assert want.reason == "M_PASS" and parsed(got.data)[IP].dst == WEB1
    assert p.bpf_conntrack() == {}                            # the closed flow is forgotten
    frame = from_pod(WEB1, CLIENT, synack())                  # web-1 answers on its own veth
    got, want = p.send("from_pod", frame)
    assert want.reason == "M_PASS" and got.data == bytes(frame)
    p.assert_same_state()


def test_syn_ack_on_a_closed_flows_tuple_is_a_new_connection(pair):
    """The same, seen only from the backend's side (the client's SYN did not cross this node's
    hooks): a SYN-ACK on a closed flow's reply tuple ends that flow and passes untranslated."""
    p = pair(table(services=WEB_ONLY_LOCAL))
    _open(p)
    p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=40000, dport=80, flags="R", seq=1001)))
    frame = from_pod(WEB1, CLIENT, synack())
    got, want = p.send("from_pod", frame)
    assert want.reason == "M_PASS" and got.data == bytes(frame)
    assert p.bpf_conntrack() == {}
    # and a bare SYN is never a reply, even toward a live flow's client
    _open(p, sport=40001)
    frame = from_pod(WEB1, CLIENT, TCP(sport=8080, dport=40001, flags="S"))
    got, want = p.send("from_pod", frame)
    assert want.reason == "M_PASS" and got.data == bytes(frame)
    p.assert_same_state()


def test_syn_ack_retransmission_of_a_live_flow_is_translated(pair):
    p = pair(table(services=WEB_ONLY_LOCAL))
    _open(p)
    got, want = p.send("from_pod", from_pod(WEB1, CLIENT, synack()))    # the client's ACK was lost
    assert want.reason == "M_REVNAT" and parsed(got.data)[IP].src == VIP


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
    p = pair(table(), timeouts={"udp": 5, "syn": 2, "close_wait": 30})
    p.send("from_pod", from_pod(CLIENT, VIP, udp()))
    p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    p.advance(3)
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    assert want.reason == "M_DNAT_NEW"                            # SYN timeout 2 s
    p.advance(3)
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, udp()))
    assert want.reason == "M_DNAT_NEW"                            # UDP timeout 5 s
    _open(p, sport=40002)
    p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=40002, dport=80, flags="FA")))
    p.advance(31)
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, ack(sport=40002)))
    assert want.reason == "DROP_CT_LOST"                          # close-wait 30 s


def test_garbage_collection_frees_the_dead(pair):
    p = pair(table())
    for sport in range(41000, 41050):                             # 50 short connections, closed
        backend = _open(p, sport)
        p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=sport, dport=80, flags="FA")))
        p.send("to_pod", to_pod(backend, CLIENT, TCP(sport=8080, dport=sport, flags="FA")))
    long_lived = _open(p, 42000)                                  # and one that stays
    p.send("from_pod", from_pod(CLIENT, VIP, ack(sport=42000)))
    assert len(p.bpf_conntrack()) == 2 * 51
    p.advance(11)                                                 # past the close timeout
    assert p.collect() == (100, 100)
    assert len(p.bpf_conntrack()) == 2
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, ack(sport=42000)))
    assert want.reason == "M_DNAT" and parsed(got.data)[IP].dst == long_lived
    p.assert_same_state()


def test_a_flow_split_by_eviction_heals_on_its_next_packet(pair):
    """One entry of a live flow evicted (issue 9, defect 7): the next packet in the other
    direction writes it again (M_CT_RESTORED), so the replies after it are translated again."""
    p = pair(table(services=WEB_ONLY_LOCAL))
    _open(p)
    p.evict(2)                                              # the REPLY half
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, ack()))
    assert want.reason == "M_DNAT" and p.prog.metrics()["M_CT_RESTORED"] == 1
    got, want = p.send("from_pod", from_pod(WEB1, CLIENT, TCP(sport=8080, dport=40000, flags="PA") / b"x"))
    assert want.reason == "M_REVNAT" and parsed(got.data)[IP].src == VIP
    p.evict(1)                                              # now the SERVICE half
    p.send("from_pod", from_pod(WEB1, CLIENT, TCP(sport=8080, dport=40000, flags="A")))
    _, want = p.send("from_pod", from_pod(CLIENT, VIP, ack()))
    assert want.reason == "M_DNAT" and p.prog.metrics()["M_CT_RESTORED"] == 2
    p.assert_same_state()


def test_a_lost_flow_is_counted(pair):
    """Both halves gone: the client's next segment is a lost flow, dropped and counted."""
    p = pair(table(services=WEB_ONLY_LOCAL))
    _open(p)
    p.evict(1)
    p.evict(2)
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, ack()))
    assert got.verdict == "drop" and want.reason == "DROP_CT_LOST"
    p.assert_same_state()
