"""Captures for checks: frames seen inside namespaces while a check runs, and what they prove.

A check with `capture: true` records every IPv4 frame on the client's eth0 and on each possible
backend's eth0 (live: dataplane.agent.capture under scapy; emulator: the simulated links), then
`judge` verifies the translation on the wire: the client only ever sees the address it sent to,
and each backend sees its own address as destination and the expected source.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from .lab import netns

L4 = {"TCP": TCP, "UDP": UDP}


@contextlib.contextmanager
def live(lab, objs: list[str], ready_timeout: float = 20.0):
    """Capture on eth0 of each named object of a live lab; the dict yielded is filled on exit with
    object name -> [frame bytes]."""
    procs, out = {}, {}
    try:
        for obj in objs:
            procs[obj] = netns.popen(lab.record.objects[obj],
                                     [sys.executable, "-m", "dataplane.agent.capture", "--duration", "600"],
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


def judge(spec, client_ip, backend_ips: dict, frames: dict) -> tuple[list, str]:
    """(problems, summary) of the frames a check's capture recorded."""
    l4 = L4[spec.protocol]
    problems = []
    replies = [f for f in map(Ether, frames.get(spec.client, [])) if IP in f and l4 in f and ICMP not in f
               and f[IP].dst == str(client_ip)]
    if not replies:
        problems.append("capture: no reply reached the client")
    wrong = sorted({f"{f[IP].src}:{f[l4].sport}" for f in replies
                    if (f[IP].src, f[l4].sport) != (str(spec.ip), spec.port)})
    if wrong:
        problems.append(f"capture: the client saw replies from {', '.join(wrong)}, "
                        f"not only from {spec.ip}:{spec.port}")
    seen_at = []
    for name, ip in backend_ips.items():
        got = [f for f in map(Ether, frames.get(name, [])) if IP in f and l4 in f and ICMP not in f
               and f[IP].dst == str(ip)]
        if not got:
            continue
        seen_at.append(name)
        if any(f[IP].dst == str(spec.ip) and str(spec.ip) != str(ip) for f in got):
            problems.append(f"capture: {name} received packets still addressed to {spec.ip}")
        if spec.source is not None:
            srcs = sorted({f[IP].src for f in got} - {str(spec.source)})
            if srcs:
                problems.append(f"capture: {name} saw source {', '.join(srcs)}, expected {spec.source}")
    if not seen_at:
        problems.append("capture: no request reached any backend")
    summary = (f"capture: client saw replies only from {spec.ip}:{spec.port}; "
               f"{', '.join(seen_at)} saw {'their' if len(seen_at) > 1 else 'its'} own address as destination")
    return problems, summary
