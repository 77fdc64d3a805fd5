"""The Backend interface: each dataplane renders the one ServiceTable into a lab, and declares
what else it can do, so that nobody has to probe it.

A backend never decides policy (which endpoints are eligible); it reads it from
dataplane.spec.policy, so that ebpf, iptables, nftables and the emulator cannot disagree by
construction. Where kube-proxy's own modes do disagree, dataplane.judge.differences says so, and
only there.

Like kube-proxy's Proxier, a backend owns everything a sync touches: its rules or maps, the stale
conntrack state a sync leaves, and the health-check node ports it serves (kube-proxy's
healthCheckNodePort servers, one per node).
"""
from __future__ import annotations

from typing import ClassVar

from ..errors import LabError
from .healthcheck import HealthChecks

# Options a backend may take, by the CLI flag that sets them.
OPTION_FLAGS = {"seed": "--seed", "sizes": "--map-size", "timeouts": "--ct-timeout"}


class Backend:
    name: ClassVar[str]
    description: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()        # doctor checks it depends on (dataplane.doctor)
    simulated: ClassVar[bool] = False            # runs on the emulator: no lab, no root
    options: ClassVar[tuple[str, ...]] = ()      # which of OPTION_FLAGS apply
    serves_health_checks: ClassVar[bool] = False
    has_counters: ClassVar[bool] = False         # metrics() reports per-node packet counters
    seed: int | None = None                      # the seed of its choices, when it has one

    def setup(self, lab, table) -> None:
        """Program every node of the lab for the table."""
        raise NotImplementedError

    def sync(self, lab, table) -> list[str]:
        """Apply a changed table; return what was changed (for reports)."""
        raise NotImplementedError

    def teardown(self, lab) -> None:
        """Remove what setup installed (namespace removal is the lab's job)."""

    def adopt(self, lab, table) -> list[str]:
        """Take over what an earlier process of this backend installed in the lab (an agent
        restarting: `dataplane reload`, or after it was killed) and sync it to `table`, without
        interrupting traffic. What was done, for the report."""
        raise NotImplementedError

    def reconcile(self, lab) -> list[str]:
        """Find what changed behind the backend's back since its last sync (rules flushed, map
        entries deleted, hooks removed) and restore it; one line per repair (empty: no drift).
        Right after a sync, it also takes the reference later calls compare with."""
        return []

    def release(self) -> None:
        """Let go of the lab without changing it (the agent stopping for a reload): what serves
        traffic stays installed."""

    def collect(self) -> int:
        """Collect expired state (conntrack, affinity) where the backend, not the kernel, must;
        the number of entries removed."""
        return 0

    def forget_flows(self, lab) -> None:
        """Forget every flow (a benchmark's figure starts from empty tables): the kernel's
        conntrack in every node; a backend that keeps flows of its own clears them too."""
        from ..lab import netns
        for node in lab.spec.nodes:
            netns.run(lab.record.objects[node.name], ["conntrack", "-F"], timeout=60)

    def metrics(self) -> dict:
        """node -> {counter: packets}; empty for a backend without counters."""
        return {}

    def dump(self, record, node: str) -> str:
        """What the backend installed on a node of a running lab (its record), read back from the
        kernel: `dataplane rules`."""
        raise LabError(f"lab {record.name} runs backend {self.name!r}, which installs no rules")


class HealthCheckServing:
    """For a backend that serves kube-proxy's health-check node ports: the servers follow every
    sync of a live lab (they run in the node namespaces, so the lab's teardown stops them)."""
    serves_health_checks: ClassVar[bool] = True
    health: HealthChecks | None = None

    def sync_health_checks(self, lab, table) -> None:
        if lab is None:
            return
        if self.health is None or self.health.lab is not lab:
            self.health = HealthChecks(lab)
        self.health.sync(table)

