"""Trace events of the BPF programs (bpf/lib/trace.h), on BPF_PROG_TEST_RUN: one event per
decision with what it decided and why, none for traffic the programs leave alone, and none at all
while no reader has the flag set. The live reader on a lab: tests/lab/test_debugging.py."""
from __future__ import annotations

import pytest

from dataplane.backends.ebpf.program import from_be32
from dataplane.run.trace.bpf import decode
from tests.bpf.packets import CLIENT, VIP, WEB1, WEB2, ack, from_pod, parsed, syn, synack, table, to_pod, udp, IP


class Names:
    """decode's names, from the fixture program's own maps (no pins in BPF tests)."""

    def __init__(self, prog):
        self.prog = prog

    def frontend(self, svc_id):
        for k, v in self.prog.table("services").items():
            if k.slot == 0 and k.port and v.svc_id == svc_id:
                return f"{from_be32(k.vip)}:{k.port >> 8 | (k.port & 0xff) << 8}", None
        return None, None

    def backend(self, backend_id):
        t = self.prog.table("backends")
        for k, v in t.items():
            if k.value == backend_id:
                return f"{from_be32(v.addr)}:{v.port >> 8 | (v.port & 0xff) << 8}"
        return None

    def interface(self, ifindex):
        return f"if{ifindex}"


@pytest.fixture
def trace_of(pair, program):
    """trace_of(table, **pair options) -> (pair, events): the program with its trace flag set;
    events() drains the ring buffer and decodes what was in it."""
    got = []
    ring = program.table("trace_events")
    if not getattr(program, "_test_ring_open", False):
        ring.open_ring_buffer(lambda ctx, data, size: program._test_ring_sink(data, size))
        program._test_ring_open = True
    event_type = program.table("trace_scratch").sLeaf
    import ctypes as ct
    program._test_ring_sink = lambda data, size: got.append(
        event_type.from_buffer_copy(ct.string_at(data, ct.sizeof(event_type))))

    def make(tab, **kw):
        p = pair(tab, **kw)
        program.trace_flag(True)

        def events(decoded=True):
            program.bpf.ring_buffer_consume()
            out = [decode(ev, "node1", Names(program)) for ev in got] if decoded else list(got)
            got.clear()
            return out
        events()          # what an earlier test left unread
        return p, events

    yield make
    program.trace_flag(False)
    program.bpf.ring_buffer_consume()
    program._test_ring_sink = lambda data, size: None


@pytest.fixture
def traced(trace_of):
    return trace_of(table())


def test_a_new_flow_names_its_service_backend_and_choice(traced):
    p, events = traced
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    backend = parsed(got.data)[IP].dst
    [e] = events()
    assert e["hook"] == "from_pod" and e["outcome"] == "M_DNAT_NEW" and e["drop"] is None
    assert e["before"] == {"src": CLIENT, "sport": 40000, "dst": VIP, "dport": 80, "proto": "TCP", "flags": "S"}
    assert e["after"] == {"src": CLIENT, "sport": 40000, "dst": backend, "dport": 8080, "proto": "TCP"}
    assert e["frontend"] == f"{VIP}:80" and e["backend"] == f"{backend}:8080"
    assert e["choice"]["by"] == "hash" and e["choice"]["count"] == 2 and 1 <= e["choice"]["slot"] <= 2
    assert "new flow" in e["text"] and f"=> TCP {CLIENT}:40000 -> {backend}:8080" in e["text"]


def test_known_flow_and_its_reply_name_the_conntrack_entry(traced):
    p, events = traced
    got, _ = p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    backend = parsed(got.data)[IP].dst
    p.send("to_pod", to_pod(backend, CLIENT, synack()))
    p.send("from_pod", from_pod(CLIENT, VIP, ack()))
    new, reply, known = events()
    assert reply["hook"] == "to_pod" and reply["outcome"] == "M_REVNAT"
    assert reply["conntrack"]["entry"] == "CT_REPLY" and "seen_reply" in reply["conntrack"]["flags"]
    assert reply["after"]["src"] == VIP and reply["after"]["sport"] == 80
    assert reply["backend_id"] == new["backend_id"] and reply["svc_id"] == new["svc_id"]
    assert known["outcome"] == "M_DNAT" and known["conntrack"]["entry"] == "CT_SERVICE"
    assert known["after"]["dst"] == backend and known["conntrack"]["remaining"] > 0


def test_rejections_and_drops_are_named(traced):
    p, events = traced
    p.send("from_pod", from_pod(CLIENT, VIP, syn(dport=81)))        # a port the VIP does not serve
    p.send("from_pod", from_pod(CLIENT, VIP, ack(sport=40111)))     # mid-connection, no flow
    rejected, dropped = events()
    assert rejected["outcome"] == "REJECT_PORT_UNSERVED" and rejected["drop"] is None
    assert rejected["after"]["proto"] == "ICMP" and rejected["after"]["dst"] == CLIENT   # the ICMP error sent back
    assert "REJECT" in rejected["text"]
    assert dropped["outcome"] == "DROP_CT_LOST" and dropped["drop"] == "DROP_CT_LOST" and dropped["after"] is None
    assert "DROP DROP_CT_LOST" in dropped["text"]


def test_traffic_left_alone_makes_no_event(traced):
    p, events = traced
    p.send("from_pod", from_pod(CLIENT, WEB1, syn(dport=8080)))        # pod to pod
    p.send("from_pod", from_pod(CLIENT, "192.0.2.9", udp(dport=53)))    # out of the cluster, no service
    assert events() == []


def test_no_event_without_the_flag(traced, program):
    p, events = traced
    program.trace_flag(False)
    p.send("from_pod", from_pod(CLIENT, VIP, syn()))
    assert events() == []
    program.trace_flag(True)
    p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=40001)))
    [e] = events()
    assert e["before"]["sport"] == 40001 and e["after"]["dst"] in (WEB1, WEB2)


def test_an_affinity_choice_says_so(trace_of):
    from tests.bpf.test_clusterip import AFFINITY
    p, events = trace_of(table(services=AFFINITY), seed=11)
    p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=40001)))
    p.send("from_pod", from_pod(CLIENT, VIP, syn(sport=40002)))
    first, second = events()
    assert first["choice"]["by"] == "hash" and first["choice"]["slot"] >= 1 and first["also"] == []
    assert second["choice"] == {"by": "affinity", "hash": second["choice"]["hash"], "slot": 0, "count": 2}
    assert second["also"] == ["M_AFFINITY_HIT"] and second["backend"] == first["backend"]
    assert "by session affinity" in second["text"]


def test_a_masquerade_names_the_node_port_and_the_tries(trace_of):
    from ipaddress import IPv4Network
    from dataplane.contract.render import NodeConfig
    from dataplane.spec.table import ServiceTable
    from tests.bpf.harness import NODE_IP
    config = NodeConfig(NODE_IP, IPv4Network("10.0.0.0/16"), masquerade=True,
                        non_masquerade=(IPv4Network("10.0.0.0/16"),))
    p, events = trace_of(ServiceTable(), config=config)
    out = "10.128.1.1"
    p.send("to_netdev", from_pod(CLIENT, out, syn(sport=40000, dport=8080)))    # not a range port: a random one
    p.send("to_netdev", from_pod(CLIENT, out, syn(sport=62000, dport=8080)))    # in the range and free: kept
    p.send("to_netdev", from_pod("10.0.1.9", out, syn(sport=62000, dport=8080)))  # in the range, taken: moved
    random_port, kept, moved = events()
    for e in (random_port, kept, moved):
        assert e["hook"] == "to_netdev" and e["outcome"] == "M_SNAT_NEW" and e["after"]["src"] == str(NODE_IP)
        assert e["after"]["sport"] == e["snat"]["port"] and 61000 <= e["snat"]["port"] <= 65535
    assert random_port["snat"]["tries"] == 0 and kept["snat"] == {"port": 62000, "tries": 0}
    assert moved["snat"]["tries"] >= 1 and moved["snat"]["port"] != 62000 and moved["also"] == ["M_SNAT_PORT_MOVED"]
    assert "node port 62000" in kept["text"] and f"after {moved['snat']['tries']} tries" in moved["text"]


def test_a_full_ring_buffer_loses_events_counted_never_packets(trace_of, program, node_netns):
    """Nobody reads: the 1 MiB ring buffer fills (80-byte events and an 8-byte header each), and
    every further event is counted in M_TRACE_LOST while its packet is translated as ever."""
    from dataplane.backends.ebpf.testrun import run
    from dataplane.lab import netns
    p, events = trace_of(table())
    before = program.metrics()
    sent = 14000
    with netns.inside(node_netns):
        verdicts = {run(program.fns["from_pod"].fd, bytes(from_pod(CLIENT, VIP, syn(sport=20000 + i)))).verdict
                    for i in range(sent)}
    after = program.metrics()
    read = len(events(decoded=False))
    lost = after["M_TRACE_LOST"] - before["M_TRACE_LOST"]
    assert verdicts == {"pass"} and after["M_DNAT_NEW"] - before["M_DNAT_NEW"] == sent
    assert lost > 0 and read + lost == sent and read == (1 << 20) // 88
