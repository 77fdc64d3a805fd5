"""Endpoint eligibility (decided once for every backend) and its rendering into BPF map contents."""
from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from dataplane.contract.consts import SVC_F_AFFINITY, SVC_F_LOCAL_ONLY
from dataplane.contract.render import Ids, SvcKey, render_node
from dataplane.spec.policy import cluster_targets, flow_keep, internal_targets, local_targets
from tests.bpf.packets import table

TOPO = """\
name: t
topology:
  nodes: [node1, node2]
  pods:
    - {name: a, node: node1, labels: {app: web}%s}
    - {name: b, node: node2, labels: {app: web}%s}
    - {name: c, node: node2, labels: {app: web}%s}
"""
SVC = """\
services:
  - {name: web, clusterIP: 10.96.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]%s}
"""


def svc_of(a="", b="", c="", extra=""):
    t = table(SVC % extra, TOPO % (a, b, c))
    s = t.get("web")
    return t, s, s.ports[0]


def names(targets):
    return [t.pod for t in targets]


def test_ready_endpoints_only():
    _, s, sp = svc_of(b=", ready: false")
    assert names(cluster_targets(s, sp)) == ["a", "c"]


def test_terminating_used_only_when_nothing_is_ready():
    _, s, sp = svc_of(a=", terminating: true")
    assert names(cluster_targets(s, sp)) == ["b", "c"]
    _, s, sp = svc_of(a=", terminating: true", b=", terminating: true", c=", ready: false")
    assert names(cluster_targets(s, sp)) == ["a", "b"]     # serving terminating ones; c is not serving


def test_local_policy_per_node_with_its_own_fallback():
    _, s, sp = svc_of(b=", terminating: true", extra=", internalTrafficPolicy: Local")
    assert names(internal_targets(s, sp, "node1")) == ["a"]
    assert names(internal_targets(s, sp, "node2")) == ["c"]
    _, s, sp = svc_of(c=", terminating: true", b=", terminating: true")
    assert names(local_targets(s, sp, "node2")) == ["b", "c"]


def test_render_slots_marker_and_flags():
    t, s, sp = svc_of(extra=", sessionAffinity: ClientIP")
    maps = render_node(t, "node1", Ids())
    vip = IPv4Address("10.96.0.10")
    head = maps.services[SvcKey(vip, 80, 6, 0)]
    assert head.count == 3 and head.flags == SVC_F_AFFINITY and head.affinity_timeout == 10800
    assert SvcKey(vip, 0, 0, 0) in maps.services                    # the VIP marker
    slots = [maps.backends[maps.services[SvcKey(vip, 80, 6, i)].backend_id] for i in (1, 2, 3)]
    assert [str(b.addr) for b in slots] == ["10.0.1.2", "10.0.2.2", "10.0.2.3"] and {b.port for b in slots} == {8080}


def test_render_local_only_flag_means_drop():
    t, *_ = svc_of(a=", ready: false", extra=", internalTrafficPolicy: Local")
    head = render_node(t, "node1", Ids()).services[SvcKey(IPv4Address("10.96.0.10"), 80, 6, 0)]
    assert head.count == 0 and head.flags & SVC_F_LOCAL_ONLY
    t, *_ = svc_of(a=", ready: false", b=", ready: false", c=", ready: false", extra=", internalTrafficPolicy: Local")
    head = render_node(t, "node1", Ids()).services[SvcKey(IPv4Address("10.96.0.10"), 80, 6, 0)]
    assert head.count == 0 and not head.flags & SVC_F_LOCAL_ONLY   # no endpoint at all: reject


def test_ids_are_stable_across_renders():
    ids = Ids()
    t1, *_ = svc_of()
    m1 = render_node(t1, "node1", ids)
    t2, *_ = svc_of(b=", ready: false")
    m2 = render_node(t2, "node1", ids)
    by_addr = lambda m: {str(b.addr): i for i, b in m.backends.items()}  # noqa: E731
    assert by_addr(m2) == {k: v for k, v in by_addr(m1).items() if k != "10.0.2.2"}


VIP = IPv4Address("10.96.0.10")
A, B, C = (IPv4Address(a) for a in ("10.0.1.2", "10.0.2.2", "10.0.2.3"))


def test_tcp_flows_live_while_their_backend_is_an_endpoint_of_the_port():
    t1, *_ = svc_of()
    keep = flow_keep(t1)
    assert keep.keeps(6, VIP, 80, A, 8080, None) and not keep.keeps(6, VIP, 80, A, 9999, None)
    t2, *_ = svc_of(b=", ready: false")                 # unready: still an endpoint, its flows live
    assert flow_keep(t2).keeps(6, VIP, 80, B, 8080, None)
    t3 = table(SVC % "", (TOPO % ("", "", "")).replace("{name: c, node: node2, labels: {app: web}",
                                                     "{name: c, node: node2, labels: {app: x}"))
    assert not flow_keep(t3).keeps(6, VIP, 80, C, 8080, None)    # c left the service
    assert not flow_keep(table("services: []\n", TOPO % ("", "", ""))).keeps(6, VIP, 80, A, 8080, None)


UDP_SVC = """\
services:
  - name: dns
    clusterIP: 10.96.0.10
    type: NodePort
    selector: {app: web}
    ports: [{port: 53, targetPort: 5353, protocol: UDP, nodePort: 30053}]
"""


def test_udp_flows_as_kube_proxys_reconciliation():
    """Per (frontend, endpoint IP), serving endpoints only, frontends without any serving endpoint
    (or gone) left alone: kube-proxy's CleanStaleEntries."""
    node_ip = IPv4Address("10.240.0.1")
    t = table(UDP_SVC, TOPO % ("", ", ready: false", ""))
    keep = flow_keep(t)
    assert keep.keeps(17, VIP, 53, A, 5353, node_ip) and keep.keeps(17, VIP, 53, A, 1, node_ip)   # by IP
    assert not keep.keeps(17, VIP, 53, B, 5353, node_ip)         # unready: not serving, flushed
    assert keep.keeps(17, node_ip, 30053, C, 5353, node_ip) and not keep.keeps(17, node_ip, 30053, B, 5353, node_ip)
    none = table(UDP_SVC, TOPO % (", ready: false", ", ready: false", ", ready: false"))
    assert flow_keep(none).keeps(17, VIP, 53, B, 5353, node_ip)  # no serving endpoint: skipped
    gone = table("services: []\n", TOPO % ("", "", ""))
    assert flow_keep(gone).keeps(17, VIP, 53, A, 5353, node_ip)   # a deleted service: skipped too


def test_a_scoped_keep_judges_only_the_changed_services_frontends():
    """A sync of service `dns-udp` alone judges flows to its frontends alone; `dns-tcp`, which
    shares its external IP and port over the other protocol, keeps its TCP flows (found in
    review: a scope without the protocol flushed them)."""
    from ipaddress import IPv4Address
    from dataplane.spec.policy import flow_keep
    from dataplane.spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable
    x = IPv4Address("172.20.0.53")

    def svc(name, proto, vip, ep):
        return Service("default", name, "ClusterIP", IPv4Address(vip), (ServicePort("", 53, proto, 53),),
                       external_ips=(x,), endpoints=(Endpoint(IPv4Address(ep), (EndpointPort("", 53, proto),),
                                                              "node1", None),))
    old = ServiceTable()
    old.add(svc("dns-udp", "UDP", "10.96.0.10", "10.0.1.2"))
    old.add(svc("dns-tcp", "TCP", "10.96.0.11", "10.0.1.3"))
    new = old.updated([svc("dns-udp", "UDP", "10.96.0.10", "10.0.1.4")])
    keep = flow_keep(new, only=new.changes_from(old), old=old)
    assert keep.keeps(6, x, 53, IPv4Address("10.0.1.3"), 53, None)          # the other service's TCP flow
    assert not keep.keeps(17, x, 53, IPv4Address("10.0.1.2"), 53, None)     # the changed one's stale UDP flow
    assert keep.keeps(17, x, 53, IPv4Address("10.0.1.4"), 53, None)
    full = flow_keep(new)
    assert full.keeps(6, x, 53, IPv4Address("10.0.1.3"), 53, None)


def test_a_table_changed_in_place_after_a_sync_is_still_seen():
    """The backend compares with a copy of what it synced, not with the table object (found in
    review: sync(T); T.add(X); sync(T) wrote nothing)."""
    from ipaddress import IPv4Address
    from dataplane.spec.table import Service, ServicePort, ServiceTable
    t = ServiceTable()
    t.add(Service("default", "a", "ClusterIP", IPv4Address("10.96.0.10"), (ServicePort("", 80, "TCP", 80),)))
    synced = (t.version, dict(t.services))
    t.add(Service("default", "b", "ClusterIP", IPv4Address("10.96.0.11"), (ServicePort("", 80, "TCP", 80),)))
    assert t.changes_since(*synced) == {"default/b"}
    import copy
    u = t.updated(removed=["default/a"])
    assert copy.deepcopy(u).changes_since(t.version, dict(t.services)) == {"default/a"}   # a copy compares
    assert copy.deepcopy(u).version != u.version and u.changes_since(t.version, {}) == {"default/a"}


def _one(proto: str, endpoints, node_port=None, name="s"):
    """endpoints: addresses; one ending in "!" is ready but not serving (publishNotReadyAddresses
    routes to it; kube-proxy's UDP reconciliation does not count it)."""
    from dataplane.spec.table import Endpoint, EndpointPort, Service, ServicePort
    return Service("default", name, "NodePort" if node_port else "ClusterIP", IPv4Address("10.96.0.10"),
                   (ServicePort("", 53, proto, 53, node_port),),
                   endpoints=tuple(Endpoint(IPv4Address(a.rstrip("!")), (EndpointPort("", 53, proto),), "node1", None,
                                            serving=not a.endswith("!"))
                                   for a in endpoints))


@pytest.mark.parametrize("before, after, safe", [
    # UDP: kube-proxy's rule (per endpoint IP; no serving endpoint or no service: all live)
    (("UDP", ["10.0.1.2"]), ("UDP", ["10.0.1.2", "10.0.1.3"]), True),
    (("UDP", ["10.0.1.2", "10.0.1.3"]), ("UDP", ["10.0.1.2"]), False),
    (("UDP", ["10.0.1.2"]), None, True),                 # deleted: its UDP flows expire on their own
    (None, ("UDP", ["10.0.1.2"]), False),                # created: flows a deleted one left are judged
    # TCP: the eBPF rule (a flow lives while its backend is an endpoint; no service: none lives)
    (("TCP", ["10.0.1.2"]), ("TCP", ["10.0.1.2", "10.0.1.3"]), True),
    (("TCP", ["10.0.1.2", "10.0.1.3"]), ("TCP", ["10.0.1.3"]), False),
    (("TCP", ["10.0.1.2"]), None, False),
    (None, ("TCP", ["10.0.1.2"]), True),
    # a node port, judged on its own key
    (("UDP", ["10.0.1.2"], 30053), ("UDP", ["10.0.1.3"], 30053), False),
    (("TCP", ["10.0.1.2"], 30053), ("TCP", ["10.0.1.2", "10.0.1.3"], 30053), True),
    # only the node port moved: the old one's flows have no service any more
    (("TCP", ["10.0.1.2"], 30053), ("TCP", ["10.0.1.2"], 30054), False),
    # UDP: the old node port's flows expire on their own, but the new one's may be an earlier
    # owner's lingering flows, judged now
    (("UDP", ["10.0.1.2"], 30053), ("UDP", ["10.0.1.2"], 30054), False),
    # the protocol changed: the old protocol's flows are judged by a service that no longer has it
    (("TCP", ["10.0.1.2"]), ("UDP", ["10.0.1.2"]), False),
    # found in review: routing sends UDP to a ready endpoint that is not serving, which kube-proxy's
    # rule does not keep: flows made to it since the last walk are judged, whatever else changed
    (("UDP", ["10.0.1.2", "10.0.1.3!"]), ("UDP", ["10.0.1.2"]), False),
    (("UDP", ["10.0.1.2", "10.0.1.3!"]), ("UDP", ["10.0.1.2", "10.0.1.3!", "10.0.1.4"]), False),
], ids=["udp-added", "udp-removed", "udp-deleted", "udp-created", "tcp-added", "tcp-removed", "tcp-deleted",
        "tcp-created", "udp-nodeport-replaced", "tcp-nodeport-added", "tcp-nodeport-moved", "udp-nodeport-moved",
        "protocol-changed", "udp-ready-unserving-removed", "udp-ready-unserving-kept"])
def test_a_change_that_dooms_no_flow_is_told_apart(before, after, safe):
    """FlowKeep.keeps_all_that: a sync of one service skips its walk of the flows only when the
    new keep lets live every flow the old one did."""
    from dataplane.spec.table import ServiceTable
    old = ServiceTable()
    if before:
        old.add(_one(*before))
    new = old.updated([_one(*after)] if after else [], [] if after else ["default/s"])
    keys = new.changes_from(old)
    keep = flow_keep(new, only=keys, old=old)
    assert keep.keeps_all_that(flow_keep(old, only=keys, old=new, routed=True)) is safe
    assert flow_keep(new).keeps_all_that(flow_keep(old)) is False      # no scope: never sure
