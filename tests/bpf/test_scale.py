"""Built for scale: the default maps take a 64k-service table, written as batched updates."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from dataplane.backends.ebpf.maps import apply
from dataplane.contract.render import Ids, NodeMaps, render_node
from dataplane.spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable
from tests.bpf.harness import Pair
from tests.bpf.packets import CLIENT, IP, from_pod, parsed, syn

N = 65536


def big_table() -> ServiceTable:
    t = ServiceTable()
    vips = IPv4Network("10.96.0.0/12").hosts()
    pods = list(IPv4Network("10.0.0.0/16").hosts())
    for i in range(N):
        eps = tuple(Endpoint(pods[(3 * i + j) % len(pods)], (EndpointPort("", 8080, "TCP"),), "node1", None)
                    for j in range(3))
        t.add(Service("default", f"s{i}", "ClusterIP", next(vips), (ServicePort("", 80, "TCP", 8080),),
                      endpoints=eps))
    return t


def test_64k_services_fit_and_serve(program):
    Pair(program, ServiceTable())               # start from empty maps
    t = big_table()
    rendered = render_node(t, "node1", Ids())
    assert len(rendered.services) == N * 5      # marker + head + 3 slots each
    change = apply(program, NodeMaps(), rendered)
    # every VIP and endpoint address too (the fast path's map): 131,070 of its 262,144
    assert len(rendered.addresses) == N + len(rendered.backends)
    assert change.upserted == len(rendered.services) + len(rendered.backends) + len(rendered.addresses)
    assert len(program.table("services")) == N * 5
    # the last service serves like the first: lookups do not depend on the table's size
    from dataplane.backends.ebpf.testrun import run
    last = t.get("s65535")
    out = run(program.fns["from_pod"].fd, bytes(from_pod(CLIENT, str(last.cluster_ip), syn())))
    assert out.verdict == "pass" and IPv4Address(parsed(out.data)[IP].dst) in {e.address for e in last.endpoints}
    # and removing it all is one diff too
    apply(program, rendered, NodeMaps())
    assert len(program.table("services")) == 0 and len(program.table("backends")) == 0
    assert len(program.table("addresses")) == 0


def test_a_service_port_beyond_65535_backends_is_refused_and_nothing_written(program):
    """Counts and slots are 16 bits in the maps (issue 9, defect 8): a service port with 65,536
    eligible endpoints is a clear error at render, and the maps keep what they held."""
    from ipaddress import IPv4Address

    import pytest

    from dataplane.backends.ebpf import EbpfBackend
    from dataplane.backends.ebpf.maps import read_services
    from dataplane.contract.render import RenderError
    from dataplane.spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable
    from tests.bpf.harness import Pair
    from tests.bpf.packets import table

    small = table()
    pair = Pair(program, small)
    backend = EbpfBackend(seed=1)
    backend.nodes["node1"] = program
    backend.current["node1"] = pair.rendered
    backend.ids["node1"] = pair.ids
    backend.table = small
    before = read_services(program)
    base = int(IPv4Address("10.64.0.0"))
    eps = tuple(Endpoint(IPv4Address(base + i), (EndpointPort("", 8080, "TCP"),), "node1", None)
                for i in range(0x10000))
    huge = ServiceTable()
    for svc in small:
        huge.add(svc)
    huge.add(Service("default", "huge", "ClusterIP", IPv4Address("10.96.0.99"),
                     (ServicePort("", 80, "TCP", 8080),), endpoints=eps))
    ids_before = (dict(backend.ids["node1"].svc), dict(backend.ids["node1"].backend))
    with pytest.raises(RenderError, match=r"default/huge 10.96.0.99:80/TCP has 65,536 eligible endpoints; "
                                          r"the eBPF maps hold at most 65,535"):
        backend.sync(None, huge)
    after = read_services(program)
    assert after.services == before.services and after.backends == before.backends
    assert (backend.ids["node1"].svc, backend.ids["node1"].backend) == ids_before   # no id allocated or freed
