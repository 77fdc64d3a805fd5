"""Deterministic names of everything a lab creates, and the reverse: which lab a namespace is of.

Namespaces are dp-<lab>.<object>; the dot cannot appear in a lab or object name (DNS labels), so
`lab_of_netns` is unambiguous even for labs named `a` and `a-b`."""
from __future__ import annotations

from dataclasses import dataclass

from ..spec.topology import IFNAME_PREFIX


@dataclass
class Names:
    """Deterministic names of everything a lab creates. Namespaces: dp-<lab>.<object>."""
    lab: str
    prefix: str = "dp-"

    def netns(self, obj: str) -> str:
        return f"{self.prefix}{self.lab}.{obj}"

    @property
    def underlay(self) -> str:
        return self.netns("underlay")

    @staticmethod
    def ifname(obj: str) -> str:
        return f"{IFNAME_PREFIX}{obj}"


def lab_of_netns(netns: str, prefix: str = "dp-") -> str | None:
    """The lab a namespace belongs to, or None if it is not a lab namespace ("dp-<lab>.<obj>")."""
    if not netns.startswith(prefix) or "." not in netns:
        return None
    return netns[len(prefix):].split(".", 1)[0]


# The nftables table `dataplane trace` adds to a node of a kube-proxy backend while it runs (its
# chains mark the packets to trace): run/trace/netfilter.py; the agent removes one left behind.
NFT_TRACE_TABLE = "dataplane-trace"

# Where a lab's pinned BPF objects live: one bpffs directory per lab, dp-<lab>.
PIN_ROOT = "/sys/fs/bpf"


def pin_dir(lab: str, prefix: str = "dp-") -> str:
    return f"{PIN_ROOT}/{prefix}{lab}"


def pinned_labs(prefix: str = "dp-") -> list[str]:
    """Labs with a pin directory (left behind, say, by a teardown that was killed)."""
    import os
    try:
        return sorted(d[len(prefix):] for d in os.listdir(PIN_ROOT)
                      if d.startswith(prefix) and "." not in d and os.path.isdir(f"{PIN_ROOT}/{d}"))
    except OSError:
        return []
