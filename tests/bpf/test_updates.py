"""Updates under traffic, on the BPF program and the oracle alike: what happens to existing flows
when endpoints become terminating or leave, and to node-local policy."""
from __future__ import annotations

from ipaddress import IPv4Address

from tests.bpf.packets import CLIENT, IP, TCP, VIP, WEB1, WEB2, ack, from_pod, parsed, syn, table, udp

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
    p.sync(after)
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
    p.sync(after)
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


STICKY = ONE.replace("    selector: {app: web}\n", "    selector: {app: web}\n    sessionAffinity: ClientIP\n")


def test_affinity_to_a_removed_endpoint_is_forgotten(pair):
    before = table(STICKY, topology())
    p = pair(before)
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    backend = parsed(got.data)[IP].dst
    gone = "app1" if backend == WEB1 else "app2"
    after = table(STICKY, topology(**{gone: "gone"}))         # the chosen endpoint leaves
    assert p.sync(after) == (3, 3)                   # its flow (2 entries) and the affinity
    assert len(p.prog.table("affinity")) == 0 and p.oracle.s.affinity == {}
    for sport in range(42000, 42010):
        got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=sport)))
        assert parsed(got.data)[IP].dst != backend
    p.assert_same_state()


TWO_SERVICES = STICKY + """\
  - name: other
    clusterIP: 10.96.0.11
    selector: {role: other}
    ports: [{name: http, port: 80, targetPort: 8080}]
"""


def _shared(text: str) -> str:
    """web-1 also backs the service `other`."""
    return text.replace("{app: web}", "{app: web, role: other}", 1).replace("{app: gone}", "{app: gone, role: other}", 1)


def test_affinity_to_an_endpoint_that_left_but_backs_another_service(pair):
    """web-1 leaves the sticky service but still backs another one, so its backend entry lives
    on: the client's remembered choice must not follow it. Its flows expired long ago, so no
    flush of flows could have removed the affinity; the sync forgets it as no longer eligible."""
    before = table(TWO_SERVICES, _shared(topology(web2=", ready: false")))
    p = pair(before)
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    assert parsed(got.data)[IP].dst == WEB1
    p.send("from_pod", from_pod(CLIENT, VIP, TCP(sport=40000, dport=80, flags="R")))
    p.advance(11)
    assert p.collect() == (2, 2)                               # the flow is gone, the affinity stays
    assert len(p.prog.table("affinity")) == 1
    after = table(TWO_SERVICES, _shared(topology(app1="gone")))
    assert p.sync(after) == (1, 1)                    # the affinity is forgotten
    for sport in range(42000, 42005):
        got, want = p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=sport)))
        assert parsed(got.data)[IP].dst == WEB2
    p.assert_same_state()


def test_remembered_backend_no_longer_eligible_is_not_chosen(pair):
    """The data path's own rule, with the affinity entry still in the map: web-1, terminating now
    and so not eligible while web-2 is ready, but still the only endpoint of another service, is
    not chosen again; the entry is overwritten with the fresh choice."""
    from dataplane.oracle.frontends import frontends
    from tests.bpf.harness import NODE_IP
    before = table(TWO_SERVICES, _shared(topology(web2=", ready: false")))
    p = pair(before)
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    assert parsed(got.data)[IP].dst == WEB1
    after = table(TWO_SERVICES, _shared(topology(web1=", terminating: true")))
    p.program(after)                                             # the maps only: no flush
    p.oracle.s.frontends = frontends(after, "node1", NODE_IP)
    assert len(p.prog.table("affinity")) == 1 and len(p.oracle.s.affinity) == 1
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=41000)))
    assert parsed(got.data)[IP].dst == WEB2 and p.prog.metrics()["M_AFFINITY_HIT"] == 0
    got, want = p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=41001)))
    assert parsed(got.data)[IP].dst == WEB2 and p.prog.metrics()["M_AFFINITY_HIT"] == 1
    p.assert_same_state()


def test_ids_are_never_reused(pair):
    """A backend or service port that goes and a new one that comes get different ids: nothing
    keyed by the old id (an affinity, a source range) can be inherited."""
    before = table(STICKY, topology())
    p = pair(before)
    old_backends = dict(p.ids.backend)
    old_services = dict(p.ids.svc)
    after = table(STICKY.replace("10.96.0.10", "10.96.0.20"), topology(app1="gone"))
    p.sync(after)                                  # web-1 and the service at .10 go ...
    interim = set(p.ids.backend.values()) | set(p.ids.svc.values())
    again = table(STICKY, topology())
    p.sync(again)                                   # ... and come back
    returned = [k for k in p.ids.backend if k[0] == IPv4Address(WEB1)]
    assert returned and all(p.ids.backend[k] not in set(old_backends.values()) | interim for k in returned)
    assert all(p.ids.svc[k] not in set(old_services.values()) | interim for k in p.ids.svc)


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
    p.sync(off)
    assert _backends_for(p, base=45000) == {WEB1, WEB2}
    p.sync(on)
    assert len(_backends_for(p, base=46000)) == 1
    p.assert_same_state()
