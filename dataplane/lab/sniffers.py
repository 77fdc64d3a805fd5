"""Frames seen inside a live lab's namespaces while a check runs: one sniffer
(dataplane.lab.workload.sniffer, scapy) per namespace, started before and stopped after. What the
frames prove is judged in dataplane.judge.capture."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time

from . import netns

@contextlib.contextmanager
def live(lab, objs: list[str], ready_timeout: float = 20.0):
    """Capture on eth0 of each named object of a live lab; the dict yielded is filled on exit with
    object name -> [frame bytes]."""
    procs, out = {}, {}
    try:
        for obj in objs:
            procs[obj] = netns.popen(lab.record.objects[obj],
                                     [sys.executable, "-m", "dataplane.lab.workload.sniffer", "--duration", "600"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + ready_timeout
        for obj, proc in procs.items():
            line = proc.stdout.readline().strip()
            if line != "ready" or time.monotonic() > deadline:
                raise RuntimeError(f"capture in {obj} did not start")
        yield out
    finally:
        for obj, proc in procs.items():
            proc.terminate()
        for obj, proc in procs.items():
            try:
                text = proc.communicate(timeout=30)[0]
                out[obj] = [bytes.fromhex(h) for h in json.loads(text or '{"frames": []}')["frames"]]
            except (subprocess.TimeoutExpired, ValueError):
                proc.kill()
                out[obj] = []

