"""The Backend protocol: each dataplane renders the one ServiceTable into a live lab.

A backend never decides policy (which endpoints are eligible); it reads it from dataplane.policy,
so that ebpf, iptables, nftables and the reference model cannot disagree by construction. Where
kube-proxy's own modes do disagree, dataplane.differences says so, and only there.

Optional attributes the runner uses when present: `serves_health_checks` (run kube-proxy's
health-check node port servers beside), `seed` (replayable choices), `metrics()`, `collect()`.
"""
from __future__ import annotations

from typing import Protocol

from ..lab.lab import Lab
from ..model import ServiceTable


class Backend(Protocol):
    name: str
    description: str
    needs: tuple[str, ...]          # doctor checks this backend depends on (see dataplane.doctor)

    def setup(self, lab: Lab, table: ServiceTable) -> None:
        """Program every node of the lab for the table."""

    def sync(self, lab: Lab, table: ServiceTable) -> list[str]:
        """Apply a changed table; return what was changed (for reports)."""

    def teardown(self, lab: Lab) -> None:
        """Remove what setup installed (namespace removal is the lab's job)."""
