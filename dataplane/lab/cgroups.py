"""The lab's cgroups: one cgroup v2 per lab node, under a directory of the lab's own
(<cgroup2 root>/dp-<lab>/<node>). A node's own processes — its test servers, checks run from the
node, `dataplane exec LAB NODE` — join it, so that socket hooks attached there (the eBPF backend's
service translation for host-network clients) apply to them and to nothing else on the machine.

cgroup v2 is found where the machine mounted it (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
hybrid v1 machine). A machine with v1 only gets a cgroup2 hierarchy mounted for the lab at
/run/dataplane/cgroup2 (it mounts fine beside v1 controllers, owning none); the last lab to go
unmounts it. Everything created is in the lab record first, so teardown removes it after any
failure, and `down --all` finds the lab's directory by its name.
"""
from __future__ import annotations

import errno
import os
import subprocess
import time

LAB_MOUNT = "/run/dataplane/cgroup2"
PREFIX = "dp-"


def mounted_root() -> str | None:
    """The machine's cgroup2 mount point (the lab's own if that is the only one), or None."""
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                fstype = fields[fields.index("-") + 1]
                if fstype == "cgroup2":
                    found.append(fields[4])
    except OSError:
        return None
    for preferred in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if preferred in found:
            return preferred
    return found[0] if found else None


def ensure_root() -> tuple[str, bool]:
    """The cgroup2 hierarchy to use: (path, whether the lab mounted it just now)."""
    root = mounted_root()
    if root is not None:
        return root, False
    os.makedirs(LAB_MOUNT, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "cgroup2", "none", LAB_MOUNT], capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(errno.EIO, f"mounting a cgroup2 hierarchy at {LAB_MOUNT} failed: {proc.stderr.strip()}")
    return LAB_MOUNT, True


def lab_dir(root: str, lab: str) -> str:
    return os.path.join(root, PREFIX + lab)


def create(root: str, lab: str, nodes: list[str]) -> dict[str, str]:
    """Make the lab's directory and one cgroup per node: node -> path."""
    top = lab_dir(root, lab)
    os.makedirs(top, exist_ok=True)
    out = {}
    for node in nodes:
        path = os.path.join(top, node)
        os.makedirs(path, exist_ok=True)
        out[node] = path
    return out


def join(path: str) -> None:
    """Move the calling process into a cgroup (its children follow)."""
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write("0")


def remove(path: str, wait: float = 3.0) -> bool:
    """Remove a cgroup directory, its children first. The kernel refuses while a process is in
    it (killed processes leave it as they exit: wait a little). False if it is still there."""
    if not os.path.isdir(path):
        return True
    for child in sorted(os.listdir(path)):
        sub = os.path.join(path, child)
        if os.path.isdir(sub):
            remove(sub, wait)
    deadline = time.monotonic() + wait
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def labs_in(root: str | None) -> list[str]:
    """Lab names that have a directory under the cgroup2 root."""
    if root is None or not os.path.isdir(root):
        return []
    return sorted(d[len(PREFIX):] for d in os.listdir(root)
                  if d.startswith(PREFIX) and os.path.isdir(os.path.join(root, d)))


def unmount_if_unused() -> bool:
    """Unmount the lab's own cgroup2 mount once no lab directory is left in it."""
    if mounted_root() != LAB_MOUNT or not os.path.ismount(LAB_MOUNT) or labs_in(LAB_MOUNT):
        return False
    subprocess.run(["umount", LAB_MOUNT], capture_output=True)
    try:
        os.rmdir(LAB_MOUNT)
    except OSError:
        pass
    return True
