"""The iptables and nftables renderers against kube-proxy's own expected output.

The expected text is kube-proxy's (tests/data/kube-proxy, copied from its unit tests), not this
project's: chain names, jumps, probabilities, matches, targets and comments must all match. The
only normalisations are where kube-proxy's test fakes differ from a real node (see that
directory's README), and kube-proxy's own canonical ordering (its tests sort, because it emits
services in Go map order).
"""
from __future__ import annotations

import re
from collections import defaultdict

import pytest

from dataplane.backends.iptables.render import render as render_iptables
from dataplane.backends.kubeproxy.names import nft_endpoint_base, nft_service_base, sep_chain, svc_chain
from dataplane.backends.nftables.render import render as render_nftables
from tests.conftest import ROOT
from tests.unit.kubeproxy_fixture import NODE, SPEC, fixture

DATA = ROOT / "tests" / "data" / "kube-proxy"


# -- names ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("port_name,proto,chain", [
    ("ns1/svc1:p80", "tcp", "KUBE-SVC-XPGD46QRK7WJZT7O"),
    ("ns2/svc2:p80", "tcp", "KUBE-SVC-GNZBNJ2PO5MGZ6GT"),
    ("ns5/svc5:p80", "tcp", "KUBE-SVC-NUKIZ6OKUXPJNT4C"),
    ("ns2/svc2:p8080", "tcp", "KUBE-SVC-2VJB64SDSIJUP5T6"),
    ("default/kubernetes:https", "tcp", "KUBE-SVC-NPX46M4PTMTKRN6Y"),   # every real cluster has it
])
def test_iptables_service_chain_names(port_name, proto, chain):
    assert svc_chain(port_name, proto) == chain


@pytest.mark.parametrize("port_name,endpoint,chain", [
    ("ns1/svc1:p80", "10.180.0.1:80", "KUBE-SEP-SXIVWICOYRO3J4NJ"),
    ("ns5/svc5:p80", "10.180.0.3:80", "KUBE-SEP-I77PXRDZVX7PMWMN"),
    ("ns2/svc2:p8080", "10.0.2.1:8080", "KUBE-SEP-UHEGFW77JX3KXTOV"),
])
def test_iptables_endpoint_chain_names(port_name, endpoint, chain):
    assert sep_chain(port_name, "tcp", endpoint) == chain


def test_nftables_chain_names():
    assert "service-" + nft_service_base("ns1", "svc1", "tcp", "p80") == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert "service-" + nft_service_base("ns2", "svc2", "tcp", "p8080") == "service-MHHHYRWA-ns2/svc2/tcp/p8080"
    assert "endpoint-" + nft_endpoint_base("ns1", "svc1", "tcp", "p80", "10.180.0.1", 80) == \
        "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    assert "affinity-" + nft_endpoint_base("ns5", "svc5", "tcp", "p80", "10.180.0.3", 80) == \
        "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"


# -- iptables -------------------------------------------------------------------------------------

def iptables_tables(text: str) -> dict:
    """iptables-restore text -> table -> (declared chains, chain -> rules in order), ordered as
    kube-proxy's tests order them (sortIPTablesRules): KUBE-NODEPORTS and KUBE-SERVICES rules
    stable-sorted by the service in their comment, the 'must be the last rule' rule last."""
    out, table = {}, None
    for line in text.splitlines():
        if line.startswith("*"):
            table = out.setdefault(line[1:], (set(), defaultdict(list)))
        elif line.startswith(":"):
            table[0].add(line.split()[0][1:])
        elif line.startswith("-A "):
            table[1][line.split()[1]].append(line)
    for _, chains in out.values():
        for name in ("KUBE-NODEPORTS", "KUBE-SERVICES"):
            rules = chains.get(name, [])
            last = [r for r in rules if "must be the last rule" in r]
            rest = [r for r in rules if r not in last]
            rest.sort(key=lambda r: re.search(r'--comment "?([^ ":]+)', r).group(1))
            chains[name] = rest + last
    return {t: (decl, dict(chains)) for t, (decl, chains) in out.items()}


def kube_proxy_as_on_a_node(text: str) -> str:
    """kube-proxy's test fakes -> a real node: the real mark, --random-fully (the fake iptables
    lacks it) and no nfacct counters (kube-proxy leaves those matches, and the localhost node-port
    rules that need one, out when nfnetlink_acct is absent)."""
    lines = []
    for line in text.splitlines():
        if "--nfacct-name localhost_nps_accepted_pkts" in line:
            continue
        line = line.replace(" -m nfacct --nfacct-name ct_state_invalid_dropped_pkts", "")
        line = line.replace("0x4000", "0x00004000")
        if line.endswith("-j MASQUERADE"):
            line += " --random-fully"
        lines.append(line)
    return "\n".join(lines)


def test_iptables_rules_match_kube_proxys_overall_test():
    ours = iptables_tables(render_iptables(fixture(), SPEC, NODE).restore_text())
    theirs = iptables_tables(kube_proxy_as_on_a_node((DATA / "iptables-overall.txt").read_text()))
    assert set(ours) == set(theirs) == {"filter", "nat"}
    for table in ours:
        assert ours[table][0] == theirs[table][0], f"{table}: declared chains differ"
        assert ours[table][1] == theirs[table][1], f"{table}: rules differ"


def test_iptables_multiport_and_three_endpoints():
    """What kube-proxy's overall test lacks: a multi-port service and a three-way cascade
    (probabilities 1/3, 1/2, then the last endpoint unconditionally), per kube-proxy's
    writeServiceToEndpointRules; an unnamed port is "ns/name"; a UDP port is hashed with "udp"."""
    from ipaddress import IPv4Address as A
    from dataplane.spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable
    t = ServiceTable()
    ports = (EndpointPort("http", 8080, "TCP"), EndpointPort("dns", 5353, "UDP"))
    eps = tuple(Endpoint(A(f"10.0.0.{i}"), ports, NODE, None) for i in (2, 3, 4))
    t.add(Service("ns1", "web", "ClusterIP", A("172.30.0.10"),
                  (ServicePort("http", 80, "TCP", "http"), ServicePort("dns", 53, "UDP", "dns")), endpoints=eps))
    t.add(Service("ns1", "one", "ClusterIP", A("172.30.0.11"), (ServicePort("", 80, "TCP", 8080),),
                  endpoints=(Endpoint(A("10.0.0.5"), (EndpointPort("", 8080, "TCP"),), NODE, None),)))
    # chain names computed with kube-proxy's formula, base32(sha256(name + protocol [+ endpoint]))[:16]
    nat = iptables_tables(render_iptables(t, SPEC, NODE).restore_text())["nat"][1]
    assert nat["KUBE-SVC-4LVCYZMTA5CQO6SX"] == [
        '-A KUBE-SVC-4LVCYZMTA5CQO6SX -m comment --comment "ns1/web:http cluster IP" -m tcp -p tcp -d 172.30.0.10 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ',
        '-A KUBE-SVC-4LVCYZMTA5CQO6SX -m comment --comment "ns1/web:http -> 10.0.0.2:8080" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-JKIMUFTQVICFDRF7',
        '-A KUBE-SVC-4LVCYZMTA5CQO6SX -m comment --comment "ns1/web:http -> 10.0.0.3:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-4ETI23MKZMJZ7TM5',
        '-A KUBE-SVC-4LVCYZMTA5CQO6SX -m comment --comment "ns1/web:http -> 10.0.0.4:8080" -j KUBE-SEP-3W44JFVB5PZEXO3D',
    ]
    assert nat["KUBE-SEP-JKIMUFTQVICFDRF7"] == [
        "-A KUBE-SEP-JKIMUFTQVICFDRF7 -m comment --comment ns1/web:http -s 10.0.0.2 -j KUBE-MARK-MASQ",
        "-A KUBE-SEP-JKIMUFTQVICFDRF7 -m comment --comment ns1/web:http -m tcp -p tcp -j DNAT --to-destination 10.0.0.2:8080",
    ]
    udp = [r for r in nat["KUBE-SERVICES"] if "udp" in r]
    assert udp == ['-A KUBE-SERVICES -m comment --comment "ns1/web:dns cluster IP" -m udp -p udp -d 172.30.0.10 '
                   '--dport 53 -j KUBE-SVC-GVHZNRBVI4JECH4Z']
    assert '-A KUBE-SERVICES -m comment --comment "ns1/one cluster IP" -m tcp -p tcp -d 172.30.0.11 --dport 80 ' \
           '-j KUBE-SVC-3SNA6PKTBXKAI2YC' in nat["KUBE-SERVICES"]


# -- nftables -------------------------------------------------------------------------------------

def nft_state(text: str) -> dict:
    """Apply an `nft -f` transaction to an empty table, as a set of objects: what kube-proxy's
    tests compare (their fake's dump). Chains keep rule order; elements and objects are sets."""
    chains, objects, elements = defaultdict(list), set(), set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, kind, *rest = line.split(" ", 2)
        body = rest[0] if rest else ""
        name = body.split()[2] if kind in ("chain", "rule", "set", "map") else None
        if op == "add" and kind == "table":
            objects.add(line)
        elif op == "add" and kind in ("chain", "set", "map"):
            objects.discard(next((o for o in objects if o.split()[:5] == line.split()[:5]), None))
            objects.add(line)
            chains.setdefault(name, []) if kind == "chain" else None
        elif op == "delete" and kind in ("chain", "set", "map"):
            objects = {o for o in objects if o.split()[4:5] != [name] or o.split()[1] != kind}
            chains.pop(name, None)
        elif op == "flush" and kind == "chain":
            chains[name] = []
        elif op == "flush" and kind in ("set", "map"):
            elements = {e for e in elements if e.split()[4] != name}
        elif op == "add" and kind == "rule":
            chains[name].append(line)
        elif op == "add" and kind == "element":
            elements.add(line)
    return {"objects": objects, "chains": {c: r for c, r in chains.items()}, "elements": elements}


def test_nftables_rules_match_kube_proxys_overall_test():
    ours = nft_state(render_nftables(fixture(), SPEC, NODE).full_text())
    theirs = nft_state((DATA / "nftables-overall.txt").read_text().replace("0x4000", "0x00004000"))
    assert ours["objects"] == theirs["objects"]
    assert ours["chains"] == theirs["chains"]
    assert ours["elements"] == theirs["elements"]


# -- every combination renders rules that only jump to chains that exist -------------------------

def combinations():
    """Services in every traffic-policy combination, with local, remote, terminating or no
    endpoints, affinity and source ranges."""
    from ipaddress import IPv4Address as A, IPv4Network as N
    from dataplane.spec.table import Service, ServiceTable
    from tests.unit.kubeproxy_fixture import ep, port
    t = ServiceTable()
    i = 0
    for itp in ("Cluster", "Local"):
        for etp in ("Cluster", "Local"):
            for eps in ((), (ep("10.180.1.1", NODE),), (ep("10.180.1.2", "other"),),
                        (ep("10.180.1.3", NODE), ep("10.180.1.4", "other")),
                        (ep("10.180.1.10", NODE), ep("10.180.1.9", NODE))):
                for kind in ("ClusterIP", "NodePort", "LoadBalancer"):
                    i += 1
                    if kind == "ClusterIP" and etp == "Local":
                        continue
                    t.add(Service("ns", f"s{i}", kind, A("172.30.1.0") + i,
                                  (port(30000 + i if kind != "ClusterIP" else None),),
                                  internal_traffic_policy=itp, external_traffic_policy=etp,
                                  load_balancer_ips=(A("1.2.3.0") + i,) if kind == "LoadBalancer" else (),
                                  load_balancer_source_ranges=(N("203.0.113.0/25"),) if i % 2 else (),
                                  health_check_node_port=31000 + i if kind == "LoadBalancer" and etp == "Local" else None,
                                  session_affinity="ClientIP" if i % 3 == 0 else "None", endpoints=eps))
    return t


BUILTIN_TARGETS = {"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "MARK", "MASQUERADE"}


def test_iptables_every_jump_has_its_chain():
    text = render_iptables(combinations(), SPEC, NODE).restore_text()
    for table, (declared, chains) in iptables_tables(text).items():
        for rules in chains.values():
            for rule in rules:
                m = re.search(r" -j (\S+)", rule)
                if m and m.group(1) not in BUILTIN_TARGETS:
                    assert m.group(1) in declared, f"{table}: {rule}"


def test_nftables_every_jump_has_its_chain():
    state = nft_state(render_nftables(combinations(), SPEC, NODE).full_text())
    text = "\n".join(r for rules in state["chains"].values() for r in rules) + "\n" + "\n".join(state["elements"])
    for target in re.findall(r"(?:goto|jump) ([^\s,}]+)", text):
        assert target in state["chains"], target


def test_both_local_policies_keep_the_cluster_chain_for_short_circuits():
    """iTP and eTP Local on a node port: pods and the node itself still use every endpoint
    (kube-proxy's UsesClusterEndpoints is true for any externally accessible service)."""
    from ipaddress import IPv4Address as A
    from dataplane.spec.table import Service, ServiceTable
    from tests.unit.kubeproxy_fixture import ep, port
    t = ServiceTable()
    t.add(Service("ns", "a", "NodePort", A("172.30.0.50"), (port(30050),), internal_traffic_policy="Local",
                  external_traffic_policy="Local", endpoints=(ep("10.180.0.7", NODE), ep("10.180.0.8", "other"))))
    nat = iptables_tables(render_iptables(t, SPEC, NODE).restore_text())["nat"][1]
    svc, svl = svc_chain("ns/a:p80", "tcp"), "KUBE-SVL-" + svc_chain("ns/a:p80", "tcp")[9:]
    assert [r.split(" -j ")[1] for r in nat[svc]] == [sep_chain("ns/a:p80", "tcp", "10.180.0.7:80"),
                                                      sep_chain("ns/a:p80", "tcp", "10.180.0.8:80")]
    assert nat[svl][0].endswith("! -s 10.0.0.0/8 -j KUBE-MARK-MASQ")   # the internal chain is the local one


def test_endpoints_in_kube_proxys_order():
    """kube-proxy sorts endpoints as text: 10.180.0.10:80 before 10.180.0.9:80."""
    from ipaddress import IPv4Address as A
    from dataplane.spec.table import Service, ServiceTable
    from tests.unit.kubeproxy_fixture import ep, port
    t = ServiceTable()
    t.add(Service("ns1", "svc1", "ClusterIP", A("172.30.0.41"), (port(),), endpoints=(ep("10.180.0.9"), ep("10.180.0.10"))))
    nat = iptables_tables(render_iptables(t, SPEC, NODE).restore_text())["nat"][1]
    assert "-> 10.180.0.10:80\" -m statistic" in nat["KUBE-SVC-XPGD46QRK7WJZT7O"][1]
    rules = nft_state(render_nftables(t, SPEC, NODE).full_text())["chains"]["service-ULMVA6XW-ns1/svc1/tcp/p80"]
    assert re.search(r"0 : goto endpoint-\w+-ns1/svc1/tcp/p80__10\.180\.0\.10/80", rules[-1])


def test_iptables_nodeport_with_local_traffic_policy_and_a_local_endpoint():
    """What kube-proxy's overall fixture lacks: eTP Local with an endpoint on this node. Expected
    text per kube-proxy's syncProxyRules: KUBE-NODEPORTS -> KUBE-EXT; KUBE-EXT short-circuits pod
    and node traffic to KUBE-SVC (every endpoint), sends the rest to KUBE-SVL (this node's); no
    filter rule (the node has a local endpoint); names from kube-proxy's hash."""
    from ipaddress import IPv4Address as A
    from dataplane.spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable
    t = ServiceTable()
    ports = (EndpointPort("http", 8080, "TCP"),)
    t.add(Service("ns1", "np", "NodePort", A("172.30.0.20"), (ServicePort("http", 80, "TCP", "http", 30020),),
                  external_traffic_policy="Local",
                  endpoints=(Endpoint(A("10.0.0.7"), ports, NODE, None), Endpoint(A("10.0.0.8"), ports, "other", None))))
    filt, nat = (iptables_tables(render_iptables(t, SPEC, NODE).restore_text())[x][1] for x in ("filter", "nat"))
    svc, svl, ext = "KUBE-SVC-YLAE7TD4E22QEDEQ", "KUBE-SVL-YLAE7TD4E22QEDEQ", "KUBE-EXT-YLAE7TD4E22QEDEQ"
    sep7, sep8 = "KUBE-SEP-PNPFIQSSTN67MPS3", "KUBE-SEP-VHOI6JEXWGPHDLJR"
    assert nat["KUBE-NODEPORTS"] == [f"-A KUBE-NODEPORTS -m comment --comment ns1/np:http -m tcp -p tcp --dport 30020 -j {ext}"]
    assert nat[ext] == [
        f'-A {ext} -m comment --comment "pod traffic for ns1/np:http external destinations" -s 10.0.0.0/8 -j {svc}',
        f'-A {ext} -m comment --comment "masquerade LOCAL traffic for ns1/np:http external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
        f'-A {ext} -m comment --comment "route LOCAL traffic for ns1/np:http external destinations" -m addrtype --src-type LOCAL -j {svc}',
        f"-A {ext} -j {svl}",
    ]
    assert nat[svc] == [
        f'-A {svc} -m comment --comment "ns1/np:http cluster IP" -m tcp -p tcp -d 172.30.0.20 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ',
        f'-A {svc} -m comment --comment "ns1/np:http -> 10.0.0.7:8080" -m statistic --mode random --probability 0.5000000000 -j {sep7}',
        f'-A {svc} -m comment --comment "ns1/np:http -> 10.0.0.8:8080" -j {sep8}',
    ]
    assert nat[svl] == [f'-A {svl} -m comment --comment "ns1/np:http -> 10.0.0.7:8080" -j {sep7}']
    assert not filt.get("KUBE-EXTERNAL-SERVICES") and not filt.get("KUBE-SERVICES")
