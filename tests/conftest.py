"""Shared test helpers. Lab tests need root; in CI (CI=true) they fail instead of skipping."""
from __future__ import annotations

import os
import signal
import threading
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


def pytest_configure(config):
    # A shell starts a background job (`make test &`, `./.ci/run > log &`) with SIGINT ignored, and
    # children inherit that: the tests that press Ctrl-C on a `dataplane` child would then see it
    # ignored and fail (it happened to CI run in the background). Ctrl-C means Ctrl-C here.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionstart(session):
    if IN_CI and os.geteuid() != 0:
        print("CI=true but not root: lab tests cannot run, and must not be skipped in CI", file=sys.stderr)
        pytest.exit("lab tests need root in CI", returncode=3)


def _sigint_state() -> tuple:
    """SIGINT as children would inherit it: Python's handler, and the kernel's view of the main
    thread (ignored? blocked?) — C code (bcc, libbpf) can change the latter behind Python's back."""
    bit = 1 << (signal.SIGINT - 1)
    fields = {}
    with open(f"/proc/self/task/{threading.main_thread().native_id}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("SigIgn", "SigBlk"):
                fields[key] = bool(int(value, 16) & bit)
    return signal.getsignal(signal.SIGINT), fields.get("SigIgn"), fields.get("SigBlk")


@pytest.fixture(autouse=True)
def _sigint_left_as_found():
    """A test that leaves Ctrl-C ignored or blocked breaks every later test that interrupts a
    child (children inherit both): catch it at the test that did it."""
    before = _sigint_state()
    yield
    after = _sigint_state()
    assert after == before, f"SIGINT (handler, ignored, blocked) was {before}, left {after}"
