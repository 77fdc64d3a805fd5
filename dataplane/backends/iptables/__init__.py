"""`iptables` and `iptables-legacy`: kube-proxy's iptables mode on every node.

The rules are rendered by render.py and applied with iptables-restore --noflush in each node's
namespace, as kube-proxy applies them: the first sync writes everything; later syncs rewrite the
top-level chains (KUBE-SERVICES, KUBE-NODEPORTS, ...) and only the chains of the services that
changed, and delete the chains of services that went away (kube-proxy's partial sync). Both
iptables variants are offered, as kube-proxy uses whichever the node has: iptables-nft (the
nf_tables kernel API, Debian's default) and iptables-legacy (the x_tables API).

Owns: the iptables-mode rules (render) and applying them.
May import: spec, lab, errors, backends.kubeproxy.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ...lab import netns
from ..kubeproxy.backend import KubeProxyBackend, ensure_masq_agent, rule_present, run_tool, without_counters
from .render import JUMPS, jump_text, render


@dataclass
class IptablesBackend(KubeProxyBackend):
    name = "iptables"
    description = "kube-proxy's iptables mode (iptables-nft), applied with iptables-restore"
    needs = ("root", "netns", "iptables", "conntrack")
    restore = "iptables-restore"
    save = "iptables-save"
    tool = "iptables"

    def _restore(self, ns: str, text: str, what: str) -> None:
        run_tool(ns, [self.restore, "-w", "5", "--noflush"], input=text, what=what)

    def install(self, ns, spec, node) -> None:
        # localhostNodePorts (kube-proxy's default in iptables mode): node ports on 127.0.0.1.
        netns.sysctl(ns, "net.ipv4.conf.all.route_localnet", "1")
        # idempotent, as kube-proxy's EnsureRule: a jump already there is not added again
        missing = [j for j in JUMPS if not rule_present(ns, self.tool, j[0], j[1], f"{j[3]} -j {j[2]}")]
        text = jump_text(missing)
        if text:
            self._restore(ns, text, "jumps from the built-in chains")
        ensure_masq_agent(ns, spec, self.tool, self._restore)

    def _service_chains_present(self, ns: str) -> list[str]:
        saved = run_tool(ns, [self.save, "-t", "nat"])
        return sorted(set(re.findall(r"^:(KUBE-(?:SVC|SVL|EXT|FW|SEP)-[A-Z0-9]+) ", saved, re.M)))

    def rules_for_fingerprint(self, ns: str) -> str:
        return without_counters(run_tool(ns, [self.save]))

    def apply(self, ns, spec, node, table, changed) -> str:
        desired = render(table, spec, node)
        old = self.applied.get(node)
        if old is None or changed is None:
            active = desired.service_chains()
            if old is not None:
                deleted = tuple(c for c in old.service_chains() if c not in active)
            else:
                # what an earlier process left (an adopted node; after a crash mid-sync): as
                # kube-proxy's full sync, service chains found in the kernel and not active go
                deleted = tuple(c for c in self._service_chains_present(ns) if c not in active)
            text = desired.restore_text(deleted=deleted)
            summary = f"{len(desired.services)} services written" + (" (full resync)" if old else "")
        else:
            # kube-proxy's partial sync: every chain of a changed service (all its ports) is
            # rewritten; unchanged services are not mentioned and keep what they have (even if a
            # full render would now differ, e.g. comments dropped past 1,000 endpoints); chains
            # that no service uses any more are flushed and deleted.
            rewrite_keys = changed & set(desired.services)
            for key in set(desired.services) - rewrite_keys:
                desired.services[key] = old.services.get(key, desired.services[key])
            rewrite = {c for k in rewrite_keys for c in desired.services[k]}
            active = desired.service_chains()
            deleted = tuple(c for c in old.service_chains() if c not in active)
            text = desired.restore_text(rewrite, deleted)
            gone = len(changed - set(desired.services))
            summary = (f"{len(rewrite_keys)} services rewritten, {gone} removed ({len(rewrite)} chains written, "
                       f"{len(deleted)} deleted)") if changed else ""
        self._restore(ns, text, "service rules")
        self.applied[node] = desired
        self.last_input[node] = text
        return summary

    def rules(self, ns: str) -> str:
        return run_tool(ns, [self.save])

    def dump(self, record, node: str) -> str:
        ns = record.objects[node]
        return f"# {self.save} in {ns}\n" + self.rules(ns)


@dataclass
class IptablesLegacyBackend(IptablesBackend):
    name = "iptables-legacy"
    description = "kube-proxy's iptables mode (iptables-legacy, the x_tables API)"
    needs = ("root", "netns", "iptables-legacy", "conntrack")
    restore = "iptables-legacy-restore"
    save = "iptables-legacy-save"
    tool = "iptables-legacy"
