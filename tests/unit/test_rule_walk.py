"""The rule walkers of kube-proxy's two modes (backends/iptables/walk.py, backends/nftables/walk.py):
one new packet followed through the rules, as kube-proxy's own packet-flow tracers do in its
tests. On rules this project renders from small service tables, on kube-proxy's own expected
output (tests/data/kube-proxy, with the cases of kube-proxy's TestTracePacket), and on what a node
prints (`iptables-save`, `nft list table ip kube-proxy`), hand-made from a rendered table with
those tools' conventions."""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address as A

import pytest

from dataplane.backends.iptables.render import render as render_iptables
from dataplane.backends.iptables.walk import parse_save, walk_iptables
from dataplane.backends.kubeproxy.walk import Packet
from dataplane.backends.nftables.render import render as render_nftables
from dataplane.backends.nftables.walk import parse_nft, walk_nftables
from dataplane.errors import DataplaneError
from dataplane.spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable
from tests.conftest import ROOT
from tests.unit.kubeproxy_fixture import NODE, SPEC

DATA = ROOT / "tests" / "data" / "kube-proxy"
NODE_IP = "192.168.0.2"                 # SPEC's test-node; pod CIDR 10.0.0.0/8, services 172.30.0.0/16
WALKERS = {"iptables": walk_iptables, "nftables": walk_nftables}
WEB, EMPTY, NODEPORT, LOCAL, SOLO, STICKY, DNS = (f"172.30.0.{i}" for i in range(10, 17))


# -- the service table ----------------------------------------------------------------------------

def ep(ip: str, node: str = "other", protocol: str = "TCP", port: int = 8080) -> Endpoint:
    return Endpoint(A(ip), (EndpointPort("http", port, protocol),), node, None)


def http(node_port: int | None = None, protocol: str = "TCP", port: int = 80) -> tuple[ServicePort, ...]:
    return (ServicePort("http", port, protocol, "http", node_port),)


def listed_table() -> ServiceTable:
    """The part the hand-made node listings below hold: three endpoints, none, eTP Local."""
    t = ServiceTable()
    t.add(Service("ns", "web", "ClusterIP", A(WEB), http(), endpoints=(ep("10.0.1.1"), ep("10.0.1.2"), ep("10.0.1.3"))))
    t.add(Service("ns", "empty", "ClusterIP", A(EMPTY), http()))
    t.add(Service("ns", "local", "NodePort", A(LOCAL), http(30081), external_traffic_policy="Local",
                  endpoints=(ep("10.0.3.1"),)))
    return t


def table() -> ServiceTable:
    t = listed_table()
    t.add(Service("ns", "np", "NodePort", A(NODEPORT), http(30080), endpoints=(ep("10.0.2.1"),)))
    t.add(Service("ns", "solo", "ClusterIP", A(SOLO), http(), endpoints=(ep("10.0.4.1"),)))
    t.add(Service("ns", "sticky", "ClusterIP", A(STICKY), http(), session_affinity="ClientIP",
                  endpoints=(ep("10.0.5.1"), ep("10.0.5.2"))))
    t.add(Service("ns", "dns", "ClusterIP", A(DNS), http(protocol="UDP", port=53),
                  endpoints=(ep("10.0.6.1", protocol="UDP", port=5353),)))
    return t


RENDERED = {"iptables": render_iptables(table(), SPEC, NODE).restore_text(),
            "nftables": render_nftables(table(), SPEC, NODE).full_text()}


def pod(dst: str, dport: int, src: str = "10.0.0.5", protocol: str = "TCP") -> Packet:
    return Packet(src, dst, protocol, dport, local_addresses=(NODE_IP,))


def outside(dst: str, dport: int, src: str = "203.0.113.5") -> Packet:
    return Packet(src, dst, "TCP", dport, local_addresses=(NODE_IP,))


def on_node(dst: str, dport: int) -> Packet:
    return Packet(NODE_IP, dst, "TCP", dport, origin="local", local_addresses=(NODE_IP,))


def outcome(walk) -> tuple:
    return walk.verdict, walk.endpoint, walk.masquerade


# -- rendered rules: one row per situation, both modes -------------------------------------------

@dataclass(frozen=True)
class Row:
    name: str
    packet: Packet
    iptables: tuple                   # (verdict, endpoint, masquerade)
    nftables: tuple
    pick: int | None = None


def both(verdict: str, endpoint: str | None = None, masquerade: bool = False) -> dict:
    return {"iptables": (verdict, endpoint, masquerade), "nftables": (verdict, endpoint, masquerade)}


ROWS = [
    Row("cluster IP, 3 endpoints, pick 0", pod(WEB, 80), **both("DNAT", "10.0.1.1:8080"), pick=0),
    Row("cluster IP, 3 endpoints, pick 1", pod(WEB, 80), **both("DNAT", "10.0.1.2:8080"), pick=1),
    Row("cluster IP, 3 endpoints, pick 2", pod(WEB, 80), **both("DNAT", "10.0.1.3:8080"), pick=2),
    # docs/differences.md, cluster-ip-unserved-port: nftables' cluster-ips-check rejects; iptables
    # mode has no rule for it and lets the packet be routed on untranslated
    Row("a port the cluster IP does not serve", pod(WEB, 81),
        iptables=("ACCEPT", None, False), nftables=("REJECT", None, False)),
    Row("an unallocated address of the service CIDR", pod("172.30.0.99", 80),
        iptables=("ACCEPT", None, False), nftables=("DROP", None, False)),
    Row("a service without endpoints", pod(EMPTY, 80), **both("REJECT")),
    Row("node port from outside, eTP Cluster", outside(NODE_IP, 30080), **both("DNAT", "10.0.2.1:8080", True)),
    Row("node port from outside, eTP Local, no endpoint on this node", outside(NODE_IP, 30081), **both("DROP")),
    Row("node port from a pod, eTP Local: short-circuit to every endpoint", pod(NODE_IP, 30081),
        **both("DNAT", "10.0.3.1:8080")),
    Row("client outside the cluster CIDR to a cluster IP", outside(WEB, 80), **both("DNAT", "10.0.1.1:8080", True)),
    Row("the node itself to a cluster IP", on_node(WEB, 80), **both("DNAT", "10.0.1.1:8080", True)),
    Row("the node itself to an eTP Local node port", on_node(NODE_IP, 30081), **both("DNAT", "10.0.3.1:8080", True)),
    Row("nothing of kube-proxy's", pod("8.8.8.8", 53, protocol="UDP"), **both("ACCEPT")),
    Row("hairpin: the endpoint is the client", pod(SOLO, 80, src="10.0.4.1"), **both("DNAT", "10.0.4.1:8080", True)),
    Row("UDP cluster IP", pod(DNS, 53, protocol="UDP"), **both("DNAT", "10.0.6.1:5353")),
    Row("TCP to a UDP service's port", pod(DNS, 53),
        iptables=("ACCEPT", None, False), nftables=("REJECT", None, False)),
    Row("session affinity, first packet", pod(STICKY, 80), **both("DNAT", "10.0.5.1:8080")),
]


@pytest.mark.parametrize("mode", WALKERS)
@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_rendered_rules(row, mode):
    walk = WALKERS[mode](RENDERED[mode], row.packet, pick=row.pick)
    assert outcome(walk) == getattr(row, mode), "\n".join(f"{s.chain}: {s.action}" for s in walk.steps)
    if walk.verdict == "DNAT":
        assert [s.action for s in walk.steps].count(f"DNAT to {walk.endpoint}") == 1


@pytest.mark.parametrize("mode", WALKERS)
@pytest.mark.parametrize("pick", [None, 0, 1, 2])
def test_three_endpoints_are_candidates_one_third_each(mode, pick):
    walk = WALKERS[mode](RENDERED[mode], pod(WEB, 80), pick=pick)
    assert [c.endpoint for c in walk.candidates] == ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"]
    assert [c.probability for c in walk.candidates] == pytest.approx([1 / 3] * 3, abs=1e-9)
    assert len({c.chain for c in walk.candidates}) == 3
    assert walk.picked == (pick or 0)
    assert walk.endpoint == walk.candidates[pick or 0].endpoint
    assert any(s.action == f"random 1/3 -> {walk.candidates[pick or 0].chain}" for s in walk.steps)


@pytest.mark.parametrize("packet", [pod(WEB, 80), pod(SOLO, 80), pod(STICKY, 80), outside(NODE_IP, 30080),
                                    pod(NODE_IP, 30081), pod(DNS, 53, protocol="UDP")],
                         ids=["three", "one", "affinity", "node-port", "etp-local-short-circuit", "udp"])
def test_both_modes_agree_on_candidates(packet):
    found = {mode: sorted((c.endpoint, round(c.probability, 9)) for c in walk(RENDERED[mode], packet).candidates)
             for mode, walk in WALKERS.items()}
    assert found["iptables"] == found["nftables"] and found["iptables"]


@pytest.mark.parametrize("mode", WALKERS)
def test_masquerade_mark_then_masquerade(mode):
    """A client outside the cluster CIDR: the service chain marks it, postrouting masquerades."""
    walk = WALKERS[mode](RENDERED[mode], outside(WEB, 80))
    actions = [s.action for s in walk.steps]
    assert "mark for masquerade (0x4000)" in actions
    assert actions[-1].startswith("masquerade")
    assert actions.index("mark for masquerade (0x4000)") < actions.index(f"DNAT to {walk.endpoint}")


@pytest.mark.parametrize("mode", WALKERS)
def test_affinity_is_noted(mode):
    walk = WALKERS[mode](RENDERED[mode], pod(STICKY, 80), pick=1)
    remembered = [a for a in walk.affinity if "would go to" in a]
    assert [a.split(" would go to ")[1].split()[0] for a in remembered] == ["10.0.5.1:8080", "10.0.5.2:8080"]
    assert any("remembered in" in a for a in walk.affinity)
    assert walk.endpoint == "10.0.5.2:8080"


def test_rendered_iptables_gets_kube_proxys_jumps_and_says_so():
    walk = walk_iptables(RENDERED["iptables"], pod(WEB, 80))
    first = walk.steps[0]
    assert (first.table, first.chain, first.action) == ("nat", "PREROUTING", "jump KUBE-SERVICES (kube-proxy's jump "
                                                         "from PREROUTING, assumed: not in the text)")
    assert first.rule == '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    assert walk.notes and "assumed" in walk.notes[0]


# -- kube-proxy's own expected output, with the cases of its TestTracePacket --------------------

GOLDEN = {"iptables": (DATA / "iptables-overall.txt").read_text(),
          "nftables": (DATA / "nftables-overall.txt").read_text()}
# kube-proxy's tracer runs the PREROUTING path for every packet, the node's own address as a
# source included ("LOCAL, KUBE-MARK-MASQ"): so do these rows.
GOLDEN_ROWS = [
    ("no match", "10.0.0.2", "10.0.0.3", 80, both("ACCEPT")),
    ("single endpoint", "10.0.0.2", "172.30.0.41", 80, both("DNAT", "10.180.0.1:80")),
    ("multiple endpoints", "10.0.0.2", "172.30.0.44", 80, both("DNAT", "10.180.0.4:80")),
    ("LOCAL, KUBE-MARK-MASQ", NODE_IP, "192.168.99.22", 80, both("DNAT", "10.180.0.2:80", True)),
    ("DROP", "203.0.113.2", "192.168.99.22", 80, both("DROP")),
    ("ACCEPT (NodePortHealthCheck)", "203.0.113.2", NODE_IP, 30000, both("ACCEPT")),
    ("REJECT", "10.0.0.2", "172.30.0.46", 80, both("REJECT")),
    ("node port, eTP Cluster", "203.0.113.2", NODE_IP, 3003, both("DNAT", "10.180.0.3:80", True)),
    ("load balancer, source allowed", "203.0.113.2", "5.6.7.8", 80, both("DNAT", "10.180.0.3:80", True)),
    ("load balancer, source not allowed", "203.0.113.200", "5.6.7.8", 80, both("DROP")),
]


@pytest.mark.parametrize("mode", WALKERS)
@pytest.mark.parametrize("name,src,dst,dport,expected", GOLDEN_ROWS, ids=[r[0] for r in GOLDEN_ROWS])
def test_kube_proxys_expected_output(name, src, dst, dport, expected, mode):
    walk = WALKERS[mode](GOLDEN[mode], Packet(src, dst, "TCP", dport, local_addresses=(NODE_IP,)))
    assert outcome(walk) == expected[mode]


@pytest.mark.parametrize("mode", WALKERS)
def test_kube_proxys_two_endpoints(mode):
    walk = WALKERS[mode](GOLDEN[mode], Packet("10.0.0.2", "172.30.0.44", "TCP", 80), pick=1)
    assert [(c.endpoint, c.probability) for c in walk.candidates] == [("10.180.0.4:80", 0.5), ("10.180.0.5:80", 0.5)]
    assert walk.endpoint == "10.180.0.5:80"


def test_kube_proxys_localhost_node_port():
    """iptables mode's localhost node ports (route_localnet): the node to 127.0.0.1:3001."""
    packet = Packet("127.0.0.1", "127.0.0.1", "TCP", 3001, origin="local", local_addresses=(NODE_IP,))
    walk = walk_iptables(GOLDEN["iptables"], packet)
    assert outcome(walk) == ("DNAT", "10.180.0.2:80", True)
    assert "-m nfacct" in next(s.rule for s in walk.steps if s.chain == "KUBE-NODEPORTS")


def test_nftables_drops_the_nodes_own_traffic_to_an_etp_local_external_ip():
    """What kube-proxy 1.31's nftables rules do (kubernetes#131765, fixed later upstream): the
    node's own connection to an eTP Local external IP without a local endpoint meets
    service-endpoints-check in filter-output, before nat-output; iptables mode serves it."""
    packet = on_node("192.168.99.22", 80)
    assert outcome(walk_nftables(GOLDEN["nftables"], packet)) == ("DROP", None, False)
    assert outcome(walk_iptables(GOLDEN["iptables"], packet)) == ("DNAT", "10.180.0.2:80", True)


# -- what a node prints ---------------------------------------------------------------------------

# `nft list table ip kube-proxy` (nft 1.0, `-a` on one block) of listed_table() on test-node,
# hand-converted from the rendered transaction with nft's listing conventions: priorities by name
# where nft names them, `meta mark` operators, a single-element anonymous set without braces,
# elements wrapped over lines, base chain policies, comments.
NFT_LISTING = """\
table ip kube-proxy { # handle 7
	comment "rules for kube-proxy"
	set cluster-ips { # handle 12
		type ipv4_addr
		comment "Active ClusterIPs"
		elements = { 172.30.0.10, 172.30.0.11,
			     172.30.0.13 }
	}

	set nodeport-ips {
		type ipv4_addr
		comment "IPs that accept NodePort traffic"
		elements = { 192.168.0.2 }
	}

	map no-endpoint-services {
		type ipv4_addr . inet_proto . inet_service : verdict
		comment "vmap to drop or reject packets to services with no endpoints"
		elements = { 172.30.0.11 . tcp . 80 comment "ns/empty:http" : goto reject-chain }
	}

	map no-endpoint-nodeports {
		type inet_proto . inet_service : verdict
		comment "vmap to drop or reject packets to service nodeports with no endpoints"
		elements = { tcp . 30081 comment "ns/local:http" : drop }
	}

	map firewall-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		comment "destinations that are subject to LoadBalancerSourceRanges"
	}

	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		comment "ClusterIP, ExternalIP and LoadBalancer IP traffic"
		elements = { 172.30.0.10 . tcp . 80 : goto service-Y6QD5CCT-ns/web/tcp/http,
			     172.30.0.13 . tcp . 80 : goto service-ZQLOCEUT-ns/local/tcp/http }
	}

	map service-nodeports {
		type inet_proto . inet_service : verdict
		comment "NodePort traffic"
		elements = { tcp . 30081 : goto external-ZQLOCEUT-ns/local/tcp/http }
	}

	chain filter-prerouting {
		type filter hook prerouting priority dstnat - 10; policy accept;
		ct state new jump firewall-check
	}

	chain filter-input {
		type filter hook input priority -110; policy accept;
		ct state new jump nodeport-endpoints-check
		ct state new jump service-endpoints-check
	}

	chain filter-forward {
		type filter hook forward priority -110; policy accept;
		ct state new jump service-endpoints-check
		ct state new jump cluster-ips-check
	}

	chain filter-output {
		type filter hook output priority -110; policy accept;
		ct state new jump service-endpoints-check
		ct state new jump firewall-check
	}

	chain filter-output-post-dnat {
		type filter hook output priority -90; policy accept;
		ct state new jump cluster-ips-check
	}

	chain nat-prerouting { # handle 3
		type nat hook prerouting priority dstnat; policy accept;
		jump services # handle 41
	}

	chain nat-output {
		type nat hook output priority -100; policy accept;
		jump services
	}

	chain nat-postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		jump masquerading
	}

	chain nodeport-endpoints-check {
		ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
	}

	chain service-endpoints-check {
		ip daddr . meta l4proto . th dport vmap @no-endpoint-services
	}

	chain firewall-check {
		ip daddr . meta l4proto . th dport vmap @firewall-ips
	}

	chain services {
		ip daddr . meta l4proto . th dport vmap @service-ips
		ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
	}

	chain masquerading {
		meta mark & 0x00004000 == 0x00000000 return
		meta mark set meta mark ^ 0x00004000
		masquerade fully-random
	}

	chain cluster-ips-check {
		ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
		ip daddr 172.30.0.0/16 drop comment "Drop traffic to unallocated ClusterIPs"
	}

	chain mark-for-masquerade {
		meta mark set meta mark | 0x00004000
	}

	chain reject-chain {
		comment "helper for @no-endpoint-services / @no-endpoint-nodeports"
		reject
	}

	chain service-ZQLOCEUT-ns/local/tcp/http {
		ip daddr 172.30.0.13 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
		numgen random mod 1 vmap { 0 : goto endpoint-POMDQ3PO-ns/local/tcp/http__10.0.3.1/8080 }
	}

	chain external-ZQLOCEUT-ns/local/tcp/http {
		ip saddr 10.0.0.0/8 goto service-ZQLOCEUT-ns/local/tcp/http comment "short-circuit pod traffic"
		fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"
		fib saddr type local goto service-ZQLOCEUT-ns/local/tcp/http comment "short-circuit local traffic"
	}

	chain endpoint-POMDQ3PO-ns/local/tcp/http__10.0.3.1/8080 {
		ip saddr 10.0.3.1 jump mark-for-masquerade
		meta l4proto tcp dnat to 10.0.3.1:8080
	}

	chain service-Y6QD5CCT-ns/web/tcp/http {
		ip daddr 172.30.0.10 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
		numgen random mod 3 vmap { 0 : goto endpoint-5NQGJ3UR-ns/web/tcp/http__10.0.1.1/8080, 1 : goto endpoint-HJTX2ZR5-ns/web/tcp/http__10.0.1.2/8080, 2 : goto endpoint-FDEE62MW-ns/web/tcp/http__10.0.1.3/8080 }
	}

	chain endpoint-5NQGJ3UR-ns/web/tcp/http__10.0.1.1/8080 {
		ip saddr 10.0.1.1 jump mark-for-masquerade
		meta l4proto tcp dnat to 10.0.1.1:8080
	}

	chain endpoint-HJTX2ZR5-ns/web/tcp/http__10.0.1.2/8080 {
		ip saddr 10.0.1.2 jump mark-for-masquerade
		meta l4proto tcp dnat to 10.0.1.2:8080
	}

	chain endpoint-FDEE62MW-ns/web/tcp/http__10.0.1.3/8080 {
		ip saddr 10.0.1.3 jump mark-for-masquerade
		meta l4proto tcp dnat to 10.0.1.3:8080
	}
}
"""

# `iptables-save` (iptables-nft 1.8.9) of listed_table() on test-node with the lab's ip-masq-agent
# rules, hand-converted from the rendered restore text with iptables-save's conventions: policies
# and counters, the jumps from the built-in chains, `-s/-d` as /32 printed first, `-p tcp` before
# the matches, MARK as --set-xmark, the kernel's probability, REJECT's --reject-with, the kubelet's
# mangle chains.
IPTABLES_SAVE = """\
# Generated by iptables-save v1.8.9 (nf_tables) on Tue Nov 25 10:12:01 2026
*mangle
:PREROUTING ACCEPT [4521:371204]
:INPUT ACCEPT [3012:250110]
:FORWARD ACCEPT [1509:121094]
:OUTPUT ACCEPT [2990:247001]
:POSTROUTING ACCEPT [4499:368095]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
# Completed on Tue Nov 25 10:12:01 2026
# Generated by iptables-save v1.8.9 (nf_tables) on Tue Nov 25 10:12:01 2026
*filter
:INPUT ACCEPT [3012:250110]
:FORWARD ACCEPT [1509:121094]
:OUTPUT ACCEPT [2990:247001]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "ns/local:http has no local endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 30081 -j DROP
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-SERVICES -d 172.30.0.11/32 -p tcp -m comment --comment "ns/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
# Completed on Tue Nov 25 10:12:01 2026
# Generated by iptables-save v1.8.9 (nf_tables) on Tue Nov 25 10:12:01 2026
*nat
:PREROUTING ACCEPT [12:720]
:INPUT ACCEPT [3:180]
:OUTPUT ACCEPT [40:2400]
:POSTROUTING ACCEPT [49:2940]
:IP-MASQ-AGENT - [0:0]
:KUBE-EXT-4J67NORYSBPZY3ZF - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-4GV34CNABKMJQVWO - [0:0]
:KUBE-SEP-7PRBQQV2WF3EVFJB - [0:0]
:KUBE-SEP-JG4FTMLX3EDSXJMM - [0:0]
:KUBE-SEP-RCWKMGR5Z4NGZFLT - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-4J67NORYSBPZY3ZF - [0:0]
:KUBE-SVC-HMALVVKA6APKJPPY - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
-A IP-MASQ-AGENT -d 169.254.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 10.0.0.0/8 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
-A KUBE-EXT-4J67NORYSBPZY3ZF -s 10.0.0.0/8 -m comment --comment "pod traffic for ns/local:http external destinations" -j KUBE-SVC-4J67NORYSBPZY3ZF
-A KUBE-EXT-4J67NORYSBPZY3ZF -m comment --comment "masquerade LOCAL traffic for ns/local:http external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-4J67NORYSBPZY3ZF -m comment --comment "route LOCAL traffic for ns/local:http external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-4J67NORYSBPZY3ZF
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODEPORTS -p tcp -m comment --comment "ns/local:http" -m tcp --dport 30081 -j KUBE-EXT-4J67NORYSBPZY3ZF
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-4GV34CNABKMJQVWO -s 10.0.1.3/32 -m comment --comment "ns/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-4GV34CNABKMJQVWO -p tcp -m comment --comment "ns/web:http" -m tcp -j DNAT --to-destination 10.0.1.3:8080
-A KUBE-SEP-7PRBQQV2WF3EVFJB -s 10.0.3.1/32 -m comment --comment "ns/local:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-7PRBQQV2WF3EVFJB -p tcp -m comment --comment "ns/local:http" -m tcp -j DNAT --to-destination 10.0.3.1:8080
-A KUBE-SEP-JG4FTMLX3EDSXJMM -s 10.0.1.1/32 -m comment --comment "ns/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-JG4FTMLX3EDSXJMM -p tcp -m comment --comment "ns/web:http" -m tcp -j DNAT --to-destination 10.0.1.1:8080
-A KUBE-SEP-RCWKMGR5Z4NGZFLT -s 10.0.1.2/32 -m comment --comment "ns/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-RCWKMGR5Z4NGZFLT -p tcp -m comment --comment "ns/web:http" -m tcp -j DNAT --to-destination 10.0.1.2:8080
-A KUBE-SERVICES -d 172.30.0.13/32 -p tcp -m comment --comment "ns/local:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-4J67NORYSBPZY3ZF
-A KUBE-SERVICES -d 172.30.0.10/32 -p tcp -m comment --comment "ns/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-HMALVVKA6APKJPPY
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-4J67NORYSBPZY3ZF ! -s 10.0.0.0/8 -d 172.30.0.13/32 -p tcp -m comment --comment "ns/local:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-4J67NORYSBPZY3ZF -m comment --comment "ns/local:http -> 10.0.3.1:8080" -j KUBE-SEP-7PRBQQV2WF3EVFJB
-A KUBE-SVC-HMALVVKA6APKJPPY ! -s 10.0.0.0/8 -d 172.30.0.10/32 -p tcp -m comment --comment "ns/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-HMALVVKA6APKJPPY -m comment --comment "ns/web:http -> 10.0.1.1:8080" -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-JG4FTMLX3EDSXJMM
-A KUBE-SVC-HMALVVKA6APKJPPY -m comment --comment "ns/web:http -> 10.0.1.2:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-RCWKMGR5Z4NGZFLT
-A KUBE-SVC-HMALVVKA6APKJPPY -m comment --comment "ns/web:http -> 10.0.1.3:8080" -j KUBE-SEP-4GV34CNABKMJQVWO
COMMIT
# Completed on Tue Nov 25 10:12:01 2026
"""

LISTED = {"iptables": render_iptables(listed_table(), SPEC, NODE).restore_text(),
          "nftables": render_nftables(listed_table(), SPEC, NODE).full_text()}
FROM_NODE = {"iptables": IPTABLES_SAVE, "nftables": NFT_LISTING}
# Packets whose walk must not depend on the form the rules were read in (ip-masq-agent, in the
# node's iptables only, leaves these alone: their destinations are pods or the node).
SAME_WALK = [pod(WEB, 80), outside(WEB, 80), on_node(WEB, 80), pod(EMPTY, 80), outside(NODE_IP, 30081),
             pod(NODE_IP, 30081), on_node(NODE_IP, 30081), pod(WEB, 80, src="10.0.1.3")]


def test_nft_listing_reads_as_the_rendered_table():
    listed, rendered = parse_nft(NFT_LISTING)["ip kube-proxy"], parse_nft(LISTED["nftables"])["ip kube-proxy"]
    assert set(listed.chains) == set(rendered.chains)
    assert {n: (c.hook, c.kind, c.priority, len(c.rules)) for n, c in listed.chains.items()} == \
        {n: (c.hook, c.kind, c.priority, len(c.rules)) for n, c in rendered.chains.items()}
    assert {n: sorted(s.elements, key=str) for n, s in listed.sets.items()} == \
        {n: sorted(s.elements, key=str) for n, s in rendered.sets.items()}
    assert listed.chains["filter-prerouting"].priority == -110 and listed.chains["nat-postrouting"].priority == 100


@pytest.mark.parametrize("mode", WALKERS)
@pytest.mark.parametrize("packet", SAME_WALK, ids=lambda p: f"{p.origin}-{p.src}-{p.dst}:{p.dport}")
def test_node_listing_walks_as_the_rendered_rules(mode, packet):
    """The node's own printout of the same table gives the same walk: outcome, candidates and,
    for nftables (whose chains are all in the one table), every step's chain and action."""
    pick = 1 if packet.dst == WEB else None
    ours, nodes = (WALKERS[mode](text, packet, pick=pick) for text in (LISTED[mode], FROM_NODE[mode]))
    assert outcome(nodes) == outcome(ours)
    assert [(c.endpoint, round(c.probability, 6)) for c in nodes.candidates] == \
        [(c.endpoint, round(c.probability, 6)) for c in ours.candidates]
    if mode == "nftables":
        assert [(s.chain, s.action) for s in nodes.steps] == [(s.chain, s.action) for s in ours.steps]
    else:
        assert not nodes.notes                  # the node's jumps are in its text: nothing assumed


def test_iptables_save_from_a_node_egress_masquerade():
    """ip-masq-agent's chain, in the node's nat POSTROUTING, masquerades a pod's traffic out."""
    walk = walk_iptables(IPTABLES_SAVE, pod("8.8.8.8", 443))
    assert outcome(walk) == ("ACCEPT", None, True)
    assert (walk.steps[-1].chain, walk.steps[-1].action) == ("IP-MASQ-AGENT", "masquerade (random-fully)")


def test_iptables_save_mark_forms():
    """`--set-xmark 0x4000/0x4000` sets the bit, `--set-xmark 0x4000/0x0` flips it back off."""
    walk = walk_iptables(IPTABLES_SAVE, outside(WEB, 80))
    marks = [s.action for s in walk.steps if "-j MARK" in s.rule]
    assert marks == ["mark for masquerade (0x4000)", "set mark 0x0"]
    assert walk.masquerade


# -- what the walkers refuse --------------------------------------------------------------------

IPT_HEAD = "*filter\n:FORWARD ACCEPT [0:0]\n"
NFT_HEAD = "table ip t {\n\tchain f {\n\t\ttype filter hook forward priority 0; policy accept;\n"
REFUSED = [
    ("iptables: an ipset match", walk_iptables,
     IPT_HEAD + "-A FORWARD -p tcp -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\nCOMMIT\n", "-m set"),
    ("iptables: an unknown option of a known match", walk_iptables,
     IPT_HEAD + "-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j ACCEPT\nCOMMIT\n", "--tcp-flags"),
    ("iptables: an unknown target", walk_iptables,
     IPT_HEAD + "-A FORWARD -p tcp -j CONNMARK --set-mark 1\nCOMMIT\n", "CONNMARK"),
    ("iptables: an interface without the packet's", walk_iptables,
     IPT_HEAD + "-A FORWARD -i eth0 -j ACCEPT\nCOMMIT\n", "in_interface"),
    ("iptables: a rule outside a table", walk_iptables, "-A FORWARD -j ACCEPT\n", "outside a table"),
    ("nftables: an unknown expression", walk_nftables, NFT_HEAD + "\t\tmeta skuid 0 drop\n\t}\n}\n", "meta skuid"),
    ("nftables: a fib type other than local", walk_nftables,
     NFT_HEAD + "\t\tfib daddr type broadcast drop\n\t}\n}\n", "only local"),
    ("nftables: a jump to no chain", walk_nftables, NFT_HEAD + "\t\tjump nowhere\n\t}\n}\n", "nowhere"),
    ("nftables: an unclosed block", walk_nftables, NFT_HEAD, "not closed"),
]


@pytest.mark.parametrize("name,walker,text,says", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_with_the_rule_named(name, walker, text, says):
    with pytest.raises(DataplaneError, match=says.replace("$", r"\$")) as raised:
        walker(text, pod("10.0.9.9", 80))
    assert "line" in str(raised.value) or "rule" in str(raised.value) or "nft text" in str(raised.value)


@pytest.mark.parametrize("mode", WALKERS)
def test_a_pick_that_is_no_candidate(mode):
    with pytest.raises(DataplaneError, match="pick 3 is not one of the 3 candidates"):
        WALKERS[mode](RENDERED[mode], pod(WEB, 80), pick=3)


def test_known_matches_rule_out_before_an_unknown_one_is_needed():
    text = IPT_HEAD + "-A FORWARD -p udp -m set --match-set X dst -j DROP\nCOMMIT\n"
    assert walk_iptables(text, pod("10.0.9.9", 80)).verdict == "ACCEPT"      # a TCP packet: -p udp decides


@pytest.mark.parametrize("mode,text", [
    ("iptables", "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n"),
    ("nftables", "table inet t {\n\tchain f {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n"),
])
def test_a_base_chain_policy_drops(mode, text):
    walk = WALKERS[mode](text, pod("10.0.9.9", 80))
    assert walk.verdict == "DROP" and "policy" in walk.steps[-1].action.lower()


@pytest.mark.parametrize("fields,says", [
    ({"src": "10.0.0.300"}, "not an IPv4 address"),
    ({"protocol": "SCTP"}, "expected TCP or UDP"),
    ({"origin": "pod"}, "expected forwarded or local"),
    ({"dport": 0}, "not a port"),
])
def test_a_packet_is_checked(fields, says):
    with pytest.raises(DataplaneError, match=says):
        Packet(**{"src": "10.0.0.5", "dst": WEB, "protocol": "TCP", "dport": 80, **fields})


def test_interfaces_when_given():
    text = IPT_HEAD + "-A FORWARD -i eth+ -o cbr0 -j DROP\nCOMMIT\n"
    packet = Packet("203.0.113.5", "10.0.1.1", "TCP", 80, in_interface="eth0", out_interface="cbr0")
    assert walk_iptables(text, packet).verdict == "DROP"
    assert parse_save(text)["filter"]["FORWARD"].rules[0].target == "DROP"
