"""Updates under traffic, on the BPF program and the model alike: what happens to existing flows
when endpoints become terminating or leave, and to node-local policy."""
from __future__ import annotations

from tests.bpf.harness import sync
from tests.bpf.packets import CLIENT, IP, VIP, WEB1, WEB2, ack, from_pod, parsed, syn, table, udp

ONE = """\
services:
  - name: web
    clusterIP: 10.96.0.10
    selector: {app: web}
    ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, targetPort: 5353, protocol: UDP}]
"""


def topology(web1="", web2="", app1="web", app2="web"):
    """client on node1, web-1 on node1, web-2 on node2; extra pod fields and labels per pod."""
    return f"""\
name: t
topology:
  nodes: [node1, node2]
  pods:
    - {{name: client, node: node1}}
    - {{name: web-1, node: node1, labels: {{app: {app1}}}{web1}}}
    - {{name: web-2, node: node2, labels: {{app: {app2}}}{web2}}}
"""


def test_flow_to_a_terminating_endpoint_keeps_going(pair):
    before = table(ONE, topology())
    p = pair(before)
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    backend = parsed(got.data)[IP].dst
    name = {WEB1: "web-1", WEB2: "web-2"}[backend]
    after = table(ONE, topology(**{name.replace("-", ""): ", terminating: true"}))
    sync(p, before, after)
    again, want = p.send("from_pod", from_pod(CLIENT, VIP, ack()))
    assert want.reason == "M_DNAT" and parsed(again.data)[IP].dst == backend   # the flow continues
    other, want = p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=40001)))
    assert want.reason == "M_DNAT_NEW" and parsed(other.data)[IP].dst != backend  # new flows avoid it
    p.assert_same_state()


def test_removed_endpoint_udp_flow_moves_and_tcp_flow_is_dropped(pair):
    before = table(ONE, topology(web2=", ready: false"))      # only web-1 serves
    p = pair(before)
    tcp, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    dgram, _ = p.send("from_pod", from_pod(CLIENT, VIP, udp()))
    assert parsed(tcp.data)[IP].dst == WEB1 and parsed(dgram.data)[IP].dst == WEB1
    after = table(ONE, topology(app1="gone"))                  # web-1 leaves, web-2 is ready
    sync(p, before, after)
    assert all(k.saddr != WEB1 and v[0] != WEB1 for k, v in p.model_conntrack().items())
    # UDP: the stale entry is gone, the same tuple goes to the remaining endpoint
    moved, want = p.send("from_pod", from_pod(CLIENT, VIP, udp()))
    assert want.reason == "M_DNAT_NEW" and parsed(moved.data)[IP].dst == WEB2
    # TCP: mid-flow packets of the removed endpoint's flow are dropped, not sent elsewhere
    dropped, want = p.send("from_pod", from_pod(CLIENT, VIP, ack()))
    assert dropped.verdict == "drop" and want.reason == "DROP_CT_LOST"
    p.assert_same_state()


ITP_LOCAL = """\
services:
  - name: web
    clusterIP: 10.96.0.10
    selector: {app: web}
    internalTrafficPolicy: Local
    ports: [{port: 80, targetPort: 8080}]
"""


def test_itp_local_without_local_endpoint_drops(pair):
    """On node1 only web-2 (node2) exists: kube-proxy drops ("has no local endpoints")."""
    p = pair(table(ITP_LOCAL, topology(web1=", ready: false")))
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    assert got.verdict == "drop" and want.reason == "DROP_NO_LOCAL_ENDPOINT"


def test_itp_local_without_any_endpoint_rejects(pair):
    p = pair(table(ITP_LOCAL, topology(web1=", ready: false", web2=", ready: false")))
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    assert got.verdict == "redirect" and want.reason == "REJECT_NO_ENDPOINTS"


def test_affinity_to_a_removed_endpoint_is_forgotten(pair):
    svc = ONE.replace("    selector: {app: web}\n", "    selector: {app: web}\n    sessionAffinity: ClientIP\n")
    before = table(svc, topology())
    p = pair(before)
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    backend = parsed(got.data)[IP].dst
    gone = "app1" if backend == WEB1 else "app2"
    after = table(svc, topology(**{gone: "gone"}))            # the chosen endpoint leaves
    sync(p, before, after)
    assert len(p.prog.table("affinity")) == 0 and p.model.s.affinity == {}
    for sport in range(42000, 42010):
        got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=sport)))
        assert parsed(got.data)[IP].dst != backend
    p.assert_same_state()


def _backends_for(p, count=30, base=43000):
    return {parsed(p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=s)))[0].data)[IP].dst
            for s in range(base, base + count)}


def test_unready_endpoints_get_nothing(pair):
    p = pair(table(ONE, topology(web2=", ready: false")))
    assert _backends_for(p) == {WEB1}


def test_terminating_endpoints_only_as_fallback(pair):
    p = pair(table(ONE, topology(web2=", terminating: true")))
    assert _backends_for(p) == {WEB1}
    p = pair(table(ONE, topology(web1=", terminating: true", web2=", terminating: true")))
    assert _backends_for(p) == {WEB1, WEB2}
    p.assert_same_state()


def test_itp_local_picks_only_local_endpoints(pair):
    p = pair(table(ITP_LOCAL, topology()))          # node1 has web-1; web-2 is on node2
    assert _backends_for(p) == {WEB1}


def test_switching_affinity_off_and_on(pair):
    sticky = ONE.replace("    selector: {app: web}\n", "    selector: {app: web}\n    sessionAffinity: ClientIP\n")
    on, off = table(sticky, topology()), table(ONE, topology())
    p = pair(on)
    assert len(_backends_for(p, base=44000)) == 1
    sync(p, on, off)
    assert _backends_for(p, base=45000) == {WEB1, WEB2}
    sync(p, off, on)
    assert len(_backends_for(p, base=46000)) == 1
    p.assert_same_state()
