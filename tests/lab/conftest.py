"""Lab tests build real namespaces. Around the whole session: the root namespace must end as it
began (no route, address, link or rule added), and no lab object may be left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dataplane.lab import netns, state
from dataplane.lab.audit import leftovers, root_snapshot  # noqa: F401  (tests import them from here)

@pytest.fixture(scope="session", autouse=True)
def root_namespace_untouched():
    if os.geteuid() != 0:
        yield
        return
    assert leftovers() == [], "lab objects existed before the tests: run `dataplane down --all`"
    before = root_snapshot()
    yield
    after = root_snapshot()
    left = leftovers()
    assert left == [], f"lab objects left after the test session: {left}"
    for key in before:
        assert after[key] == before[key], f"the root namespace's {key} changed during the lab tests"


def dataplane(*args, check=False, timeout=120, **kw) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a child process."""
    proc = subprocess.run([sys.executable, "-m", "dataplane.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"dataplane {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def status() -> list[dict]:
    return json.loads(dataplane("status", "--json", check=True).stdout)
