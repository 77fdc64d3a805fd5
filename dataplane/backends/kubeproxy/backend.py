"""The part of the iptables and nftables backends that is kube-proxy's loop, not its rules: per
node, install once, then on every sync render the whole table, apply what changed in one
transaction, and clean stale UDP conntrack entries. Health-check node ports are served beside
(dataplane.backends.healthcheck), as kube-proxy serves them.
"""
from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, field

from ...errors import DataplaneError
from ...lab import netns, state
from ...lab.names import NFT_TRACE_TABLE
from ..base import Backend, HealthCheckServing
from .conntrack import clean_stale_entries

APPLY_TIMEOUT = 300


class ApplyError(DataplaneError):
    pass


def run_tool(ns: str, argv: list[str], input: str | None = None, what: str = "") -> str:
    """Run a rule tool in a node's namespace; a failure names the tool, the node and the error
    (iptables-restore and nft both say which input line they refused)."""
    proc = netns.run(ns, argv, timeout=APPLY_TIMEOUT, input=input)
    if proc.returncode != 0:
        raise ApplyError(f"{' '.join(argv[:2])} failed in {ns}{' (' + what + ')' if what else ''}: "
                         f"{proc.stderr.strip()[-600:]}")
    return proc.stdout


def _cmdline(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def without_counters(saved: str) -> str:
    """iptables-save output as a fingerprint: no comment lines (timestamps), no packet and byte
    counters (`:POSTROUTING ACCEPT [812:48720]`: traffic changes them, not drift)."""
    return "".join(re.sub(r" \[\d+:\d+\]$", "", line) + "\n" for line in saved.splitlines()
                   if not line.startswith("#"))


def rule_present(ns: str, tool: str, table: str, chain: str, spec: str) -> bool:
    """Is this rule in the chain (iptables -C)? A missing chain counts as missing."""
    return netns.run(ns, [tool, "-w", "5", "-t", table, "-C", chain, *shlex.split(spec)], timeout=60).returncode == 0


def ensure_masq_agent(ns: str, spec, tool: str, restore) -> None:
    """ip-masq-agent's rules, installed so that running it again changes nothing: its chain is
    rewritten (a declared chain is flushed by iptables-restore), its POSTROUTING jump added only
    when missing."""
    from .masq_agent import masq_agent_text
    text = masq_agent_text(spec)
    if not text:
        return
    lines = text.splitlines()
    jump = next(line for line in lines if line.startswith("-A POSTROUTING "))
    if rule_present(ns, tool, "nat", "POSTROUTING", jump[len("-A POSTROUTING "):]):
        lines.remove(jump)
    restore(ns, "\n".join(lines) + "\n", "ip-masq-agent rules")


def changed_services(old, new) -> set | None:
    """kube-proxy's change tracking: the services whose Service or endpoints changed (added and
    removed ones included). None when there was no previous sync (a full sync)."""
    if old is None:
        return None
    keys = set(old.services) | set(new.services)
    return {k for k in keys if old.services.get(k) != new.services.get(k)}


@dataclass
class KubeProxyBackend(HealthCheckServing, Backend):
    """Subclasses set name/description/needs and implement install(), apply() and rules()."""
    applied: dict = field(default_factory=dict)      # node -> the renderer's last applied ruleset
    last_input: dict = field(default_factory=dict)   # node -> text of the last transaction
    namespaces: dict = field(default_factory=dict)   # node -> netns
    resync: set = field(default_factory=set)         # nodes whose last sync failed: next one is full
    table: object = None                             # the table of the last good sync
    adopted: set = field(default_factory=set)        # nodes whose rules an earlier process wrote
    fingerprints: dict = field(default_factory=dict)  # node -> digest of the rules after our last change

    def setup(self, lab, table) -> None:
        for node in lab.spec.nodes:
            ns = self.namespaces[node.name] = lab.record.objects[node.name]
            self.install(ns, lab.spec, node.name)
        self.sync(lab, table)

    def adopt(self, lab, table) -> list[str]:
        """kube-proxy restarting: its rules (and the kernel's conntrack) stayed; install again
        (idempotent), then one full sync over what is there."""
        for node in lab.spec.nodes:
            ns = self.namespaces[node.name] = lab.record.objects[node.name]
            self.adopted.add(node.name)
            self.install(ns, lab.spec, node.name)
        return self.sync(lab, table) or [f"{n}: rules re-applied in full" for n in self.namespaces]

    def reconcile(self, lab) -> list[str]:
        """kube-proxy's canary, generalised: a digest of everything the mode installed, taken after
        each of our changes; if the rules differ from it (flushed, deleted, edited), install again
        and sync in full."""
        repaired = []
        for node, ns in self.namespaces.items():
            seen = self.fingerprint(ns)
            if node not in self.fingerprints:
                self.fingerprints[node] = seen
                continue
            if seen == self.fingerprints[node]:
                continue
            self.install(ns, lab.spec, node)
            change = self.apply(ns, lab.spec, node, self.table, None)
            self.fingerprints[node] = self.fingerprint(ns)
            repaired.append(f"{node}: rules changed behind our back; installed again and synced in full "
                            f"({change or 'no rule changes'})")
        if state.trace_left_behind(lab.name):
            repaired += self._remove_trace_tables(lab.name)
        return repaired

    def _remove_trace_tables(self, lab: str) -> list[str]:
        """The netfilter trace's table, left in the nodes by a `dataplane trace` that was killed
        (its chains would go on marking packets for nobody)."""
        import os
        removed = []
        for node, ns in self.namespaces.items():
            proc = netns.run(ns, ["nft", "delete", "table", "ip", NFT_TRACE_TABLE], timeout=30)
            if proc.returncode == 0:
                removed.append(f"{node}: the trace table {NFT_TRACE_TABLE} removed (its reader is gone)")
            monitors = [pid for pid in netns.pids_in(ns) if _cmdline(pid)[:3] == [b"nft", b"monitor", b"trace"]]
            if monitors:
                netns.stop(monitors)
                removed.append(f"{node}: the dead trace's `nft monitor trace` stopped")
        try:
            os.unlink(state.trace_marker_path(lab))
        except FileNotFoundError:
            pass
        return removed

    def fingerprint(self, ns: str) -> str:
        return hashlib.sha256(self.rules_for_fingerprint(ns).encode()).hexdigest()

    def rules_for_fingerprint(self, ns: str) -> str:
        """Everything the mode installed in a node, without counters or timestamps."""
        raise NotImplementedError

    def sync(self, lab, table) -> list[str]:
        self.fingerprints.clear()    # the next reconcile takes the reference again
        report = []
        changed = changed_services(self.table, table)
        for node, ns in self.namespaces.items():
            try:
                # After a failure kube-proxy's next sync is a full one (needFullSync).
                change = self.apply(ns, lab.spec, node, table, None if node in self.resync else changed)
            except Exception:
                # every node, not just this one: those before it already applied a table that
                # self.table (still the old one) does not describe, so only a full sync is right
                self.resync.update(self.namespaces)
                self.failed(node)
                raise
            self.resync.discard(node)
            flushed = clean_stale_entries(ns, table)
            if change or flushed:
                report.append(f"{node}: {change or 'no rule changes'}"
                              + (f"; {flushed} stale UDP conntrack filters applied" if flushed else ""))
        self.table = table
        self.sync_health_checks(lab, table)
        return report

    def teardown(self, lab) -> None:
        # Rules live in the node namespaces, which the lab removes with everything in them.
        self.applied.clear()
        self.namespaces.clear()

    # -- per mode ----------------------------------------------------------------------------------

    def install(self, ns: str, spec, node: str) -> None:
        raise NotImplementedError

    def apply(self, ns: str, spec, node: str, table, changed: set | None) -> str:
        """Render and apply; `changed`: the services (keys) that changed since the last sync, None
        for a full sync (the first, or after a failure: then what the last good sync applied is
        still known and its leftovers are removed). Return a one-line summary ('' for nothing)."""
        raise NotImplementedError

    def failed(self, node: str) -> None:
        """Forget what a failed sync meant to do (the transaction was not applied)."""

    def rules(self, ns: str) -> str:
        """What is installed, as the mode's own listing tool prints it."""
        raise NotImplementedError
