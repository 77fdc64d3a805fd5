"""What `dataplane trace` prints and selects, without a kernel: a trace event decoded into words
(rows of event fields -> the outcome and the line), the selection by node, pod and service, and
the frontends' names. The events' capture: tests/bpf/test_trace.py; on a lab:
tests/lab/test_debugging.py."""
from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address
from types import SimpleNamespace

import pytest

from dataplane.contract.consts import DEFINES, INDEX
from dataplane.run.trace.bpf import decode
from dataplane.run.trace.session import Selection, select
from dataplane.spec.scenario import load
from dataplane.spec.table import frontend_names
from tests.conftest import SCENARIOS


def be32(ip: str) -> int:
    return struct.unpack("=I", IPv4Address(ip).packed)[0]


class Names:
    def frontend(self, svc_id):
        return ("10.96.0.10:80/TCP", "default/web:http (cluster IP)") if svc_id == 3 else (None, None)

    def backend(self, backend_id):
        return {7: "10.0.2.2:8080"}.get(backend_id)

    def interface(self, ifindex):
        return {4: "v-client"}.get(ifindex, f"if{ifindex}")


def event(**kw):
    fields = dict(time=1_000_000_000, ifindex=4, counted=0, verdict=0, hook=DEFINES["TRACE_HOOK_FROM_POD"], drop=0,
                  proto=6, tcp_flags=0x02, saddr=be32("10.0.1.2"), daddr=be32("10.96.0.10"),
                  sport=socket.htons(40000), dport=socket.htons(80), new_saddr=0, new_daddr=0, new_sport=0,
                  new_dport=0, new_proto=6, ct_dir=0, ct_flags=0, svc_id=0, backend_id=0, hash=0, slot=0, count=0,
                  snat_port=0, snat_tries=0, ct_remaining=0)
    fields.update(kw)
    return SimpleNamespace(**fields)


def bits(*names):
    return sum(1 << INDEX[n] for n in names)


AFTER = dict(new_saddr=be32("10.0.1.2"), new_daddr=be32("10.0.2.2"), new_sport=socket.htons(40000),
             new_dport=socket.htons(8080))


@pytest.mark.parametrize("fields,outcome,words", [
    (dict(counted=bits("M_DNAT_NEW"), svc_id=3, backend_id=7, hash=0xabc, slot=2, count=3, **AFTER),
     "M_DNAT_NEW", ["new flow (default/web:http (cluster IP); backend 10.0.2.2:8080 hash 0x00000abc slot 2/3)",
                    "=> TCP 10.0.1.2:40000 -> 10.0.2.2:8080"]),
    (dict(counted=bits("M_DNAT_NEW", "M_AFFINITY_HIT"), svc_id=3, backend_id=7, slot=0, count=3, **AFTER),
     "M_DNAT_NEW", ["backend 10.0.2.2:8080 by session affinity", "also affinity_hit"]),
    (dict(counted=bits("M_DNAT"), svc_id=3, backend_id=7, ct_dir=DEFINES["CT_SERVICE"],
          ct_flags=DEFINES["CT_F_SEEN_REPLY"], ct_remaining=86399, tcp_flags=0x10, **AFTER),
     "M_DNAT", ["DNAT (known flow)", "CT_SERVICE -> 10.0.2.2:8080, seen_reply, 86399s left", "[.]"]),
    (dict(drop=INDEX["DROP_CT_LOST"], tcp_flags=0x10), "DROP_CT_LOST", ["DROP DROP_CT_LOST"]),
    (dict(counted=bits("REJECT_PORT_UNSERVED"), dport=socket.htons(81), new_saddr=be32("10.96.0.10"),
          new_daddr=be32("10.0.1.2"), new_proto=1),
     "REJECT_PORT_UNSERVED", ["REJECT: port not served", "=> ICMP 10.96.0.10 -> 10.0.1.2"]),
    (dict(counted=bits("M_SNAT_NEW"), snat_port=socket.htons(61234), snat_tries=2, hook=DEFINES["TRACE_HOOK_TO_NETDEV"],
          ifindex=2, new_saddr=be32("10.240.0.1"), new_daddr=be32("10.96.0.10"), new_sport=socket.htons(61234),
          new_dport=socket.htons(80)),
     "M_SNAT_NEW", ["to_netdev(if2)", "new masquerade", "node port 61234 after 2 tries"]),
])
def test_an_event_in_words(fields, outcome, words):
    e = decode(event(**fields), "node1", Names())
    assert e["outcome"] == outcome and e["time"] == 1.0
    for w in words:
        assert w in e["text"], (w, e["text"])
    assert e["text"].split(" ", 2)[1] == "node1"


def test_an_untouched_packet_shows_no_after():
    e = decode(event(counted=bits("M_ICMP_REVNAT"), new_saddr=be32("10.0.1.2"), new_daddr=be32("10.96.0.10"),
                     new_sport=socket.htons(40000), new_dport=socket.htons(80)), "node1", Names())
    assert "=>" not in e["text"]


E1 = {"node": "node1", "before": {"src": "10.0.1.2", "dst": "10.96.0.10"}, "after": {"src": "10.0.1.2", "dst": "10.0.2.2"},
      "service": "default/web:http (cluster IP)"}
E2 = {"node": "node2", "packet": {"src": "10.0.2.9", "dst": "10.0.1.3"}}
E3 = {"node": "web-2", "src": "10.0.1.2", "dst": "10.0.2.2", "reason": "NO_SOCKET"}


@pytest.mark.parametrize("selection,wanted", [
    (Selection([]), [E1, E2, E3]),
    (Selection(["node1"]), [E1]),
    (Selection([], pod_addresses={"10.0.1.2"}), [E1, E3]),
    (Selection([], services={"default/web"}), [E1]),
    (Selection([], services={"default/web"}, service_addresses={"10.0.1.3"}), [E1, E2]),
    (Selection(["node2"], pod_addresses={"10.0.1.2"}), []),
])
def test_the_selection(selection, wanted):
    assert [e for e in (E1, E2, E3) if selection.wants(e)] == wanted


def test_select_names_what_the_lab_has():
    from dataplane.errors import LabError
    from dataplane.lab.state import LabRecord
    sc = load(SCENARIOS / "clusterip.yaml")
    rec = LabRecord("lab1", roles={"node1": "node", "node2": "node", "client": "pod", "web-1": "pod"},
                    addresses={"client": "10.0.1.2", "web-1": "10.0.1.3"})
    sel = select(rec, sc.services, ["node1"], ["client"], ["web"])
    assert sel.pod_addresses == {"10.0.1.2"} and sel.services == {"default/web"}
    assert {"10.96.0.10", "10.0.1.3", "10.0.2.2"} <= sel.service_addresses
    for args, message in ((["node9"], [], []), "no node named 'node9'; its nodes: node1, node2"), \
                         (([], ["web-9"], []), "no pod named 'web-9'; its pods: client, web-1"), \
                         (([], [], ["nope"]), "no service 'nope'; its services: default/closed, default/web"):
        with pytest.raises(LabError, match=message):
            select(rec, sc.services, *args)


def test_frontend_names():
    sc = load(SCENARIOS / "nodeport.yaml")
    names = frontend_names(sc.services, ["10.240.0.1"])
    assert names[("10.96.0.100", 80, "TCP")] == "default/web:http (cluster IP)"
    assert names[("10.240.0.1", 30053, "UDP")] == "default/web:dns (node port)"
    assert names[("10.240.0.1", 30081, "TCP")] == "default/web-local:80 (node port)"


@pytest.mark.parametrize("nft,letters", [("syn", "S"), ("syn | ack", "S."), ("0x18", "P."), ("0x11", "F."),
                                         ("rst", "R"), ("ack", ".")])
def test_netfilter_tcp_flags_read_as_the_ebpf_trace_writes_them(nft, letters):
    from dataplane.run.trace.netfilter import tcp_flag_letters
    assert tcp_flag_letters(nft) == letters


def test_events_come_out_in_time_order_and_stop_at_count(monkeypatch):
    """A netfilter event completes after a pause in its lines, so it can arrive after a later
    event of another reader: the session holds events back a moment and emits them by time."""
    from dataplane.run.trace import session as sess
    batches = [[{"time": 5.0, "n": "b"}], [{"time": 4.0, "n": "a"}, {"time": 9.0, "n": "d"}],
               [{"time": 6.0, "n": "c"}]]

    class Fake:
        def __init__(self, *a):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def start(self):
            return ["fake"]

        def poll(self):
            return batches.pop(0) if batches else []

        def lost(self):
            return 2

    monkeypatch.setattr(sess, "TraceSession", Fake)
    monkeypatch.setattr(sess, "REORDER_WINDOW", 1e9)        # hold everything until the end
    got = []
    shown, lost = sess.run(None, None, Selection([]), False, got.append, seconds=0.2, count=3)
    assert [e["n"] for e in got] == ["a", "b", "c"] and shown == 3 and lost == 2
