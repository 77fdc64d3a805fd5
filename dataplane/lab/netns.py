"""Network namespaces: create, enter, run processes in, find processes in, remove.

Netlink work in a namespace is done by switching the calling thread into it (setns affects one
thread) and opening a pyroute2 IPRoute socket there: a netlink socket stays bound to the namespace
it was created in. Nothing here ever creates a link in the root namespace.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time

from pyroute2 import IPRoute
from pyroute2 import netns as _netns

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return bool(name) and os.path.isfile(path(name))


def list_all() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def create(name: str) -> None:
    if exists(name):
        raise FileExistsError(f"network namespace {name} already exists")
    with interrupts_deferred():          # pyroute2 forks a child to create it
        _netns.create(name)


def remove(name: str) -> None:
    if exists(name):
        _netns.remove(name)


def _setns_fd(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def enter(name: str) -> None:
    """Move the calling thread (for exec: the process) into a namespace, for good."""
    fd = os.open(path(name), os.O_RDONLY)
    try:
        _setns_fd(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(name: str):
    """Run a block with the calling thread in namespace `name`, then switch back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter(name)
        try:
            yield
        finally:
            _setns_fd(home)
    finally:
        os.close(home)


@contextlib.contextmanager
def ipr(name: str):
    """An IPRoute netlink socket bound to namespace `name`."""
    with inside(name):
        sock = IPRoute()
    try:
        yield sock
    finally:
        sock.close()


def sysctl(name: str, key: str, value: str) -> None:
    # /proc/sys/net shows the namespace of the thread that opens the file.
    with inside(name):
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)


def read_sysctl(name: str, key: str) -> str:
    with inside(name):
        with open("/proc/sys/" + key.replace(".", "/")) as f:
            return f.read().strip()


# Signals that interrupt the lab's commands (Ctrl-C, SIGTERM, SIGHUP: see runner and cli).
INTERRUPTS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C and friends while a child is forked. Python runs a signal's handler at the next
    bytecode; if that is inside an at-fork callback, its KeyboardInterrupt is printed ("Exception
    ignored") and lost, and the command goes on as if never interrupted. Blocked, the signal waits
    and is delivered on leaving the block, where it raises as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _enter_child(fd: int, cgroup: str | None) -> None:
    """In the forked child, before exec: the namespace (and the cgroup, for a node's processes),
    and the signals the parent held back unblocked again (a blocked mask survives exec)."""
    _setns_fd(fd)
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write("0")
    signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTS)


def popen(name: str, argv: list[str], cgroup: str | None = None, **kw) -> subprocess.Popen:
    """Start a program in namespace `name` (the child enters it, and joins `cgroup` if given,
    before exec)."""
    fd = os.open(path(name), os.O_RDONLY)
    try:
        with interrupts_deferred():
            return subprocess.Popen(argv, preexec_fn=lambda: _enter_child(fd, cgroup), pass_fds=(fd,), **kw)
    finally:
        os.close(fd)


def run(name: str, argv: list[str], timeout: float, input: str | None = None, **kw) -> subprocess.CompletedProcess:
    """Run a program in namespace `name` (kw: `cgroup`, as popen); `input` is written to its stdin."""
    stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
    proc = popen(name, argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def pids_in(name: str) -> list[int]:
    """Every process whose network namespace is `name` (what `ip netns pids` reports)."""
    try:
        st = os.stat(path(name))
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            s = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino) and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def kill_all_in(name: str, grace: float = 2.0) -> list[int]:
    """SIGTERM every process in the namespace, then SIGKILL what is left after `grace` seconds."""
    return stop(pids_in(name), grace)


def stop(pids: list[int], grace: float = 2.0) -> list[int]:
    """SIGTERM the processes, then SIGKILL what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.02)
        if not any(_alive(p) for p in pids):
            break
    return pids


def _alive(pid: int) -> bool:
    try:
        # Reap our own children so they do not linger as zombies (a zombie keeps no namespace).
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False

