"""Prerequisites: each check says what is missing and how to fix it.

`dataplane doctor` runs them all; commands run the ones they need (`require`) and fail with the
same advice, before they change anything.
"""
from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from typing import Callable

from .errors import PrerequisiteError

CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
SETUP = "run `sudo make setup` in the project directory"


@dataclass
class Result:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_root() -> Result:
    caps = _caps()
    ok = bool(caps >> CAP_NET_ADMIN & 1 and caps >> CAP_SYS_ADMIN & 1)
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    return Result("root", ok, f"{who}, CAP_NET_ADMIN and CAP_SYS_ADMIN {'held' if ok else 'missing'}",
                  "run as root (sudo dataplane ...): labs create network namespaces")


def check_netns() -> Result:
    ok = os.path.exists("/proc/self/ns/net")
    return Result("netns", ok, "network namespaces supported" if ok else "no /proc/self/ns/net",
                  "use a kernel with CONFIG_NET_NS")


def check_headers() -> Result:
    build = f"/lib/modules/{platform.release()}/build"
    ok = os.path.exists(os.path.join(build, "Makefile"))
    detail = f"{build} -> {os.path.realpath(build)}" if ok else f"{build} missing"
    return Result("headers", ok, detail, SETUP + " (links Debian's kernel headers when the running kernel has none)")


def check_bcc() -> Result:
    try:
        import bcc  # noqa: F401
    except Exception as exc:  # ImportError, or libbcc failing to load
        return Result("bcc", False, f"bcc does not import: {exc}", SETUP + " (installs python3-bpfcc into .venv)")
    return Result("bcc", True, f"bcc {getattr(bcc, '__version__', '?')} from {os.path.dirname(bcc.__file__)}")


def check_bcc_compiles() -> Result:
    """Compile and load a minimal TC classifier: proves headers, clang and the verifier all work."""
    if not check_root().ok:
        return Result("bcc-compile", False, "needs root to load a program", "run as root")
    try:
        from bcc import BPF
        b = BPF(text="int probe(struct __sk_buff *skb) { return 0; }")
        fn = b.load_func("probe", BPF.SCHED_CLS)
        ok = fn.fd >= 0
        b.cleanup()
    except Exception as exc:
        return Result("bcc-compile", False, f"compiling a TC program failed: {str(exc).splitlines()[0][:200]}",
                      SETUP)
    return Result("bcc-compile", ok, "compiled and loaded a TC classifier")


def _mount(path: str, fstype: str) -> Result:
    ok = False
    with open("/proc/mounts") as f:
        ok = any(line.split()[1] == path and line.split()[2] == fstype for line in f)
    return Result(fstype, ok, f"{fstype} {'mounted' if ok else 'not mounted'} on {path}",
                  f"mount -t {fstype} {fstype} {path} (or {SETUP})")


def check_bpffs() -> Result:
    return _mount("/sys/fs/bpf", "bpf")


def check_tracefs() -> Result:
    return _mount("/sys/kernel/tracing", "tracefs")


def _tool(name: str, package: str) -> Callable[[], Result]:
    def check() -> Result:
        path = shutil.which(name)
        return Result(name, bool(path), path or f"{name} not found", f"apt-get install {package} (or {SETUP})")
    check.__name__ = f"check_{name}"
    return check


CHECKS: dict[str, Callable[[], Result]] = {
    "root": check_root,
    "netns": check_netns,
    "headers": check_headers,
    "bcc": check_bcc,
    "bcc-compile": check_bcc_compiles,
    "bpf": check_bpffs,
    "tracefs": check_tracefs,
    "ip": _tool("ip", "iproute2"),
    "tc": _tool("tc", "iproute2"),
    "iptables": _tool("iptables", "iptables"),
    "iptables-legacy": _tool("iptables-legacy", "iptables"),
    "nft": _tool("nft", "nftables"),
    "conntrack": _tool("conntrack", "conntrack"),
    "bpftool": _tool("bpftool", "bpftool"),
    "gcc": _tool("gcc", "gcc"),            # the benchmarks build their native client (dpperf)
    "iperf3": _tool("iperf3", "iperf3"),
    "perf": _tool("perf", "linux-perf"),   # bench profile samples the BPF programs with it
}


def run_all() -> list[Result]:
    return [check() for check in CHECKS.values()]


def require(*names: str) -> None:
    """Raise PrerequisiteError for the first failing check among `names`."""
    for name in names:
        r = CHECKS[name]()
        if not r.ok:
            raise PrerequisiteError(f"prerequisite {r.name} not met: {r.detail}", r.fix)
