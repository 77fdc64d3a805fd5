"""The datapath's capacities and conntrack lifetimes, declared once: defaults come from
bpf/include (map_sizes.h's *_MAP_SIZE, consts.h's CT_DEFAULT_*), the CLI's --map-size and --ct-timeout
override them, the eBPF loader compiles them in and the oracle runs with the same."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import DataplaneError
from .headers import numeric_defines

_MAPS = numeric_defines("map_sizes.h")
_CONSTS = numeric_defines("consts.h")


def _assign(obj, items, option: str, unit: str, hi: int):
    """Apply NAME=VALUE strings from a repeatable CLI option to obj's fields (1 <= VALUE <= hi)."""
    names = tuple(obj.__dataclass_fields__)
    for item in items or ():
        name, _, value = item.partition("=")
        if name not in names or not value.isdigit() or not 1 <= int(value) <= hi:
            raise DataplaneError(f"{option} {item!r}: expected NAME={unit} with NAME one of "
                                 f"{', '.join(names)} and 1 <= {unit} <= {hi}")
        setattr(obj, name, int(value))
    return obj


def conntrack_entries(cpus: int | None = None) -> int:
    """The default conntrack capacity: kube-proxy's nf_conntrack_max, max(131072, 32768 per CPU)
    connections (conntrack.min, conntrack.maxPerCore), at two entries per flow."""
    return 2 * max(131072, 32768 * (cpus or len(os.sched_getaffinity(0)) or 1))


@dataclass
class MapSizes:
    """Capacities (entries); see bpf/include/map_sizes.h and docs/ebpf.md ("Sizing")."""
    services: int = _MAPS["SVC_MAP_SIZE"]
    backends: int = _MAPS["BACKEND_MAP_SIZE"]
    conntrack: int = 0         # 0: conntrack_entries() for this machine (map_sizes.h's is for bare loads)
    affinity: int = _MAPS["AFFINITY_MAP_SIZE"]
    nosnat: int = _MAPS["NOSNAT_MAP_SIZE"]

    def __post_init__(self):
        self.conntrack = self.conntrack or conntrack_entries()

    @property
    def addresses(self) -> int:
        """The addresses map's capacity: map_sizes.h's ADDRESSES_MAP_SIZE, from the two above."""
        return self.services // 2 + self.backends

    @classmethod
    def parse(cls, items) -> "MapSizes":
        """From NAME=ENTRIES strings (the CLI's --map-size)."""
        return _assign(cls(), items, "--map-size", "ENTRIES", 1 << 26)

    def defines(self) -> dict:
        return {"SVC_MAP_SIZE": self.services, "BACKEND_MAP_SIZE": self.backends,
                "CT_MAP_SIZE": self.conntrack, "AFFINITY_MAP_SIZE": self.affinity,
                "NOSNAT_MAP_SIZE": self.nosnat}


@dataclass
class CtTimeouts:
    """Conntrack lifetimes in seconds; defaults from bpf/include/consts.h (CT_DEFAULT_*)."""
    syn: int = 0           # TCP before any reply
    tcp: int = 0           # TCP established
    close_wait: int = 0    # TCP established, closed in one direction (half-closed)
    close: int = 0         # TCP closed both ways, or reset
    udp: int = 0

    def __post_init__(self):
        for name in ("syn", "tcp", "close_wait", "close", "udp"):
            setattr(self, name, getattr(self, name) or _CONSTS[f"CT_DEFAULT_{name.upper()}"])

    @classmethod
    def parse(cls, items) -> "CtTimeouts":
        """From NAME=SECONDS strings (the CLI's --ct-timeout)."""
        return _assign(cls(), items, "--ct-timeout", "SECONDS", 10 ** 7)
