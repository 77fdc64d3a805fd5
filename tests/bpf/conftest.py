"""BPF fixtures: one program instance (compiled once per session), the reference model beside it,
both programmed from the same rendering before each test. Needs root (it loads BPF)."""
from __future__ import annotations

import os

import pytest

from tests.bpf.harness import Pair


@pytest.fixture(scope="session")
def program():
    if os.geteuid() != 0:
        pytest.skip("loading BPF needs root")
    from dataplane.backends.ebpf.program import NodeProgram
    prog = NodeProgram("node1", "", "10.240.0.1")
    prog.load(seed=0)
    yield prog
    prog.close()


@pytest.fixture
def pair(program):
    """Call pair(table_or_scenario_text, seed=...) to program both sides."""
    made = []

    def make(table, seed=7, timeouts=None, config=None):
        p = Pair(program, table, seed=seed, timeouts=timeouts, config=config)
        made.append(p)
        return p

    yield make
