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
