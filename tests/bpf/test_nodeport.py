"""NodePort, LoadBalancer IPs (issue 4), BPF and oracle side by side: a client outside the cluster
reaches node IP:nodePort; destinations are rewritten on ingress, sources on egress. With
externalTrafficPolicy Cluster the backend sees the node's IP; with Local it sees the client's."""
from __future__ import annotations

from dataplane.spec.table import ServiceTable
from tests.bpf.harness import NODE_IP
from tests.bpf.packets import (ICMP, IP, TCP, UDP, WEB1, WEB2, checksums_valid, from_pod, parsed, syn,
                               synack, table, to_pod, udp)
from tests.bpf.test_masquerade import nodeconfig
from tests.bpf.test_updates import ITP_LOCAL, topology

CLIENT_A, CLIENT_B = "10.0.1.2", "10.0.1.3"

EXT = "10.128.1.1"
NODE = str(NODE_IP)
LB = "10.128.2.10"
SERVICES = """\
services:
  - name: np
    type: NodePort
    clusterIP: 10.96.0.10
    selector: {app: web}
    ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}, {name: dns, port: 53, targetPort: 5353, protocol: UDP, nodePort: 30053}]
  - name: np-local
    type: NodePort
    clusterIP: 10.96.0.11
    selector: {app: web}
    externalTrafficPolicy: Local
    ports: [{port: 80, targetPort: 8080, nodePort: 30081}]
  - name: lb
    type: LoadBalancer
    clusterIP: 10.96.0.12
    selector: {app: web}
    loadBalancerIP: 10.128.2.10
    ports: [{port: 80, targetPort: 8080, nodePort: 30082}]
"""


def outside(dst, l4):
    """A frame arriving on the node's uplink from the network."""
    return to_pod(EXT, dst, l4)


def test_etp_cluster_remote_backend_round_trip(pair):
    p = pair(table(SERVICES, topology(app1="other")), seed=3)        # only web-2, on node2
    got, want = p.send("from_netdev", outside(NODE, syn(sport=45000, dport=30080)))
    out = parsed(got.data)
    assert want.reason == "M_DNAT_NEW" and (out[IP].dst, out[TCP].dport) == (WEB2, 8080)
    assert out[IP].src == EXT                                      # the source is rewritten on egress
    fwd, want = p.send("to_netdev", got.data)                       # routed back out the uplink
    out = parsed(fwd.data)
    assert want.reason == "M_SNAT" and out[IP].src == NODE and out[IP].dst == WEB2
    port = out[TCP].sport
    back, want = p.send("from_netdev", to_pod(WEB2, NODE, synack(sport=8080, dport=port)))
    out = parsed(back.data)
    assert want.reason == "M_UNSNAT" and (out[IP].src, out[IP].dst, out[TCP].dport) == (WEB2, EXT, 45000)
    reply, want = p.send("to_netdev", back.data)
    out = parsed(reply.data)
    assert want.reason == "M_REVNAT" and (out[IP].src, out[TCP].sport) == (NODE, 30080)
    assert out[IP].dst == EXT and checksums_valid(reply.data)
    p.assert_same_state()


def test_etp_cluster_local_backend_is_masqueraded_on_the_pod_veth(pair):
    p = pair(table(SERVICES, topology(app2="other")))                # only web-1, on this node
    got, _ = p.send("from_netdev", outside(NODE, syn(sport=45000, dport=30080)))
    assert parsed(got.data)[IP].dst == WEB1
    to_backend, want = p.send("to_pod", got.data)
    assert want.reason == "M_SNAT" and parsed(to_backend.data)[IP].src == NODE
    port = parsed(to_backend.data)[TCP].sport
    back, want = p.send("from_pod", from_pod(WEB1, NODE, synack(sport=8080, dport=port)))
    assert want.reason == "M_UNSNAT" and parsed(back.data)[IP].dst == EXT
    reply, want = p.send("to_netdev", back.data)
    assert want.reason == "M_REVNAT" and parsed(reply.data)[IP].src == NODE
    p.assert_same_state()


def test_etp_local_keeps_the_client_ip(pair):
    p = pair(table(SERVICES, topology()))
    got, want = p.send("from_netdev", outside(NODE, syn(sport=45001, dport=30081)))
    out = parsed(got.data)
    assert want.reason == "M_DNAT_NEW" and out[IP].dst == WEB1 and out[IP].src == EXT   # node-local only
    to_backend, want = p.send("to_pod", got.data)
    assert want.reason == "M_PASS" and parsed(to_backend.data)[IP].src == EXT           # no SNAT
    # the reply's source is the node's own address: rewritten on egress, never on the pod's ingress
    back, want = p.send("from_pod", from_pod(WEB1, EXT, synack(sport=8080, dport=45001)))
    assert want.reason == "M_PASS" and parsed(back.data)[IP].src == WEB1
    reply, want = p.send("to_netdev", back.data)
    assert want.reason == "M_REVNAT" and (parsed(reply.data)[IP].src, parsed(reply.data)[TCP].sport) == (NODE, 30081)
    p.assert_same_state()


def test_etp_local_without_a_local_endpoint_drops(pair):
    p = pair(table(SERVICES, topology(app1="other")))                # web-2 is on node2 only
    got, want = p.send("from_netdev", outside(NODE, syn(dport=30081)))
    assert got.verdict == "drop" and want.reason == "DROP_NO_LOCAL_ENDPOINT"


def test_nodeport_without_endpoints_rejects_from_the_node(pair):
    p = pair(table(SERVICES, topology(app1="other", app2="other")))
    got, want = p.send("from_netdev", outside(NODE, syn(dport=30080)))
    out = parsed(got.data)
    assert got.verdict == "redirect" and want.reason == "REJECT_NO_ENDPOINTS"
    assert out[IP].src == NODE and out[IP].dst == EXT and out[ICMP].type == 3 and checksums_valid(got.data)


def test_nodeport_udp(pair):
    p = pair(table(SERVICES, topology(app1="other")))
    got, want = p.send("from_netdev", outside(NODE, udp(sport=45002, dport=30053)))
    assert want.reason == "M_DNAT_NEW" and parsed(got.data)[UDP].dport == 5353
    fwd, _ = p.send("to_netdev", got.data)
    port = parsed(fwd.data)[UDP].sport
    back, _ = p.send("from_netdev", to_pod(WEB2, NODE, UDP(sport=5353, dport=port) / b"x"))
    reply, want = p.send("to_netdev", back.data)
    assert want.reason == "M_REVNAT" and (parsed(reply.data)[IP].src, parsed(reply.data)[UDP].sport) == (NODE, 30053)
    p.assert_same_state()


def test_load_balancer_ip_and_a_port_it_does_not_serve(pair):
    p = pair(table(SERVICES, topology()))
    got, want = p.send("from_netdev", outside(LB, syn(dport=80)))
    assert want.reason == "M_DNAT_NEW" and parsed(got.data)[IP].dst in {WEB1, WEB2}
    # kube-proxy intercepts no other port of a load-balancer IP (nftables rejects only on cluster IPs)
    frame = outside(LB, syn(dport=81))
    got, want = p.send("from_netdev", frame)
    assert want.reason == "M_PASS" and got.data == bytes(frame)


def test_other_traffic_on_the_uplink_passes(pair):
    p = pair(table(SERVICES, topology()))
    for frame in (outside(NODE, syn(dport=22)), outside(WEB1, syn(dport=8080)), outside(NODE, ICMP(type=8))):
        got, want = p.send("from_netdev", frame)
        assert want.reason == "M_PASS" and got.data == bytes(frame)


RANGED = SERVICES.replace("    loadBalancerIP: 10.128.2.10\n",
                          "    loadBalancerIP: 10.128.2.10\n    loadBalancerSourceRanges: [10.128.1.0/28]\n")


def test_load_balancer_source_ranges(pair):
    p = pair(table(RANGED, topology()))
    got, want = p.send("from_netdev", outside(LB, syn(dport=80)))                      # 10.128.1.1: in
    assert want.reason == "M_DNAT_NEW"
    stranger = to_pod("10.128.1.77", LB, syn(dport=80))                               # outside /28
    got, want = p.send("from_netdev", stranger)
    assert got.verdict == "drop" and want.reason == "DROP_SOURCE_RANGE" and got.data == bytes(stranger)
    # the node port of the same service is not firewalled, as with kube-proxy
    _, want = p.send("from_netdev", to_pod("10.128.1.77", NODE, syn(dport=30082)))
    assert want.reason == "M_DNAT_NEW"


def test_a_service_without_endpoints_rejects_every_client_source_ranges_or_not(pair):
    """kube-proxy writes the source-range firewall only for a service with endpoints
    (usesFWChain := hasEndpoints && ...): without any, a client outside the ranges is rejected
    like any other (found by fuzz scenarios, seed 2000, index 44)."""
    p = pair(table(RANGED, topology(app1="none", app2="none")))
    for client in ("10.128.1.77", "10.128.1.1"):                                       # outside, inside
        got, want = p.send("from_netdev", to_pod(client, LB, syn(dport=80)))
        assert got.verdict == "redirect" and want.reason == "REJECT_NO_ENDPOINTS"


def test_pod_to_its_own_nodes_node_port(pair):
    """externalTrafficPolicy Cluster: a pod's flow is masqueraded to the node as kube-proxy's
    KUBE-EXT chain marks it (on the backend's veth egress), and the reply's new source, this
    node's address, is written on the client's veth egress, never on an ingress hook (where the
    kernel would drop it as a martian)."""
    from tests.bpf.packets import CLIENT
    p = pair(table(SERVICES, topology(app2="other")))                # web-1, local
    got, want = p.send("from_pod", from_pod(CLIENT, NODE, syn(sport=46000, dport=30080)))
    out = parsed(got.data)
    assert want.reason == "M_DNAT_NEW" and (out[IP].src, out[IP].dst) == (CLIENT, WEB1)
    to_backend, want = p.send("to_pod", got.data)                   # web-1's veth, egress
    out = parsed(to_backend.data)
    assert want.reason == "M_SNAT" and out[IP].src == NODE and out[IP].dst == WEB1
    port = out[TCP].sport
    back, want = p.send("from_pod", from_pod(WEB1, NODE, synack(sport=8080, dport=port)))
    out = parsed(back.data)
    assert want.reason == "M_UNSNAT" and (out[IP].dst, out[TCP].dport, out[IP].src) == (CLIENT, 46000, WEB1)
    reply, want = p.send("to_pod", back.data)                       # the client's veth, egress
    out = parsed(reply.data)
    assert want.reason == "M_REVNAT" and (out[IP].src, out[TCP].sport, out[IP].dst) == (NODE, 30080, CLIENT)
    assert checksums_valid(reply.data)
    p.assert_same_state()


def test_pod_to_an_etp_local_node_port_uses_every_endpoint(pair):
    """kube-proxy's "pod traffic for ... external destinations": pods are not held to the node's
    endpoints (nor masqueraded); clients from outside still are."""
    from tests.bpf.packets import CLIENT
    p = pair(table(SERVICES, topology(app1="other")))                # only web-2, on node2
    got, want = p.send("from_netdev", outside(NODE, syn(dport=30081)))
    assert want.reason == "DROP_NO_LOCAL_ENDPOINT"
    got, want = p.send("from_pod", from_pod(CLIENT, NODE, syn(sport=46001, dport=30081)))
    out = parsed(got.data)
    assert want.reason == "M_DNAT_NEW" and (out[IP].src, out[IP].dst, out[TCP].dport) == (CLIENT, WEB2, 8080)
    fwd, want = p.send("to_netdev", got.data)
    assert want.reason == "M_PASS" and parsed(fwd.data)[IP].src == CLIENT            # not masqueraded
    reply, want = p.send("to_pod", to_pod(WEB2, CLIENT, synack(sport=8080, dport=46001)))
    out = parsed(reply.data)
    assert want.reason == "M_REVNAT" and (out[IP].src, out[TCP].sport) == (NODE, 30081)
    p.assert_same_state()


def test_load_balancer_source_ranges_hold_for_pods_too(pair):
    """kube-proxy's KUBE-FW chain (nftables: firewall-check) sees pod traffic as well."""
    from tests.bpf.packets import CLIENT
    p = pair(table(RANGED, topology()))
    got, want = p.send("from_pod", from_pod(CLIENT, LB, syn(sport=46002, dport=80)))    # 10.0.1.2: out
    assert got.verdict == "drop" and want.reason == "DROP_SOURCE_RANGE"
    got, want = p.send("from_pod", from_pod(CLIENT, NODE, syn(sport=46003, dport=30082)))
    assert want.reason == "M_DNAT_NEW"                                               # its node port: open
    p.assert_same_state()

# -- ICMP errors about external-frontend flows (issue 9, defect 4) ---------------------------------

ROUTER = "10.240.0.254"


def _quote(frame) -> bytes:
    """What an ICMP error quotes of a frame: its IPv4 header and the first 8 bytes after it."""
    return bytes(parsed(bytes(frame))[IP])[:28]


def _inner(data):
    from tests.bpf.packets import IPerror
    out = parsed(data)
    l4 = out[IPerror].payload
    return out[IPerror].src, l4.sport, out[IPerror].dst, l4.dport


def test_port_unreachable_from_a_remote_backend_reaches_the_client(pair):
    """UDP through a node port to a backend on another node that has nothing on the port: its port
    unreachable (quoting node IP:port -> backend) comes back through the node and reaches the
    client quoting what the client sent (client -> node IP:nodePort), from the node."""
    p = pair(table(SERVICES, topology(app1="other")))                # only web-2, on node2
    got, _ = p.send("from_netdev", outside(NODE, udp(sport=45002, dport=30053)))
    fwd, _ = p.send("to_netdev", got.data)                           # masqueraded on its way out
    err = to_pod(WEB2, NODE, ICMP(type=3, code=3) / _quote(fwd.data))
    back, want = p.send("from_netdev", err)
    out = parsed(back.data)
    assert want.reason == "M_ICMP_REVNAT" and out[IP].dst == EXT
    assert _inner(back.data) == (EXT, 45002, NODE, 30053)
    assert out[IP].src == WEB2                                       # the node's address: only on egress
    leaving, want = p.send("to_netdev", back.data)
    out = parsed(leaving.data)
    assert want.reason == "M_ICMP_REVNAT" and out[IP].src == NODE and out[IP].dst == EXT
    assert bytes(out[ICMP].payload)[:28] == _quote(outside(NODE, udp(sport=45002, dport=30053)))
    assert checksums_valid(leaving.data)
    p.assert_same_state()


def test_port_unreachable_from_a_local_backend_through_a_node_port(pair):
    p = pair(table(SERVICES, topology(app2="other")))                # only web-1, on this node
    got, _ = p.send("from_netdev", outside(NODE, udp(sport=45003, dport=30053)))
    to_backend, _ = p.send("to_pod", got.data)
    err = from_pod(WEB1, NODE, ICMP(type=3, code=3) / _quote(to_backend.data))
    back, want = p.send("from_pod", err)
    assert want.reason == "M_ICMP_REVNAT" and parsed(back.data)[IP].dst == EXT
    assert _inner(back.data) == (EXT, 45003, NODE, 30053)
    leaving, want = p.send("to_netdev", back.data)
    assert parsed(leaving.data)[IP].src == NODE and checksums_valid(leaving.data)
    p.assert_same_state()


def test_fragmentation_needed_for_a_backends_reply_reaches_the_backend(pair):
    """A router between the node and the client cannot forward the backend's (translated) reply
    without fragmenting: its fragmentation-needed quotes node IP:nodePort -> client and arrives
    at the node; it must reach the backend quoting what the backend sent (backend -> node IP:port
    of the masquerade), or path MTU discovery never learns and large answers stall."""
    p = pair(table(SERVICES, topology(app1="other")))
    got, _ = p.send("from_netdev", outside(NODE, syn(sport=45004, dport=30080)))
    fwd, _ = p.send("to_netdev", got.data)
    port = parsed(fwd.data)[TCP].sport
    answer = to_pod(WEB2, NODE, TCP(sport=8080, dport=port, flags="PA", seq=5001, ack=1001) / (b"x" * 1400))
    back, _ = p.send("from_netdev", answer)
    reply, _ = p.send("to_netdev", back.data)                       # node IP:30080 -> client
    err = to_pod(ROUTER, NODE, ICMP(type=3, code=4, nexthopmtu=1200) / _quote(reply.data))
    got, want = p.send("from_netdev", err)
    out = parsed(got.data)
    assert want.reason == "M_ICMP_REVNAT" and out[IP].dst == WEB2 and out[IP].src == ROUTER
    assert _inner(got.data) == (WEB2, 8080, NODE, port)
    assert out[ICMP].nexthopmtu == 1200 and checksums_valid(got.data)
    p.assert_same_state()


def test_fragmentation_needed_for_an_etp_local_reply(pair):
    p = pair(table(SERVICES, topology()))
    p.send("from_netdev", outside(NODE, syn(sport=45005, dport=30081)))
    back, _ = p.send("from_pod", from_pod(WEB1, EXT, TCP(sport=8080, dport=45005, flags="PA") / (b"x" * 1400)))
    reply, _ = p.send("to_netdev", back.data)
    err = to_pod(ROUTER, NODE, ICMP(type=3, code=4, nexthopmtu=1200) / _quote(reply.data))
    got, want = p.send("from_netdev", err)
    assert want.reason == "M_ICMP_REVNAT" and parsed(got.data)[IP].dst == WEB1
    assert _inner(got.data) == (WEB1, 8080, EXT, 45005)
    p.assert_same_state()


def test_fragmentation_needed_from_the_node_itself_about_a_forwarded_packet(pair):
    """The node cannot forward the client's (DNATed) packet to the backend: the error it sends,
    seen only on egress, quotes client -> backend and must quote client -> node IP:nodePort."""
    p = pair(table(SERVICES, topology(app1="other")))
    got, _ = p.send("from_netdev", outside(NODE, udp(sport=45006, dport=30053)))
    err = to_pod(NODE, EXT, ICMP(type=3, code=4, nexthopmtu=1200) / _quote(got.data))
    leaving, want = p.send("to_netdev", err)
    assert want.reason == "M_ICMP_REVNAT" and _inner(leaving.data) == (EXT, 45006, NODE, 30053)
    assert parsed(leaving.data)[IP].src == NODE and checksums_valid(leaving.data)
    p.assert_same_state()


def test_error_from_a_load_balancer_backend(pair):
    p = pair(table(SERVICES, topology(app1="other")))
    got, _ = p.send("from_netdev", outside(LB, syn(sport=45007, dport=80)))
    fwd, _ = p.send("to_netdev", got.data)
    err = to_pod(WEB2, NODE, ICMP(type=3, code=3) / _quote(fwd.data))
    back, _ = p.send("from_netdev", err)
    leaving, want = p.send("to_netdev", back.data)
    out = parsed(leaving.data)
    assert want.reason == "M_ICMP_REVNAT" and (out[IP].src, out[IP].dst) == (LB, EXT)
    assert _inner(leaving.data) == (EXT, 45007, LB, 80)
    p.assert_same_state()


def test_errors_of_nobodys_flow_pass_untouched(pair):
    p = pair(table(SERVICES, topology()))
    err = to_pod(ROUTER, NODE, ICMP(type=3, code=4) / _quote(to_pod(NODE, EXT, udp(sport=40000, dport=53))))
    got, want = p.send("from_netdev", err)
    assert want.reason == "M_PASS" and got.data == bytes(err)


def test_off_cluster_client_of_a_cluster_ip_is_masqueraded(pair):
    """An outside client whose network routes a cluster IP to this node (issue 9, defect 5): DNAT
    on ingress, masquerade to the node on egress, as kube-proxy's `! -s clusterCIDR` rule; the
    reply comes back through the node, from the cluster IP."""
    p = pair(table(SERVICES, topology(app1="other")))                # only web-2, on node2
    got, want = p.send("from_netdev", outside("10.96.0.10", syn(sport=45010, dport=80)))
    assert want.reason == "M_DNAT_NEW" and parsed(got.data)[IP].dst == WEB2
    fwd, want = p.send("to_netdev", got.data)
    assert want.reason == "M_SNAT" and parsed(fwd.data)[IP].src == NODE
    port = parsed(fwd.data)[TCP].sport
    back, _ = p.send("from_netdev", to_pod(WEB2, NODE, synack(sport=8080, dport=port)))
    reply, want = p.send("to_netdev", back.data)
    out = parsed(reply.data)
    assert want.reason == "M_REVNAT" and (out[IP].src, out[TCP].sport, out[IP].dst) == ("10.96.0.10", 80, EXT)
    p.assert_same_state()


# -- what a full table leaves behind (issue 9, defect 7; review) -----------------------------------

def _masq_flow(p, sport=45020):
    """A node port flow to web-2 on node2, masqueraded: its node-IP port."""
    got, _ = p.send("from_netdev", outside(NODE, syn(sport=sport, dport=30080)))
    fwd, _ = p.send("to_netdev", got.data)
    return parsed(fwd.data)[TCP].sport


def test_a_lost_masquerade_half_of_a_node_port_flow_is_rewritten(pair):
    p = pair(table(SERVICES, topology(app1="other")))
    port = _masq_flow(p)
    p.evict(3)                                              # the SNAT_OUT half
    got, _ = p.send("from_netdev", outside(NODE, TCP(sport=45020, dport=30080, flags="A")))
    fwd, want = p.send("to_netdev", got.data)
    assert want.reason == "M_SNAT" and parsed(fwd.data)[TCP].sport == port    # still as the node
    assert p.prog.metrics()["M_CT_RESTORED"] == 1
    p.assert_same_state()


def test_an_answer_for_a_lost_mapping_is_dropped_not_given_to_the_node(pair):
    """Both halves of the mapping gone: the backend's answer to node IP:port would reach the
    node's stack, which would reset the backend's connection; it is dropped and counted."""
    p = pair(table(SERVICES, topology(app1="other")))
    port = _masq_flow(p)
    p.evict(3)
    p.evict(4)
    got, want = p.send("from_netdev", to_pod(WEB2, NODE, synack(sport=8080, dport=port)))
    assert got.verdict == "drop" and want.reason == "DROP_CT_LOST"
    # a port outside the range, or one a node socket holds, still goes to the node
    _, want = p.send("from_netdev", to_pod(WEB2, NODE, synack(sport=8080, dport=40000)))
    assert want.reason == "M_PASS"
    p.open_socket(6, 62001, remote=(WEB2, 8080))
    _, want = p.send("from_netdev", to_pod(WEB2, NODE, TCP(sport=8080, dport=62001, flags="A")))
    assert want.reason == "M_PASS"
    p.assert_same_state()


def test_a_reconnect_on_the_same_port_replaces_the_old_mapping(pair):
    """The client closes and reconnects from the same port within the close lifetime: the old
    mapping goes with the new one's claim, so nothing the old one receives can touch the new."""
    p = pair(table(SERVICES, topology(app1="other")))
    _masq_flow(p)
    p.send("from_netdev", outside(NODE, TCP(sport=45020, dport=30080, flags="R")))
    new = _masq_flow(p)
    mappings = {k.dir: (k, v) for k, v in p.bpf_conntrack().items() if k.dir in (3, 4)}
    assert len([k for k in p.bpf_conntrack() if k.dir in (3, 4)]) == 2       # one mapping, no leftover
    assert mappings[3][1][1] == new and mappings[4][0].dport == new
    assert not any(v[8] != (False, False, False) for v in p.bpf_conntrack().values())   # all fresh
    p.assert_same_state()


def test_a_healed_half_never_takes_another_flows_tuple(pair):
    """Flow A's SNAT_IN half is lost and its node port goes to flow B (same remote): A's next
    packet finds B's entry at its peer key and leaves it alone."""
    from tests.bpf.test_masquerade import OUT
    p = pair(ServiceTable(), config=nodeconfig())
    a, _ = p.send("to_netdev", from_pod(CLIENT_A, OUT, udp(sport=61500, dport=53)))
    assert parsed(a.data)[UDP].sport == 61500
    p.evict(4)                                               # A's SNAT_IN
    b, _ = p.send("to_netdev", from_pod(CLIENT_B, OUT, udp(sport=61500, dport=53)))
    assert parsed(b.data)[UDP].sport == 61500                         # B takes the free port
    p.send("to_netdev", from_pod(CLIENT_A, OUT, udp(sport=61500, dport=53)))
    back, want = p.send("from_netdev", to_pod(OUT, NODE, UDP(sport=53, dport=61500) / b"a"))
    assert parsed(back.data)[IP].dst == CLIENT_B and p.prog.metrics()["M_CT_RESTORED"] == 0
    p.assert_same_state()


def test_a_node_process_to_a_cluster_ip_without_local_endpoint_is_dropped(pair):
    """What the socket hook leaves untranslated (internalTrafficPolicy Local, no endpoint on this
    node) is dropped on the uplink, as kube-proxy drops it."""
    p = pair(table(ITP_LOCAL, topology(app1="other")))                     # web-2 only, on node2
    got, want = p.send("to_netdev", from_pod(NODE, "10.96.0.10", syn(sport=40000, dport=80)))
    assert got.verdict == "drop" and want.reason == "DROP_NO_LOCAL_ENDPOINT"


def test_an_error_quoting_a_later_fragment_is_not_ours(pair):
    p = pair(table(SERVICES, topology(app1="other")))
    got, _ = p.send("from_netdev", outside(NODE, udp(sport=45030, dport=30053)))
    quote = bytearray(_quote(got.data))
    quote[6:8] = b"\x00\x10"                                            # offset 128: a later fragment
    err = to_pod(WEB2, NODE, ICMP(type=3, code=3) / bytes(quote))
    got, want = p.send("from_netdev", err)
    assert want.reason == "M_PASS" and got.data == bytes(err)
