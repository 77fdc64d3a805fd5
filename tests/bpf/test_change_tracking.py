"""The eBPF backend's syncs of a few changed services (EbpfBackend._sync_changes) on a loaded
program: the kernel's maps always hold the rendering of the whole table, and a one-service change
writes that service's entries alone (counted map operations, not timed)."""
from __future__ import annotations

import random
from ipaddress import IPv4Address

import pytest

from dataplane.backends.ebpf import EbpfBackend, maps
from dataplane.contract.render import Ids, NodeMaps
from dataplane.spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable
from dataplane.backends.ebpf.program import be32
from dataplane.backends.ebpf.testrun import run
from tests.bpf.harness import NODE_IP, Pair
from tests.bpf.packets import CLIENT, IP, from_pod, parsed, udp


def _service(i: int, eps: int, r: random.Random | None = None, kind="ClusterIP", extra=()) -> Service:
    port = (EndpointPort("", 8080, "TCP"),)
    endpoints = tuple(Endpoint(IPv4Address("10.0.1.2") + (i + j) % 250, port, "node1", None) for j in range(eps))
    endpoints += tuple(Endpoint(IPv4Address(a), port, "node1", None) for a in extra)
    external = (IPv4Address("172.20.0.10"),) if r is not None and r.random() < 0.2 else ()
    return Service("default", f"svc-{i:05d}", kind, IPv4Address("10.96.0.10") + i,
                   (ServicePort("", 80, "TCP", 8080, 30000 + i if kind == "NodePort" else None),),
                   external_ips=external, endpoints=endpoints)


def _backend(program) -> EbpfBackend:
    Pair(program, ServiceTable())                     # empty maps
    b = EbpfBackend(seed=1)
    b.nodes = {"node1": program}
    b.current = {"node1": NodeMaps()}
    b.ids = {"node1": Ids()}
    program.node_ip = NODE_IP
    return b


@pytest.fixture
def counted(monkeypatch, program):
    """Every map entry the syncs write or delete (the batched writes), by map name."""
    ops = {"written": {}, "deleted": {}}
    names = {program.table(n).map_fd: n for n in ("services", "backends", "affinity_match", "addresses",
                                                          "address_filter")}

    def count(kind, real):
        def wrapper(table, items):
            if items:
                name = names.get(table.map_fd, "other")
                ops[kind][name] = ops[kind].get(name, 0) + len(items)
            return real(table, items)
        return wrapper

    monkeypatch.setattr(maps, "update_batch", count("written", maps.update_batch))
    monkeypatch.setattr(maps, "delete_batch", count("deleted", maps.delete_batch))
    return ops


def test_a_one_service_change_at_1000_services_writes_that_service_alone(program, counted):
    b = _backend(program)
    table = ServiceTable()
    for i in range(1000):
        table.add(_service(i, 2))
    b.sync(None, table)
    counted["written"].clear()
    counted["deleted"].clear()
    changed = table.updated([_service(500, 2, extra=["10.0.9.9"])])    # one more endpoint, a new pod
    b.sync(None, changed)
    # its head (count 3), its third slot, the one backend nobody had, its address (the fast
    # path's map) and that address's word of the map's summary (the fast path's filter): nothing
    # else
    assert counted["written"] == {"services": 2, "backends": 1, "addresses": 1, "address_filter": 1}, counted
    assert counted["deleted"] == {}, counted
    assert maps.read_node_maps(program).services == b.current["node1"].services
    # and back: the slot and the backend go, the head is rewritten
    b.sync(None, changed.updated([_service(500, 2)]))
    assert counted["deleted"] == {"services": 1, "backends": 1, "addresses": 1}, counted


def test_the_kernel_holds_the_whole_rendering_after_any_changes(program):
    """Random changes (added, removed, resized, NodePorts, external IPs two services share, which
    send the sync back to a full render): after each, the kernel's maps equal the rendering."""
    r = random.Random(5)
    b = _backend(program)
    table = ServiceTable()
    for i in range(60):
        table.add(_service(i, r.randrange(0, 4), r))
    b.sync(None, table)
    full = []
    real_full = b._sync_full
    b._sync_full = lambda lab, t: full.append(1) or real_full(lab, t)
    for _ in range(40):
        changes, removed = [], []
        for i in r.sample(range(80), r.randrange(1, 4)):
            if r.random() < 0.25:
                removed.append(f"default/svc-{i:05d}")
            else:
                changes.append(_service(i, r.randrange(0, 4), r, r.choice(["ClusterIP", "NodePort"])))
        table = table.updated(changes, removed)
        b.sync(None, table)
        got = maps.read_node_maps(program)
        want = b.current["node1"]
        assert got.services == want.services and got.backends == want.backends
        assert got.affinity_match == want.affinity_match and got.lb_sources == want.lb_sources
        assert got.addresses == want.addresses
    assert 0 < len(full) < 30, f"{len(full)} of 40 syncs rendered in full: both ways must be exercised"


def _udp_service(endpoints) -> Service:
    port = (EndpointPort("", 5353, "UDP"),)
    return Service("default", "dns", "ClusterIP", IPv4Address("10.96.9.9"), (ServicePort("", 53, "UDP", 5353),),
                   endpoints=tuple(Endpoint(IPv4Address(a), port, "node1", None) for a in endpoints))


@pytest.mark.parametrize("change, walked, flow_lives", [
    # an endpoint added: nothing the flows of the service use can be doomed, no table is walked
    (("10.0.1.3", "10.0.1.4", "10.0.1.5"), set(), True),
    # the flow's endpoint (10.0.1.4) removed: conntrack is walked, the flow flushed (kube-proxy's
    # UDP rule)
    (("10.0.1.3",), {"conntrack"}, False),
    # the other endpoint removed: walked (a flow could have used it), this flow kept
    (("10.0.1.4",), {"conntrack"}, True),
], ids=["endpoint-added", "flows-endpoint-removed", "other-endpoint-removed"])
def test_a_change_sync_walks_the_flows_only_when_the_change_can_doom_one(program, monkeypatch, change, walked,
                                                                          flow_lives):
    import dataplane.backends.ebpf as ebpf
    b = _backend(program)
    table = ServiceTable()
    for i in range(40):
        table.add(_service(i, 2))
    table.add(_udp_service(("10.0.1.3", "10.0.1.4")))
    b.sync(None, table)
    # a flow to the endpoint the seeded choice gives it
    out = run(program.fns["from_pod"].fd, bytes(from_pod(CLIENT, "10.96.9.9", udp(40000, 53))))
    backend = parsed(out.data)[IP].dst
    if backend != "10.0.1.4":               # the rows name 10.0.1.4 as the flow's: swap the roles
        change = tuple({"10.0.1.3": "10.0.1.4", "10.0.1.4": "10.0.1.3"}.get(a, a) for a in change)
    tables = []
    real = ebpf.batch_items
    monkeypatch.setattr(ebpf, "batch_items", lambda t, *a, **k: tables.append(t) or real(t, *a, **k))
    names = {program.table(n).map_fd: n for n in ("conntrack", "affinity", "sock_revnat")}
    b.sync(None, table.updated([_udp_service(change)]))
    assert {names.get(t.map_fd, "other") for t in tables} == walked
    lives = any(k.daddr == be32(backend) or k.saddr == be32(backend)
                for k in program.table("conntrack").keys())
    assert lives == flow_lives


def _walks(program, monkeypatch) -> list:
    """The names of the maps the backend walks (batch_items), in order, from now on."""
    import dataplane.backends.ebpf as ebpf
    names = {program.table(n).map_fd: n for n in ("conntrack", "affinity", "sock_revnat")}
    walked = []
    real = ebpf.batch_items
    monkeypatch.setattr(ebpf, "batch_items",
                        lambda t, *a, **k: walked.append(names.get(t.map_fd, "other")) or real(t, *a, **k))
    return walked


def test_addresses_a_flow_keeps_lingering_do_not_make_every_change_walk(program, monkeypatch):
    """A UDP flow outlives its deleted service, so its addresses linger in the fast path's map
    (a walk found the flow naming them). A later change elsewhere that dooms nothing walks
    nothing, and leaves them lingering; a change that walks anyway settles them."""
    import dataplane.backends.ebpf as ebpf
    b = _backend(program)
    table = ServiceTable()
    for i in range(40):
        table.add(_service(i, 2))
    table.add(_udp_service(("10.0.9.3",)))
    b.sync(None, table)
    run(program.fns["from_pod"].fd, bytes(from_pod(CLIENT, "10.96.9.9", udp(40000, 53))))
    walked = _walks(program, monkeypatch)
    table = table.updated([], ["default/dns"])
    b.sync(None, table)
    assert walked == ["conntrack"], "the deleted service's addresses were leaving: one walk"
    vip, endpoint = int(IPv4Address("10.96.9.9")), int(IPv4Address("10.0.9.3"))
    assert {vip, endpoint} <= b.lingering["node1"] and {vip, endpoint} <= set(b.current["node1"].addresses)
    walked.clear()
    table = table.updated([_service(7, 2, extra=["10.0.9.9"])])          # an endpoint added elsewhere
    b.sync(None, table)
    assert walked == [] and {vip, endpoint} <= b.lingering["node1"]
    assert b.settle_lingering() == 0, "the flow still names them"
    program.table("conntrack").clear()                                  # the flow expired and went
    table = table.updated([_service(7, 2)])                              # a removal: walks, settles
    b.sync(None, table)
    assert walked[-1] == "conntrack" and not ({vip, endpoint} & b.lingering["node1"])
    assert not ({vip, endpoint} & set(b.current["node1"].addresses))
    assert ebpf.maps.read_node_maps(program).addresses == b.current["node1"].addresses


def test_the_affinity_table_is_walked_only_when_a_pair_leaves(program, monkeypatch):
    from dataclasses import replace
    b = _backend(program)
    table = ServiceTable()
    for i in range(40):
        table.add(replace(_service(i, 2), session_affinity="ClientIP"))
    b.sync(None, table)
    walked = _walks(program, monkeypatch)
    table = table.updated([replace(_service(3, 2, extra=["10.0.9.9"]), session_affinity="ClientIP")])
    b.sync(None, table)
    assert "affinity" not in walked, "a backend added: no (service, backend) pair left"
    table = table.updated([replace(_service(3, 2), session_affinity="ClientIP")])
    b.sync(None, table)
    assert "affinity" in walked, "the backend removed: its pair left, its affinities are forgotten"
