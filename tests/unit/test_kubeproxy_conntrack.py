"""Stale UDP conntrack entries as kube-proxy's CleanStaleEntries finds them: an entry to a UDP
service IP:port or node port must be answered by a serving endpoint, or it goes."""
from __future__ import annotations

from dataplane.backends.kubeproxy.conntrack import parse_entries, stale_filters
from tests.bpf.packets import table

TOPO = """\
name: t
topology:
  nodes: [node1]
  pods:
    - {name: a, node: node1, labels: {app: dns}}
    - {name: b, node: node1, labels: {app: dns}, ready: false}
"""
SVC = """\
services:
  - name: dns
    type: NodePort
    clusterIP: 10.96.0.10
    selector: {app: dns}
    ports: [{name: dns, port: 53, targetPort: 8080, protocol: UDP, nodePort: 30053}, {name: tcp, port: 80, targetPort: 8080}]
"""
# `conntrack -L -p udp` as conntrack-tools 1.4 prints it (10.0.1.2 is pod a, 10.0.0.3 pod b).
LISTING = """\
udp      17 29 src=10.0.0.9 dst=10.96.0.10 sport=40000 dport=53 src=10.0.1.2 dst=10.0.0.9 sport=8080 dport=40000 mark=0 use=1
udp      17 29 src=10.0.0.9 dst=10.96.0.10 sport=40001 dport=53 src=10.0.1.7 dst=10.0.0.9 sport=8080 dport=40001 mark=0 use=1
udp      17 29 src=10.0.0.9 dst=10.96.0.10 sport=40002 dport=53 [UNREPLIED] src=10.96.0.10 dst=10.0.0.9 sport=53 dport=40002 mark=0 use=1
udp      17 29 src=10.128.1.1 dst=10.240.0.1 sport=40003 dport=30053 src=10.0.1.7 dst=10.240.0.1 sport=8080 dport=40003 mark=0 use=1
udp      17 29 src=10.0.0.9 dst=10.96.0.10 sport=40005 dport=53 src=10.0.1.3 dst=10.0.0.9 sport=8080 dport=40005 mark=0 use=1
udp      17 29 src=10.0.0.9 dst=10.128.1.1 sport=40004 dport=53 src=10.128.1.1 dst=10.240.0.1 sport=53 dport=40004 mark=0 use=1
"""


def test_parse():
    e = parse_entries(LISTING)
    assert e[0] == {"orig_dst": "10.96.0.10", "orig_dport": 53, "reply_src": "10.0.1.2"}
    assert e[2]["reply_src"] == "10.96.0.10"     # rejected while there was no endpoint: not NATed
    assert len(e) == 6


def test_stale_entries_are_the_ones_not_answered_by_a_serving_endpoint():
    t = table(SVC, TOPO)
    got = stale_filters(parse_entries(LISTING), t)
    assert got == [
        ["--orig-dst", "10.96.0.10", "--orig-port-dst", "53", "--reply-src", "10.0.1.7"],    # endpoint gone
        ["--orig-dst", "10.96.0.10", "--orig-port-dst", "53", "--reply-src", "10.96.0.10"],  # REJECT leftover
        ["--orig-port-dst", "30053", "--reply-src", "10.0.1.7"],                              # node port
        ["--orig-dst", "10.96.0.10", "--orig-port-dst", "53", "--reply-src", "10.0.1.3"],    # not serving
    ]


def test_a_service_without_serving_endpoints_is_left_alone():
    t = table(SVC.replace("selector: {app: dns}", "selector: {app: nothing}"), TOPO)
    assert stale_filters(parse_entries(LISTING), t) == []
