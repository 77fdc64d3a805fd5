"""kube-proxy's incremental syncs, on real rules in a node namespace: with 1,000 services
applied, changing one rewrites only that service's chains (iptables: a partial iptables-restore
that declares only its chains; nftables: one transaction touching only its chains and elements),
and removing one deletes its chains (nftables: flushed at once, deleted by a later sync)."""
from __future__ import annotations

import re
import time

import pytest

from dataplane.backends import get
from dataplane.backends.iptables.render import FILTER_CHAINS, NAT_CHAINS
from dataplane.run.bench.synthetic import one_node, services, vip
from dataplane.lab import netns
from dataplane.lab.lab import Lab
from dataplane.spec.scenario import load

N = 1000
@pytest.fixture
def node():
    lab = Lab.create(one_node(), "t-sync")
    try:
        yield lab
    finally:
        lab.teardown()


def declared(text: str, table: str) -> set[str]:
    section = text.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0]
    return set(re.findall(r"^:(\S+)", section, re.M))


@pytest.mark.parametrize("variant", ["iptables", "iptables-legacy"])
def test_iptables_partial_restore_rewrites_one_service(node, variant):
    backend = get(variant)
    backend.setup(node, services(N))
    ns = node.record.objects["node1"]
    first = backend.last_input["node1"]
    assert len(declared(first, "nat") - set(NAT_CHAINS)) == 2 * N        # KUBE-SVC + KUBE-SEP each

    backend.sync(node, services(N, two_endpoints={500}))
    text = backend.last_input["node1"]
    mine = set(backend.applied["node1"].services["default/svc-00500"])
    assert len(mine) == 3                                                  # its SVC and two SEPs
    assert declared(text, "nat") == set(NAT_CHAINS) | mine                 # nothing else is rewritten
    assert declared(text, "filter") == set(FILTER_CHAINS)
    assert {l.split()[1] for l in text.splitlines() if l.startswith("-A KUBE-S")} - {"KUBE-SERVICES"} == mine

    save = backend.rules(ns)
    assert len(re.findall(r"^:KUBE-SVC-", save, re.M)) == N
    assert len(re.findall(r"^:KUBE-SEP-", save, re.M)) == N + 1
    svc = next(c for c in mine if c.startswith("KUBE-SVC-"))
    assert re.search(rf"^-A {svc} .*--probability 0.5000000000", save, re.M)

    backend.sync(node, services(N, two_endpoints={500}, without={999}))
    text = backend.last_input["node1"]
    gone = re.findall(r"^-X (\S+)", text, re.M)
    assert len(gone) == 2 and declared(text, "nat") == set(NAT_CHAINS) | set(gone)
    assert len(re.findall(r"^:KUBE-SVC-", backend.rules(ns), re.M)) == N - 1


def test_nftables_one_transaction_touches_one_service(node):
    backend = get("nftables")
    backend.setup(node, services(N))
    ns = node.record.objects["node1"]

    backend.sync(node, services(N, two_endpoints={500}))
    text = backend.last_input["node1"]
    lines = [l for l in text.splitlines() if l]
    assert lines and all("default/svc-00500/" in l for l in lines), lines[:5]
    assert sum(l.startswith("add chain") for l in lines) == 3              # service + two endpoints
    chain = next(c for c in backend.applied["node1"].services["default/svc-00500"] if c.startswith("service-"))
    listed = netns.run(ns, ["nft", "list", "chain", "ip", "kube-proxy", chain], timeout=30).stdout
    assert "numgen random mod 2" in listed

    backend.sync(node, services(N, two_endpoints={500}, without={999}))
    text = backend.last_input["node1"]
    gone = vip(999)
    assert f"delete element ip kube-proxy service-ips {{ {gone} . tcp . 80 }}" in text
    assert f"delete element ip kube-proxy cluster-ips {{ {gone} }}" in text
    flushed = re.findall(r"^flush chain ip kube-proxy (\S+)", text, re.M)
    assert len(flushed) == 2 and all("default/svc-00999/" in c for c in flushed)

    def chains():
        out = netns.run(ns, ["nft", "list", "table", "ip", "kube-proxy"], timeout=30).stdout
        return set(re.findall(r"chain (\S+) \{", out))
    assert set(flushed) <= chains()                  # flushed, not yet deleted (kube-proxy's delay)
    time.sleep(1.2)
    backend.sync(node, services(N, two_endpoints={500}, without={999}))
    assert not set(flushed) & chains()               # the next sync, a second later, deleted them
    assert backend.last_input["node1"] == ""         # and had nothing else to change


def _targets(lines, table=None):
    """Per (table, chain), the targets of its rules in order ('' for a rule without -j)."""
    out = {}
    for line in lines:
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A "):
            m = re.search(r" -j (\S+)", line)
            out.setdefault((table, line.split()[1]), []).append(m.group(1) if m else "")
    return out


@pytest.mark.parametrize("variant", ["iptables", "iptables-legacy", "nftables"])
def test_the_kernel_holds_what_was_rendered(variant):
    """Every scenario service type at once (loadbalancer.yaml: source ranges, eTP Local, external
    IPs, health-check node port): what iptables-save / nft list print back has the rendered
    chains with the rendered rules, target for target."""
    from tests.conftest import SCENARIOS
    sc = load(SCENARIOS / "loadbalancer.yaml")
    lab = Lab.create(sc.topology, "t-render", frontends=sc.frontend_routes)
    backend = get(variant)
    try:
        backend.setup(lab, sc.services)
        for node in lab.spec.nodes:
            listed = backend.rules(lab.record.objects[node.name])
            rs = backend.applied[node.name]
            if variant == "nftables":
                chains = dict(re.findall(r"^\s*chain (\S+) \{\n(.*?)^\s*\}", listed, re.M | re.S))
                for chain, rules in rs.service_chains().items():
                    body = [l for l in chains[chain].splitlines() if l.strip()]
                    assert len(body) == len(rules), chain
                continue
            kernel = _targets(listed.splitlines())
            wanted = _targets([r for rules in rs.filter.values() for r in rules], "filter")
            wanted.update(_targets([r for rules in (*rs.nat.values(), *rs.service_chains().values())
                                    for r in rules], "nat"))
            for chain, targets in wanted.items():
                assert kernel.get(chain) == targets, chain
    finally:
        lab.teardown()


@pytest.mark.parametrize("variant", ["iptables", "nftables"])
def test_after_a_failed_sync_the_next_is_a_full_one(node, variant, monkeypatch):
    """A sync whose transaction fails changes nothing; the next one rewrites everything (kube-proxy's
    needFullSync) and still removes what the failed one was to remove."""
    import importlib
    from dataplane.backends.kubeproxy.backend import ApplyError
    module = importlib.import_module(f"dataplane.backends.{variant}")
    backend = get(variant)
    backend.setup(node, services(20))
    ns = node.record.objects["node1"]
    real = module.run_tool

    def failing(ns_, argv, input=None, what=""):
        if what == "service rules":
            raise ApplyError("injected failure")
        return real(ns_, argv, input=input, what=what)
    monkeypatch.setattr(module, "run_tool", failing)
    with pytest.raises(ApplyError):
        backend.sync(node, services(20, without={5}))
    assert "node1" in backend.resync
    monkeypatch.setattr(module, "run_tool", real)

    backend.sync(node, services(20, without={5, 6}))
    assert "node1" not in backend.resync
    assert all(f"svc-{i:05d}" in backend.last_input["node1"] for i in (0, 4, 19))   # everything rewritten
    if variant == "nftables":
        time.sleep(1.2)
        backend.sync(node, services(20, without={5, 6}))                          # deletes flushed chains
    listed = backend.rules(ns)
    chain_names = set(re.findall(r"(?:^:|chain )(\S+)", listed, re.M))
    if variant == "iptables":
        assert len([c for c in chain_names if c.startswith("KUBE-SVC-")]) == 18
    else:
        assert not [c for c in chain_names if "svc-00005/" in c or "svc-00006/" in c]
        assert [c for c in chain_names if "svc-00004/" in c]
