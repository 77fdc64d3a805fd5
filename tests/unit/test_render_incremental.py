"""A sync of a few changed services renders those alone (contract/render.py NodeRendering): after
any sequence of changes, the incremental rendering and its ids must equal a full render_node from
the same history, and the entries it writes must be the changed services' alone."""
from __future__ import annotations

import copy
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings, strategies as st

from dataplane.contract.render import Ids, NodeRendering, render_node
from dataplane.spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable

NODE_IP = IPv4Address("10.240.0.1")
PODS = [IPv4Address("10.0.1.2") + i for i in range(12)]
EXTERNAL = [IPv4Address("172.20.0.10"), IPv4Address("172.20.0.11")]     # few: services collide on them


@st.composite
def services(draw, i: int):
    ports = draw(st.lists(st.tuples(st.sampled_from([80, 443, 53]), st.sampled_from(["TCP", "UDP"])),
                          min_size=1, max_size=2, unique=True))
    kind = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
    sps = tuple(ServicePort(f"p{j}", port, proto, 8080, 30000 + 10 * i + j if kind != "ClusterIP" else None)
                for j, (port, proto) in enumerate(ports))
    eps = tuple(Endpoint(draw(st.sampled_from(PODS)), (EndpointPort(f"p{j}", draw(st.sampled_from([8080, 9090])),
                                                                    proto),),
                         draw(st.sampled_from(["node1", "node2"])), None,
                         ready=draw(st.booleans()), serving=True, terminating=False)
                for j, (_, proto) in enumerate(ports[:1]) for _ in range(draw(st.integers(0, 3))))
    eps = tuple({e.address: e for e in eps}.values())
    return Service("default", f"s{i}", kind, IPv4Address("10.96.0.10") + i, sps,
                   session_affinity=draw(st.sampled_from(["None", "ClientIP"])),
                   internal_traffic_policy=draw(st.sampled_from(["Cluster", "Local"])),
                   external_traffic_policy=draw(st.sampled_from(["Cluster", "Local"])) if kind != "ClusterIP" else "Cluster",
                   external_ips=tuple(draw(st.lists(st.sampled_from(EXTERNAL), max_size=1))),
                   load_balancer_ips=(EXTERNAL[1],) if kind == "LoadBalancer" and draw(st.booleans()) else (),
                   load_balancer_source_ranges=(IPv4Network("10.128.0.0/16"),) if kind == "LoadBalancer" and
                   draw(st.booleans()) else (),
                   endpoints=eps)


@st.composite
def histories(draw):
    steps = []
    for _ in range(draw(st.integers(1, 6))):
        changes = {}
        for i in draw(st.lists(st.integers(0, 7), min_size=1, max_size=4, unique=True)):
            changes[i] = None if draw(st.booleans()) and draw(st.booleans()) else draw(services(i))
        steps.append(changes)
    return steps


def test_an_overwritten_slots_backend_stays_while_its_part_holds_it():
    """Two services claim one external IP and port; the later wins the key, but render_node keeps
    the earlier one's backend (every part's backends are in the union). A third service dropping
    that backend must not delete it (found in review)."""
    port = (EndpointPort("", 8080, "TCP"),)
    p = IPv4Address("10.0.1.9")
    a = Service("default", "a", "ClusterIP", IPv4Address("10.96.0.10"), (ServicePort("", 80, "TCP", 8080),),
                internal_traffic_policy="Local", external_ips=(EXTERNAL[0],),
                endpoints=(Endpoint(p, port, "node2", None),))
    b = Service("default", "b", "ClusterIP", IPv4Address("10.96.0.11"), (ServicePort("", 80, "TCP", 8080),),
                external_ips=(EXTERNAL[0],), endpoints=(Endpoint(IPv4Address("10.0.1.2"), port, "node1", None),))
    c = Service("default", "c", "ClusterIP", IPv4Address("10.96.0.12"), (ServicePort("", 80, "TCP", 8080),),
                endpoints=(Endpoint(p, port, "node1", None),))
    table = ServiceTable()
    for svc in (a, b, c):
        table.add(svc)
    full_ids, inc_ids = Ids(), Ids()
    render_node(table, "node1", full_ids, NODE_IP)
    rendering = NodeRendering("node1", NODE_IP)
    rendering.full(table, inc_ids)
    new = table.updated([Service(**{**vars(c), "endpoints": ()})])
    plan = rendering.prepare(new, new.changes_from(table), inc_ids)
    rendering.commit(plan, inc_ids)
    _same(rendering.maps, render_node(new, "node1", full_ids, NODE_IP))
    assert inc_ids.backend == full_ids.backend


def _same(a, b):
    assert a.services == b.services
    assert a.backends == b.backends
    assert a.lb_sources == b.lb_sources and a.affinity_match == b.affinity_match
    assert a.addresses == b.addresses


@settings(max_examples=500, deadline=None)
@given(histories())
def test_incremental_equals_full(history):
    table = ServiceTable()
    full_ids, inc_ids = Ids(), Ids()
    rendering = NodeRendering("node1", NODE_IP)
    rendering.full(table, inc_ids)
    for changes in history:
        new = table.updated([s for s in changes.values() if s is not None],
                            [f"default/s{i}" for i, s in changes.items() if s is None])
        want = render_node(new, "node1", full_ids, NODE_IP)
        keys = new.changes_from(table)
        inc_ids.begin()
        plan = rendering.prepare(new, keys, inc_ids)
        if plan is None:                    # as the backend does: ids taken back, then rendered whole
            inc_ids.rollback()
            rendering.full(new, inc_ids)
        else:
            inc_ids.commit()
            rendering.commit(plan, inc_ids)
        _same(rendering.maps, want)
        assert (inc_ids.svc, inc_ids.backend, inc_ids._next) == (full_ids.svc, full_ids.backend, full_ids._next)
        table = new


def _table(n: int, extra=()) -> ServiceTable:
    t = ServiceTable()
    for i in range(n):
        eps = tuple(Endpoint(IPv4Address("10.0.1.2") + (i + j) % 200, (EndpointPort("", 8080, "TCP"),), "node1", None)
                    for j in range(2))
        t.add(Service("default", f"svc-{i:05d}", "ClusterIP", IPv4Address("10.96.0.10") + i,
                      (ServicePort("", 80, "TCP", 8080),), endpoints=eps + tuple(extra if i == n // 2 else ())))
    return t


def test_a_one_service_change_touches_that_service_alone():
    """1,000 services; one gains an endpoint: the entries to write are that service's (its head
    and slots) and the new backend, nothing of the 999 others."""
    table = _table(1000)
    ids = Ids()
    rendering = NodeRendering("node1", NODE_IP)
    rendering.full(table, ids)
    svc = table.services["default/svc-00500"]
    extra = Endpoint(IPv4Address("10.0.9.9"), (EndpointPort("", 8080, "TCP"),), "node1", None)
    new = table.updated([Service(**{**vars(svc), "endpoints": svc.endpoints + (extra,)})])
    assert new.changes_from(table) == {"default/svc-00500"}
    plan = rendering.prepare(new, new.changes_from(table), ids)
    vip = svc.cluster_ip
    assert {k.vip for k in plan.before.services} == {k.vip for k in plan.after.services} == {vip}
    assert len(plan.after.services) == 1 + 1 + 3          # marker, head, three slots
    written = [b.addr for bid, b in plan.after.backends.items() if plan.before.backends.get(bid) != b]
    assert written == [IPv4Address("10.0.9.9")]            # of the backends, the new one alone
    rendering.commit(plan, ids)
    _same(rendering.maps, render_node(new, "node1", copy.deepcopy(ids), NODE_IP))


def test_a_removed_service_frees_only_backends_nobody_else_uses():
    table = _table(10)
    ids = Ids()
    rendering = NodeRendering("node1", NODE_IP)
    rendering.full(table, ids)
    gone = table.services["default/svc-00003"]               # endpoints .5 and .6 (shared with 2 and 4)
    new = table.updated(removed=[gone.key])
    plan = rendering.prepare(new, new.changes_from(table), ids)
    assert plan.after.services == {} and {k.vip for k in plan.before.services} == {gone.cluster_ip}
    # both of its backends are still used by its neighbours: kept, so not in `before - after`
    assert set(plan.before.backends) <= set(plan.after.backends)
    rendering.commit(plan, ids)
    assert all(k.vip != gone.cluster_ip for k in rendering.maps.services)
    assert set(rendering.maps.backends) == {v.backend_id for v in rendering.maps.services.values() if v.backend_id}
