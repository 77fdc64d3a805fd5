"""The netfilter source of `dataplane trace` (dataplane/run/trace/netfilter.py) against the kernel.

Two namespaces of the test's own, dp-nftrace.a (a client) and dp-nftrace.b (a node), joined by a
veth with addresses in 10.251.0.0/30 on both ends and nowhere else: nothing is ever added to the
root namespace. In b: kube-proxy's nftables rules for a one-service table, rendered by the
project's renderer; then the same service as iptables-nft rules. A packet from a is traced in b
and its event must name the chains it passed and its DNAT target; afterwards neither our table
nor the monitor process may be left."""
from __future__ import annotations

import os
import shutil
import sys
import time
from ipaddress import IPv4Address as A, IPv4Network as N

import pytest

from dataplane.backends.nftables.render import render
from dataplane.errors import DataplaneError
from dataplane.lab import netns
from dataplane.run.trace.netfilter import TABLE, NetfilterTrace
from dataplane.spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable
from dataplane.spec.topology import NodeSpec, TopologySpec

NS_A, NS_B = "dp-nftrace.a", "dp-nftrace.b"
A_IP, B_IP = "10.251.0.1", "10.251.0.2"
TARGET = f"{B_IP}:8080"
# The service's cluster IP is b's own address: a reaches it over the /30, no route needed anywhere.
SPEC = TopologySpec(network="flat", cluster_cidr=N("10.252.0.0/16"), service_cidr=N("10.251.0.0/30"),
                    node_cidr=N("10.251.0.0/30"), outside_cidr=N("203.0.113.0/24"),
                    nodes=(NodeSpec("b", A(B_IP), N("10.252.0.0/24")),))


def service_table() -> ServiceTable:
    t = ServiceTable()
    t.add(Service("default", "web", "ClusterIP", A(B_IP), (ServicePort("http", 80, "TCP", 8080),),
                  endpoints=(Endpoint(A(B_IP), (EndpointPort("http", 8080, "TCP"),), "b", None),)))
    return t


def in_b(*argv: str, input: str | None = None) -> str:
    proc = netns.run(NS_B, list(argv), timeout=30, input=input)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr}"
    return proc.stdout


def trace_table_present() -> bool:
    return netns.run(NS_B, ["nft", "list", "table", "ip", TABLE], timeout=30).returncode == 0


@pytest.fixture(scope="module")
def namespaces():
    for tool in ("nft", "iptables-nft"):
        assert shutil.which(tool), f"make setup installs {tool}"     # kernel tests never skip in CI
    for ns in (NS_A, NS_B):
        netns.remove(ns)                     # a leftover of a killed run
    try:
        netns.create(NS_A)
        netns.create(NS_B)
        with netns.ipr(NS_A) as ipr:
            # created in a with its peer placed straight into b: neither end is ever in the root namespace
            peer = os.open(netns.path(NS_B), os.O_RDONLY)
            try:
                ipr.link("add", ifname="va", kind="veth", peer={"ifname": "vb", "net_ns_fd": peer})
            finally:
                os.close(peer)
        for ns, ifname, ip in ((NS_A, "va", A_IP), (NS_B, "vb", B_IP)):
            with netns.ipr(ns) as ipr:
                for link in ipr.get_links():
                    ipr.link("set", index=link["index"], state="up")
                ipr.addr("add", index=ipr.link_lookup(ifname=ifname)[0], address=ip, prefixlen=30)
        yield
    finally:
        for ns in (NS_A, NS_B):
            netns.remove(ns)


@pytest.fixture
def node(namespaces):
    """Namespace b with an empty ruleset before and after each test."""
    in_b("nft", "flush", "ruleset")
    yield NS_B
    in_b("nft", "flush", "ruleset")


def send_tcp_syn(port: int) -> None:
    # nothing listens on the target: the SYN is answered with a reset, which is all the test needs
    code = ("import socket\ns = socket.socket()\ns.settimeout(2)\n"
            f"try:\n    s.connect(({B_IP!r}, {port}))\nexcept OSError:\n    pass\n")
    netns.run(NS_A, [sys.executable, "-c", code], timeout=10)


def send_udp(port: int) -> None:
    code = f"import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ({B_IP!r}, {port}))\n"
    netns.run(NS_A, [sys.executable, "-c", code], timeout=10)


def wait_for_event(tracer: NetfilterTrace, predicate, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        seen += tracer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
        found = [e for e in seen if predicate(e)]
        if found:
            return found[0]
    pytest.fail(f"no matching netfilter trace event within {timeout:.0f} s; saw {seen}")


def assert_nothing_left(pid: int) -> None:
    assert not trace_table_present(), f"table ip {TABLE} left in {NS_B}"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)                      # reaped, not a zombie
    assert netns.pids_in(NS_B) == [], "a process is left in the node namespace"


def chains(event: dict) -> list[str]:
    return [chain for _, chain, _, _ in event["steps"]]


def test_nftables_mode_names_the_service_chains_and_the_dnat_target(node):
    ruleset = render(service_table(), SPEC, "b")
    in_b("nft", "-f", "-", input=ruleset.full_text())
    service_chain = next(c for c in ruleset.services["default/web"] if c.startswith("service-"))
    endpoint_chain = next(c for c in ruleset.services["default/web"] if c.startswith("endpoint-"))

    tracer = NetfilterTrace(node, "b", "nftables", {"addresses": [A_IP]})
    with tracer:
        pid = tracer.pid
        assert trace_table_present()
        send_tcp_syn(80)
        event = wait_for_event(tracer, lambda e: e["packet"].get("dport") == 80)

    assert event["source"] == "netfilter" and event["node"] == "b" and event["hook"] == "prerouting"
    assert event["packet"] == {"src": A_IP, "dst": B_IP, "proto": "tcp", "sport": event["packet"]["sport"],
                               "dport": 80, "iif": "vb", "tcp_flags": "syn"}
    passed = chains(event)
    for chain in ("nat-prerouting", "services", service_chain, endpoint_chain):
        assert chain in passed, (chain, event["steps"])
    assert ("kube-proxy", "nat-prerouting", "jump services", "jump services") in event["steps"]
    assert ("kube-proxy", endpoint_chain, f"meta l4proto tcp dnat to {TARGET}", "accept") in event["steps"]
    assert all(table != TABLE for table, *_ in event["steps"]), "our own marking rules are not steps"
    assert event["dnat"] == TARGET
    # the input hook saw the packet after its DNAT
    assert event["rewritten"] == {"dport": 8080}
    assert event["mark"] == "0x00004000"         # marked for masquerade: a is outside the cluster CIDR
    assert event["verdict"] == "accept"
    assert f"ACCEPT dnat to {TARGET} via kube-proxy/filter-prerouting > kube-proxy/nat-prerouting" in event["text"]
    assert_nothing_left(pid)


def test_iptables_nft_mode_names_iptables_chains_even_for_rules_added_after_start(node):
    iptables = ["iptables-nft", "-w", "5", "-t", "nat"]
    in_b(*iptables, "-N", "KUBE-SERVICES")
    in_b(*iptables, "-A", "PREROUTING", "-j", "KUBE-SERVICES")
    with NetfilterTrace(node, "b", "iptables") as tracer:     # no match: every TCP/UDP/ICMP packet
        pid = tracer.pid
        # added after the monitor started: nft 1.0's trace cache does not know this rule
        in_b(*iptables, "-A", "KUBE-SERVICES", "-d", f"{B_IP}/32", "-p", "udp", "--dport", "80",
             "-j", "DNAT", "--to-destination", TARGET)
        send_udp(80)
        event = wait_for_event(tracer, lambda e: e["packet"].get("proto") == "udp")

    assert event["packet"]["src"] == A_IP and event["packet"]["dst"] == B_IP and event["packet"]["dport"] == 80
    # iptables-nft gives every rule a counter: its value is left out of the rule text
    assert event["steps"][0] == ("nat", "PREROUTING", "counter jump KUBE-SERVICES", "jump KUBE-SERVICES")
    table, chain, rule, verdict = event["steps"][1]
    assert (table, chain, verdict) == ("nat", "KUBE-SERVICES", "accept")
    assert f"dnat to {TARGET}" in rule and "unknown rule handle" not in rule, rule
    assert event["dnat"] == TARGET
    assert_nothing_left(pid)


def test_iptables_legacy_is_refused_with_the_reason_and_leaves_nothing(node):
    tracer = NetfilterTrace(node, "b", "iptables-legacy")
    with pytest.raises(DataplaneError, match="nf_log_all_netns"):
        tracer.start()
    tracer.close()
    assert not trace_table_present()
    assert netns.pids_in(NS_B) == []


def test_close_is_idempotent_and_removes_a_table_left_by_a_killed_run(node):
    in_b("nft", "add", "table", "ip", TABLE)                 # as a killed run would leave it
    tracer = NetfilterTrace(node, "b", "nftables", {"addresses": [A_IP]}).start()
    pid = tracer.pid
    tracer.close()
    tracer.close()
    assert_nothing_left(pid)
    with pytest.raises(DataplaneError):
        tracer.poll(0.1)


def test_bad_match_is_refused():
    with pytest.raises(DataplaneError, match="IPv4"):
        NetfilterTrace(NS_B, "b", "nftables", {"addresses": ["10.251.0.300"]})
    with pytest.raises(DataplaneError, match="mode"):
        NetfilterTrace(NS_B, "b", "ebpf")
