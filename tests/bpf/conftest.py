"""BPF fixtures: one program instance (compiled once per session), the oracle beside it,
both programmed from the same rendering before each test. Needs root (it loads BPF).

Packets run (BPF_PROG_TEST_RUN) from inside a network namespace of the fixtures' own, a node's
stand-in: the programs' socket lookups (is a node-IP tuple held by a node socket?) see only the
sockets a test opens there, never the machine's. It holds the node's address on its loopback and
is removed when the package's tests end."""
from __future__ import annotations

import os

import pytest

from tests.bpf.harness import NODE_IP, Pair

FIXTURE_NETNS = f"dp-bpf{os.getpid()}.node1"      # a lab name of its own: concurrent sessions never meet


@pytest.fixture(scope="session")
def program():
    if os.geteuid() != 0:
        pytest.skip("loading BPF needs root")
    from dataplane.backends.ebpf.program import NodeProgram
    prog = NodeProgram("node1", "", "10.240.0.1")
    prog.load(seed=0)
    yield prog
    prog.close()


@pytest.fixture(scope="package")
def node_netns():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    from dataplane.lab import netns
    netns.remove(FIXTURE_NETNS)                       # a leftover of a killed run
    netns.create(FIXTURE_NETNS)
    try:
        with netns.ipr(FIXTURE_NETNS) as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.link("set", index=lo, state="up")
            ipr.addr("add", index=lo, address=str(NODE_IP), prefixlen=32)
        yield FIXTURE_NETNS
    finally:
        netns.remove(FIXTURE_NETNS)


@pytest.fixture
def pair(program, node_netns):
    """Call pair(table_or_scenario_text, seed=...) to program both sides."""
    made = []

    def make(table, seed=7, timeouts=None, config=None):
        p = Pair(program, table, seed=seed, timeouts=timeouts, config=config, netns=node_netns)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close_sockets()
