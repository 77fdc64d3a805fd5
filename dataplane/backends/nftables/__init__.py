"""`nftables`: kube-proxy's nftables mode on every node, one `nft -f` transaction per sync.

The first sync writes the whole `ip kube-proxy` table (render.py). Later syncs are kube-proxy's
partial syncs: map and set elements are diffed (changed ones deleted and re-added, gone ones
deleted), only the services whose chains changed get their chains flushed and rewritten, affinity
sets of gone endpoints are deleted, and chains of gone services are flushed now and deleted by a
later sync, at least a second after, in a transaction of their own (kube-proxy's delay for kernels
before 6.2, which free a chain a little after the last map element pointing at it is deleted).

Egress masquerade is ip-masq-agent's, which writes iptables rules in every mode: they are applied
with iptables-nft, beside the kube-proxy table.

Owns: the nftables-mode table (render) and applying it.
May import: spec, lab, errors, backends.kubeproxy.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from ...lab import netns

from ..kubeproxy.backend import ApplyError, KubeProxyBackend, ensure_masq_agent, run_tool, without_counters
from .render import CONTAINERS, TABLE, Ruleset, render

STALE_CHAIN_DELAY = 1.0   # seconds between flushing a gone service's chain and deleting it


@dataclass
class NftablesBackend(KubeProxyBackend):
    name = "nftables"
    description = "kube-proxy's nftables mode: one table, verdict maps, applied with nft -f"
    needs = ("root", "netns", "nft", "iptables", "conntrack")
    stale_chains: dict = field(default_factory=dict)   # node -> {chain: time it went stale}

    def _nft(self, ns: str, text: str, what: str) -> None:
        run_tool(ns, ["nft", "-f", "-"], input=text, what=what)

    def install(self, ns, spec, node) -> None:
        ensure_masq_agent(ns, spec, "iptables", lambda n, text, what: run_tool(
            n, ["iptables-restore", "-w", "5", "--noflush"], input=text, what=what))

    def rules_for_fingerprint(self, ns: str) -> str:
        # -s: no counter values; -t: no set elements (affinity sets fill with clients as traffic flows)
        table = netns.run(ns, ["nft", "-s", "-t", "list", "table", *TABLE.split()], timeout=60)
        listing = table.stdout if table.returncode == 0 else f"(no table: {table.stderr.strip()})"
        return listing + without_counters(run_tool(ns, ["iptables-save", "-t", "nat"]))

    def apply(self, ns, spec, node, table, changed) -> str:
        start = time.monotonic()
        warning = self._delete_stale(ns, node, start)
        desired = render(table, spec, node)
        old: Ruleset | None = self.applied.get(node)
        if old is None and node in self.adopted:
            # over rules an earlier process left: base chains rewritten, not recreated (that only
            # works while they are empty), and what no service uses now flushed, deleted later
            text = desired.full_text(first=False) + self._leftovers_present(ns, node, desired, start)
            summary = f"{len(desired.services)} services written over the running table"
        elif old is None:
            text = desired.full_text()
            summary = f"{len(desired.services)} services written"
        elif changed is None:
            # A full resync over an existing table: base chains flushed, not recreated; every
            # service rewritten; what the last good sync had and no service uses is flushed.
            text = desired.full_text(first=False) + self._leftovers(node, old, desired, start)
            summary = f"{len(desired.services)} services written (full resync)"
        else:
            text, summary = self._partial(node, old, desired, changed, start)
        if text.strip():
            self._nft(ns, text, "service rules")
        self.applied[node] = desired
        self.last_input[node] = text
        return "; ".join(x for x in (summary, warning) if x)

    def _partial(self, node: str, old: Ruleset, new: Ruleset, changed_keys: set, start: float) -> tuple[str, str]:
        out = []
        # Chains and affinity sets: rewritten for changed services only (kube-proxy's
        # skipServiceUpdate); elements: diffed for every service.
        changed = sorted(changed_keys & set(new.services))
        for key in set(new.services) - set(changed):
            new.services[key] = old.services.get(key, new.services[key])
            if key in old.affinity:
                new.affinity[key] = old.affinity[key]
        for key in changed:
            out += new.service_text(key)
        ops = {"added": 0, "deleted": 0}
        for container in CONTAINERS:
            before, after = old.elements[container], new.elements[container]
            for key, value in after.items():
                if key not in before or before[key] != value:
                    if key in before:        # a changed verdict: delete, then add
                        out.append(old.element(container, key, "delete"))
                    out.append(new.element(container, key))
                    ops["added"] += 1
            for key in before:
                if key not in after:
                    out.append(old.element(container, key, "delete"))
                    ops["deleted"] += 1
        leftovers = self._leftovers(node, old, new, start).splitlines()
        out += leftovers
        gone_chains = [l for l in leftovers if l.startswith("flush chain")]
        gone = [k for k in old.services if k not in new.services]
        summary = ""
        if changed or gone or ops["added"] or ops["deleted"]:
            summary = (f"{len(changed)} services rewritten, {len(gone)} removed, {ops['added']} map elements "
                       f"added, {ops['deleted']} deleted, {len(gone_chains)} chains flushed for deletion")
        return ("\n".join(out) + "\n") if out else "", summary

    def _leftovers(self, node: str, old: Ruleset, new: Ruleset, start: float) -> str:
        """Chains no service uses any more: flushed now, deleted by a later sync; their affinity
        sets: deleted now (after the flush of the chains that referenced them)."""
        new_sets, new_chains = new.affinity_sets(), new.service_chains()
        stale = self.stale_chains.setdefault(node, {})
        out = []
        for chain in old.service_chains():
            if chain not in new_chains:
                out.append(f"flush chain {TABLE} {chain}")
                stale[chain] = start
        for chain in new_chains:
            stale.pop(chain, None)       # back in use
        out += [f"delete set {TABLE} {s}" for s in old.affinity_sets() if s not in new_sets]
        return "".join(line + "\n" for line in out)

    def reconcile(self, lab) -> list[str]:
        """Drift, as every mode; first, chains that went stale at least a second ago are deleted
        (kube-proxy deletes them at its next sync; the agent's period is that sync here)."""
        now = time.monotonic()
        for node, ns in self.namespaces.items():
            stale = self.stale_chains.get(node, {})
            if any(now - t >= STALE_CHAIN_DELAY for t in stale.values()):
                ours = node in self.fingerprints and self.fingerprint(ns) == self.fingerprints[node]
                self._delete_stale(ns, node, now)
                if ours:            # our own change: the reference moves with it
                    self.fingerprints[node] = self.fingerprint(ns)
        return super().reconcile(lab)

    def _leftovers_present(self, ns: str, node: str, new: Ruleset, start: float) -> str:
        """_leftovers, against the table in the kernel instead of a ruleset we applied: service
        chains (their names hold "ns/name", as kube-proxy tells them apart) and affinity sets."""
        listing = netns.run(ns, ["nft", "-t", "list", "table", *TABLE.split()], timeout=60)
        if listing.returncode != 0:
            return ""               # no table yet: nothing left over
        chains = re.findall(r"^\s*chain (\S+) \{", listing.stdout, re.M)
        sets = re.findall(r"^\s*set (affinity-\S+) \{", listing.stdout, re.M)
        active, active_sets = new.service_chains(), new.affinity_sets()
        stale = self.stale_chains.setdefault(node, {})
        out = []
        for chain in chains:
            if "/" in chain and chain not in active:
                out.append(f"flush chain {TABLE} {chain}")
                stale[chain] = start
        out += [f"delete set {TABLE} {s}" for s in sets if s not in active_sets]
        return "".join(line + "\n" for line in out)

    def failed(self, node: str) -> None:
        # kube-proxy: if the main transaction fails, forget the stale chains it recorded.
        self.stale_chains.pop(node, None)

    def _delete_stale(self, ns: str, node: str, now: float) -> str:
        """Delete chains stale for long enough, in a transaction of their own. A failure is
        reported, not raised (kube-proxy logs it and finds the chain again later)."""
        stale = self.stale_chains.get(node, {})
        due = [c for c, t in stale.items() if now - t >= STALE_CHAIN_DELAY]
        if not due:
            return ""
        try:
            self._nft(ns, "".join(f"delete chain {TABLE} {c}\n" for c in due), "stale chains")
        except ApplyError as exc:
            return f"stale chains not deleted yet ({exc})"
        for c in due:
            del stale[c]
        return ""

    def rules(self, ns: str) -> str:
        return run_tool(ns, ["nft", "list", "table", *TABLE.split()])

    def dump(self, record, node: str) -> str:
        ns = record.objects[node]
        return (f"# nft list table {TABLE} in {ns}\n" + self.rules(ns)
                + f"# ip-masq-agent (iptables-save -t nat) in {ns}\n" + run_tool(ns, ["iptables-save", "-t", "nat"]))
