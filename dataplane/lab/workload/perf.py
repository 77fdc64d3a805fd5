"""dpperf, the benchmarks' native client and server (perf.c): built on first use, run in a lab's
namespaces, its JSON parsed here.

The binary is compiled with gcc -O2 into BIN_DIR under a name that carries the source's hash, so
an edited perf.c is rebuilt and two checkouts never share a stale binary.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

SOURCE = os.path.join(os.path.dirname(__file__), "perf.c")
BIN_DIR = os.environ.get("DATAPLANE_BIN_DIR", "/run/dataplane/bin")


class PerfError(RuntimeError):
    pass


def binary() -> str:
    """The path of dpperf built from this checkout's perf.c, compiling it if needed."""
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    path = os.path.join(BIN_DIR, f"dpperf-{digest}")
    if os.access(path, os.X_OK):
        return path
    gcc = shutil.which("gcc")
    if gcc is None:
        raise PerfError("gcc not found: the benchmarks build their native client (apt-get install gcc, "
                        "or run `sudo make setup`)")
    os.makedirs(BIN_DIR, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    done = subprocess.run([gcc, "-O2", "-Wall", "-Werror", "-o", tmp, SOURCE], capture_output=True, text=True)
    if done.returncode != 0:
        raise PerfError(f"building {SOURCE} failed:\n{done.stderr.strip()}")
    os.replace(tmp, path)       # atomic: a concurrent build never runs a half-written file
    return path


def parse(out: str, what: str) -> dict:
    """The JSON a client printed (dpperf's one line, or iperf3 -J's document), or PerfError that
    quotes what it printed."""
    try:
        return json.loads(out)
    except ValueError:
        pass
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise PerfError(f"{what}: no result printed: {out.strip()[-300:]!r}") from None


def serve_argv(port: int) -> list[str]:
    return [binary(), "serve", str(port)]


def connect_argv(port: int, count: int) -> list[str]:
    return [binary(), "connect", str(port), str(count)]


def rr_argv(ip: str, port: int, count: int, size: int) -> list[str]:
    return [binary(), "rr", str(ip), str(port), str(count), str(size)]


def crr_argv(port: int, seconds: float, procs: int) -> list[str]:
    return [binary(), "crr", str(port), str(int(seconds)), str(procs)]


def udp_sink_argv(port: int, seconds: float, wait: float) -> list[str]:
    return [binary(), "udp-sink", str(port), str(int(seconds)), str(int(wait))]


def udp_flood_argv(ip: str, port: int, seconds: float, size: int, flows: int) -> list[str]:
    return [binary(), "udp-flood", str(ip), str(port), str(int(seconds)), str(size), str(flows)]
