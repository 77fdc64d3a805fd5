"""Egress masquerade on the node uplink (issue 4), BPF and oracle side by side: ip-masq-agent's
choice of what to masquerade, the port allocation (keep the pod's port when free, else a seeded
random one, bounded tries, exhaustion dropped and counted), replies and ICMP errors back to the
pod."""
from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from dataplane.contract.render import NodeConfig
from dataplane.spec.table import ServiceTable
from tests.bpf.harness import NODE_IP
from tests.bpf.packets import (CLIENT, ICMP, IP, TCP, UDP, UDPerror, IPerror, WEB2, checksums_valid,
                               from_pod, parsed, syn, synack, to_pod, udp)

OUT = "10.128.1.1"
NODE = str(NODE_IP)


def nodeconfig(**kw):
    base = dict(node_ip=NODE_IP, cluster_cidr=IPv4Network("10.0.0.0/16"), masquerade=True,
                non_masquerade=(IPv4Network("10.0.0.0/16"),))
    base.update(kw)
    return NodeConfig(**base)


NAT_LO, NAT_HI = 61000, 65535      # the default node-IP port range


def test_pod_to_outside_leaves_with_the_node_ip_and_replies_return(pair):
    p = pair(ServiceTable())
    got, want = p.send("to_netdev", from_pod(CLIENT, OUT, syn(sport=40000, dport=8080)))
    out = parsed(got.data)
    port = out[TCP].sport
    assert want.reason == "M_SNAT_NEW" and out[IP].src == NODE and NAT_LO <= port <= NAT_HI
    assert out[IP].dst == OUT and checksums_valid(got.data)
    assert p.prog.metrics()["M_SNAT_PORT_MOVED"] == 0          # 40000 was never a candidate
    back, want = p.send("from_netdev", to_pod(OUT, NODE, synack(sport=8080, dport=port)))
    out = parsed(back.data)
    assert want.reason == "M_UNSNAT" and (out[IP].dst, out[TCP].dport) == (CLIENT, 40000)
    assert checksums_valid(back.data)
    again, want = p.send("to_netdev", from_pod(CLIENT, OUT, TCP(sport=40000, dport=8080, flags="A")))
    assert want.reason == "M_SNAT" and parsed(again.data)[IP].src == NODE
    p.assert_same_state()


@pytest.mark.parametrize("src,dst,config", [
    (CLIENT, WEB2, {}),                                           # in the cluster: never
    (NODE, OUT, {}),                                              # not from a pod
    (CLIENT, "169.254.169.254", {}),                              # link-local, exempt by default
    (CLIENT, OUT, {"non_masquerade": (IPv4Network("10.0.0.0/16"), IPv4Network("10.128.0.0/16"))}),
    (CLIENT, OUT, {"masquerade": False}),
], ids=["in-cluster", "node's own", "link-local", "non-masquerade CIDR", "masquerade off"])
def test_what_is_not_masqueraded_passes_untouched(pair, src, dst, config):
    p = pair(ServiceTable(), config=nodeconfig(**config))
    frame = from_pod(src, dst, udp(dport=8080))
    got, want = p.send("to_netdev", frame)
    assert got.verdict == "pass" and want.reason == "M_PASS" and got.data == bytes(frame)


def test_link_local_masqueraded_when_configured(pair):
    p = pair(ServiceTable(), config=nodeconfig(masq_link_local=True))
    got, want = p.send("to_netdev", from_pod(CLIENT, "169.254.169.254", udp(dport=80)))
    assert want.reason == "M_SNAT_NEW" and parsed(got.data)[IP].src == NODE


def test_port_in_range_is_kept_and_a_collision_moves_one_flow(pair):
    p = pair(ServiceTable())
    a, _ = p.send("to_netdev", from_pod(CLIENT, OUT, udp(sport=62000, dport=53)))
    b, want = p.send("to_netdev", from_pod("10.0.1.3", OUT, udp(sport=62000, dport=53)))
    pa, pb = parsed(a.data)[UDP].sport, parsed(b.data)[UDP].sport
    assert pa == 62000 and pb != 62000 and NAT_LO <= pb <= NAT_HI and want.reason == "M_SNAT_NEW"
    assert p.prog.metrics()["M_SNAT_PORT_MOVED"] == 1
    for port, pod in ((pa, CLIENT), (pb, "10.0.1.3")):
        back, _ = p.send("from_netdev", to_pod(OUT, NODE, UDP(sport=53, dport=port) / b"a"))
        assert (parsed(back.data)[IP].dst, parsed(back.data)[UDP].dport) == (pod, 62000)
    p.assert_same_state()


@pytest.mark.parametrize("sport", [5000, 40000, 60999], ids=["low", "node's ephemeral", "range edge - 1"])
def test_port_outside_the_range_is_never_kept(pair, sport):
    """The node-IP port comes from the range, whatever the pod's port (issue 9, defect 9)."""
    p = pair(ServiceTable())
    got, want = p.send("to_netdev", from_pod(CLIENT, OUT, udp(sport=sport, dport=53)))
    assert want.reason == "M_SNAT_NEW" and NAT_LO <= parsed(got.data)[UDP].sport <= NAT_HI
    p.assert_same_state()


@pytest.mark.parametrize("remote", [(OUT, 53), None], ids=["connection", "listener"])
def test_port_held_by_a_node_socket_is_not_taken(pair, remote):
    """A node process holding node IP:62000 with the remote (or listening on it): the flow's own
    port 62000 is in range and no flow holds it, but the node's socket does (issue 9, defect 3)."""
    p = pair(ServiceTable())
    p.open_socket(17, 62000, remote=remote)
    got, want = p.send("to_netdev", from_pod(CLIENT, OUT, udp(sport=62000, dport=53)))
    port = parsed(got.data)[UDP].sport
    assert want.reason == "M_SNAT_NEW" and port != 62000 and NAT_LO <= port <= NAT_HI
    assert p.prog.metrics()["M_SNAT_PORT_MOVED"] == 1
    p.close_sockets()
    got, want = p.send("to_netdev", from_pod(CLIENT, OUT, udp(sport=62000, dport=54)))
    assert parsed(got.data)[UDP].sport == 62000                 # free again: kept
    p.assert_same_state()


def test_expired_answer_marker_counts_as_absent(pair):
    """A UDP datagram that came in makes the pod's answers replies, for the UDP lifetime only:
    afterwards the pod's datagram on that tuple starts a masqueraded flow (issue 9, defect 9)."""
    p = pair(ServiceTable())
    p.send("from_netdev", to_pod(OUT, CLIENT, udp(sport=50001, dport=8080)))
    answer = from_pod(CLIENT, OUT, UDP(sport=8080, dport=50001) / b"web")
    _, want = p.send("to_netdev", answer)
    assert want.reason == "M_PASS"
    assert p.bpf_conntrack() == {}                               # markers live outside conntrack
    p.advance(61)
    got, want = p.send("to_netdev", answer)
    assert want.reason == "M_SNAT_NEW" and parsed(got.data)[IP].src == NODE
    p.assert_same_state()


def test_same_new_udp_tuple_twice_shares_one_mapping(pair):
    """glibc sends A and AAAA queries at once from one socket: both must get through."""
    p = pair(ServiceTable())
    first, w1 = p.send("to_netdev", from_pod(CLIENT, OUT, udp(sport=5353, dport=53, payload=b"A")))
    second, w2 = p.send("to_netdev", from_pod(CLIENT, OUT, udp(sport=5353, dport=53, payload=b"AAAA")))
    assert (w1.reason, w2.reason) == ("M_SNAT_NEW", "M_SNAT")
    assert parsed(first.data)[UDP].sport == parsed(second.data)[UDP].sport


def test_icmp_error_about_a_masqueraded_flow_reaches_the_pod(pair):
    p = pair(ServiceTable())
    sent, _ = p.send("to_netdev", from_pod(CLIENT, OUT, udp(sport=40000, dport=9)))
    err = to_pod(OUT, NODE, ICMP(type=3, code=3) / bytes(parsed(sent.data)[IP])[:28])
    got, want = p.send("from_netdev", err)
    out = parsed(got.data)
    assert want.reason == "M_ICMP_REVNAT" and out[IP].dst == CLIENT
    assert out[IPerror].src == CLIENT and out[UDPerror].sport == 40000
    assert bytes(out[IPerror])[:28] == bytes(from_pod(CLIENT, OUT, udp(sport=40000, dport=9))[IP])[:28]
    assert checksums_valid(got.data)


def test_new_syn_on_a_closed_tuple_gets_a_fresh_mapping(pair):
    p = pair(ServiceTable())
    got, _ = p.send("to_netdev", from_pod(CLIENT, OUT, syn(sport=40000, dport=8080)))
    port = parsed(got.data)[TCP].sport
    p.send("from_netdev", to_pod(OUT, NODE, TCP(sport=8080, dport=port, flags="R")))
    _, want = p.send("to_netdev", from_pod(CLIENT, OUT, syn(sport=40000, dport=8080)))
    assert want.reason == "M_SNAT_NEW"
    p.assert_same_state()


def test_port_allocation_in_a_small_range(pair):
    """100 ports for one destination: no two live flows share a mapping, under 1% of allocations
    fail until 70% full, and once full every new flow is dropped and counted, never mapped onto a
    port in use."""
    lo, hi = 40000, 40099
    p = pair(ServiceTable(), config=nodeconfig(snat_range=(lo, hi)), seed=99)
    rng = random.Random(5)
    pods = [f"10.0.{i // 250 + 1}.{i % 250 + 2}" for i in range(130)]
    ports, failures_below_70 = set(), 0
    attempts_below_70 = 0
    for pod in pods:
        fill = len(ports) / (hi - lo + 1)
        got, want = p.send("to_netdev", from_pod(pod, OUT, udp(sport=rng.randint(lo, hi), dport=53)))
        if fill < 0.7:
            attempts_below_70 += 1
            failures_below_70 += want.reason != "M_SNAT_NEW"
        if want.reason == "M_SNAT_NEW":
            port = parsed(got.data)[UDP].sport
            assert lo <= port <= hi or port == parsed(bytes(from_pod(pod, OUT, udp())))[UDP].sport
            assert port not in ports, f"port {port} mapped twice"
            ports.add(port)
        else:
            assert got.verdict == "drop" and want.reason == "DROP_SNAT_EXHAUSTED"
    assert attempts_below_70 >= 70 and failures_below_70 / attempts_below_70 < 0.01
    assert len(ports) <= hi - lo + 1
    metrics = p.prog.metrics()
    assert metrics["DROP_SNAT_EXHAUSTED"] == len(pods) - len(ports) > 0
    inbound = [k for k in p.bpf_conntrack() if k.dir == 4]
    assert len(inbound) == len({(k.saddr, k.sport, k.daddr, k.dport) for k in inbound}) == len(ports)
    p.assert_same_state()


def test_replies_of_connections_from_outside_are_not_masqueraded(pair):
    """Only a connection's first packet decides: a pod answering a TCP connection or a UDP
    datagram that came in keeps its address (netfilter's nat table sees only NEW)."""
    p = pair(ServiceTable())
    reply = from_pod(CLIENT, OUT, synack(sport=8080, dport=50000))
    got, want = p.send("to_netdev", reply)
    assert want.reason == "M_PASS" and got.data == bytes(reply)
    _, want = p.send("from_netdev", to_pod(OUT, CLIENT, udp(sport=50001, dport=8080)))
    assert want.reason == "M_PASS"
    answer = from_pod(CLIENT, OUT, UDP(sport=8080, dport=50001) / b"web")
    got, want = p.send("to_netdev", answer)
    assert want.reason == "M_PASS" and got.data == bytes(answer)
    # the pod's own new UDP flow to the same host is masqueraded
    _, want = p.send("to_netdev", from_pod(CLIENT, OUT, udp(sport=40000, dport=53)))
    assert want.reason == "M_SNAT_NEW"
    p.assert_same_state()


def test_pod_error_about_a_reply_leaves_as_the_node(pair):
    """The pod's socket is gone when the remote's reply arrives: its port unreachable quotes
    remote -> pod and leaves the node quoting remote -> node IP:port, from the node."""
    p = pair(ServiceTable())
    sent, _ = p.send("to_netdev", from_pod(CLIENT, OUT, udp(sport=40000, dport=53)))
    port = parsed(sent.data)[UDP].sport
    back, _ = p.send("from_netdev", to_pod(OUT, NODE, UDP(sport=53, dport=port) / b"late"))
    err = from_pod(CLIENT, OUT, ICMP(type=3, code=3) / bytes(parsed(back.data)[IP])[:28])
    got, want = p.send("from_pod", err)
    assert want.reason == "M_ICMP_REVNAT" and parsed(got.data)[IPerror].dst == NODE
    leaving, want = p.send("to_netdev", got.data)
    out = parsed(leaving.data)
    assert want.reason == "M_ICMP_REVNAT" and out[IP].src == NODE and out[IP].dst == OUT
    assert (out[IPerror].src, out[UDPerror].sport, out[IPerror].dst, out[UDPerror].dport) == (OUT, 53, NODE, port)
    assert checksums_valid(leaving.data)
    p.assert_same_state()


def test_a_masquerade_mapping_split_by_eviction_heals(pair):
    p = pair(ServiceTable())
    sent, _ = p.send("to_netdev", from_pod(CLIENT, OUT, udp(sport=40000, dport=53)))
    port = parsed(sent.data)[UDP].sport
    assert p.evict(4) == 1
    again, want = p.send("to_netdev", from_pod(CLIENT, OUT, udp(sport=40000, dport=53)))
    assert want.reason == "M_SNAT" and parsed(again.data)[UDP].sport == port
    back, want = p.send("from_netdev", to_pod(OUT, NODE, UDP(sport=53, dport=port) / b"a"))
    assert want.reason == "M_UNSNAT" and parsed(back.data)[IP].dst == CLIENT
    assert p.prog.metrics()["M_CT_RESTORED"] == 1
    p.assert_same_state()
