"""The lab registry: one JSON file per lab under /run/dataplane/labs (tmpfs: gone at reboot, as are
the namespaces it describes).

The record is written before anything is created and updated as the lab grows, so a run killed
with SIGKILL still leaves a record that `dataplane down` can finish from. Namespaces also carry the
lab in their names (dp-<lab>.<object>), so `down --all` finds what even a lost record would miss.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

STATE_DIR = os.environ.get("DATAPLANE_STATE_DIR", "/run/dataplane/labs")
# The module of a lab's agent: its command line carries `--lab NAME`, so that teardown finds an
# agent even when the record lost its pid (a SIGKILL between starting it and saving the record).
AGENT_MODULE = "dataplane.run.agent"


@dataclass
class LabRecord:
    name: str
    scenario: str = ""
    network: str = ""             # the network model
    backend: str = "none"
    created: float = 0.0
    owner_pid: int = 0                                     # the process that built it
    namespaces: list[str] = field(default_factory=list)    # every netns planned, created or not
    objects: dict[str, str] = field(default_factory=dict)  # object name -> netns
    addresses: dict[str, str] = field(default_factory=dict)  # object name -> IPv4 address
    roles: dict[str, str] = field(default_factory=dict)    # object name -> pod | node | host
    servers: dict[str, int] = field(default_factory=dict)  # object name -> test server pid
    pinned: list[str] = field(default_factory=list)        # bpffs paths to unpin on teardown
    cgroups: dict[str, str] = field(default_factory=dict)  # node -> its cgroup v2 (lab-made)
    cgroup_dir: str = ""                                   # the lab's directory holding them
    ready: bool = False                                    # fully built
    scenario_sha256: str = ""                              # of the scenario file it was built from
    agent_pid: int = 0                                     # the lab's agent (dataplane.run.agent)
    agent: dict = field(default_factory=dict)              # the agent's settings: backend options, periods

    @property
    def path(self) -> str:
        return record_path(self.name)

    def save(self) -> None:
        os.makedirs(STATE_DIR, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=2, sort_keys=True)
        os.replace(tmp, self.path)

    def delete(self) -> None:
        for p in (self.path, self.path + ".tmp"):
            if os.path.exists(p):
                os.unlink(p)


def lab_files(name: str, create: bool = True) -> str:
    """The directory of a lab's other files (server logs, health-check state, the agent's journal,
    map layouts), removed with the lab."""
    d = os.path.join(STATE_DIR, name + ".logs")
    if create:
        os.makedirs(d, exist_ok=True)
    return d


def trace_lock_path(name: str) -> str:
    """The lock a `dataplane trace` of the lab holds while it reads (run/trace/bpf.py)."""
    return os.path.join(lab_files(name), "trace.lock")


def trace_marker_path(name: str) -> str:
    """Present while a `dataplane trace` of the lab is (or was, if it was killed) attached: what
    tells the agent there may be trace state to clear (the reader removes it when it stops)."""
    return os.path.join(lab_files(name), "trace.attached")


def trace_left_behind(name: str) -> bool:
    """A trace was attached and its reader is gone without clearing up (killed with SIGKILL)."""
    return os.path.exists(trace_marker_path(name)) and not trace_reader_attached(name)


def trace_reader_attached(name: str) -> bool:
    """Does a `dataplane trace` hold the lab's trace lock? (The agent clears the programs' trace
    flag when none does: a reader killed with SIGKILL could not.)"""
    import fcntl
    try:
        fd = os.open(trace_lock_path(name), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def record_path(name: str) -> str:
    return os.path.join(STATE_DIR, f"{name}.json")


def load(name: str) -> LabRecord | None:
    try:
        with open(record_path(name)) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return LabRecord(name=name)  # a torn record: teardown still works from the names
    known = LabRecord.__dataclass_fields__
    if "model" in data and "network" not in data:    # written before the field was renamed
        data["network"] = data["model"]
    return LabRecord(**{k: v for k, v in data.items() if k in known})


def all_names() -> list[str]:
    try:
        return sorted(f[:-5] for f in os.listdir(STATE_DIR) if f.endswith(".json"))
    except FileNotFoundError:
        return []


def agents() -> dict[int, str]:
    """Every running lab agent: pid -> lab, found by command line (the record may not know them)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        except OSError:
            continue
        if AGENT_MODULE in argv and "--lab" in argv[:-1]:
            found[int(entry)] = argv[argv.index("--lab") + 1]
    return found


def agent_pids(name: str) -> list[int]:
    return sorted(pid for pid, lab in agents().items() if lab == name)
