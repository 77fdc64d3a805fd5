"""Shared test helpers. Lab tests need root; in CI (CI=true) they fail instead of skipping."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items):
    for item in items:
        # tests/lab builds namespaces, tests/bpf loads programs: both touch the kernel
        if {ROOT / "tests" / "lab", ROOT / "tests" / "bpf"} & set(Path(str(item.fspath)).parents):
            item.add_marker(pytest.mark.lab)
    if os.geteuid() == 0:
        return
    for item in items:
        if "lab" in item.keywords:  # (in CI, sessionstart has already stopped a non-root run)
            item.add_marker(pytest.mark.skip(reason="lab tests need root (sudo make test)"))


def pytest_sessionstart(session):
    if IN_CI and os.geteuid() != 0:
        print("CI=true but not root: lab tests cannot run, and must not be skipped in CI", file=sys.stderr)
        pytest.exit("lab tests need root in CI", returncode=3)
