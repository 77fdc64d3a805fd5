"""Packet generation for BPF fixtures (scapy). Addresses follow tests.helpers.BASE with a
ClusterIP service: client 10.0.1.2 on node1; web-1 10.0.1.3 (node1); web-2 10.0.2.2 (node2)."""
from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror  # noqa: F401  (for tests)
from scapy.layers.l2 import ARP, Ether  # noqa: F401

from dataplane.spec.scenario import load
from tests.helpers import BASE

POD_MAC, NODE_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:01"
CLIENT, WEB1, WEB2 = "10.0.1.2", "10.0.1.3", "10.0.2.2"
VIP = "10.96.0.10"
NODE1, NODE2 = "10.240.0.1", "10.240.0.2"

WEB_SERVICE = """\
services:
  - name: web
    clusterIP: 10.96.0.10
    selector: {app: web}
    ports:
      - {name: http, port: 80, targetPort: 8080}
      - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
      - {name: dns-tcp, port: 53, targetPort: 5354, protocol: TCP}
"""

# the web service with internalTrafficPolicy Local: only node-local endpoints serve it
WEB_ONLY_LOCAL = """\
services:
  - name: web
    clusterIP: 10.96.0.10
    selector: {app: web}
    internalTrafficPolicy: Local
    ports: [{name: http, port: 80, targetPort: 8080}]
"""


def table(services: str = WEB_SERVICE, topology: str = BASE):
    """A ServiceTable from scenario text (services appended to a topology)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "s.yaml"
        p.write_text(textwrap.dedent(topology) + textwrap.dedent(services))
        return load(p).services


def from_pod(src, dst, l4):
    """A frame a pod sends to its node (destination MAC: the node side of the veth)."""
    return Ether(src=POD_MAC, dst=NODE_MAC) / IP(src=src, dst=dst, id=1) / l4


def to_pod(src, dst, l4):
    """A frame the node sends to a pod."""
    return Ether(src=NODE_MAC, dst=POD_MAC) / IP(src=src, dst=dst, id=2) / l4


def syn(sport=40000, dport=80):
    return TCP(sport=sport, dport=dport, flags="S", seq=1000)


def synack(sport=8080, dport=40000):
    return TCP(sport=sport, dport=dport, flags="SA", seq=5000, ack=1001)


def ack(sport=40000, dport=80):
    return TCP(sport=sport, dport=dport, flags="A", seq=1001, ack=5001)


def udp(sport=40000, dport=53, payload=b"hostname"):
    return UDP(sport=sport, dport=dport) / payload


def parsed(data: bytes):
    return Ether(data)


def checksums_valid(data: bytes) -> bool:
    """The outer IP checksum and the L4 one (ICMP's, for an ICMP message) are what scapy computes
    from scratch. A UDP checksum of 0 means none."""
    pkt = Ether(data)
    layers = [IP] + ([ICMP] if ICMP in pkt else [layer for layer in (TCP, UDP) if layer in pkt])
    for layer in layers:
        got = pkt[layer].chksum
        if layer is UDP and got == 0:
            continue
        fresh = pkt.copy()
        del fresh[layer].chksum
        if Ether(bytes(fresh))[layer].chksum != got:
            return False
    return True
