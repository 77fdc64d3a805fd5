"""What of labs is on this machine, read from the kernel and /proc, not from any record: the
judge of every cleanup (teardown after a failure, Ctrl-C, SIGKILL and `down --all`).

  leftovers()      every lab object: namespaces, records, pins, cgroups, the lab's cgroup2
                   mount, and processes of a lab (agents, test servers, health-check servers,
                   clients) wherever they run
  root_snapshot()  the root namespace's links, addresses, routes, rules, nftables ruleset and
                   iptables rules: a lab must never change them
"""
from __future__ import annotations

import os
import subprocess

from . import cgroups, netns, state
from .names import PIN_ROOT, lab_of_netns

# Module names only a lab's processes run (the agent's is state.AGENT_MODULE).
LAB_PROGRAMS = ("dataplane.lab.workload.", "dataplane.backends.healthcheck_server", state.AGENT_MODULE)


def lab_processes() -> list[str]:
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if any(a.startswith(p) for a in argv for p in LAB_PROGRAMS):
            found.append(f"process {entry} ({' '.join(argv[-6:])[:120]})")
    return found


def leftovers() -> list[str]:
    found = [f"netns {ns}" for ns in netns.list_all() if lab_of_netns(ns)]
    found += [f"record {n}" for n in state.all_names()]
    if os.path.isdir(PIN_ROOT):
        found += [f"pin {p}" for p in os.listdir(PIN_ROOT) if p.startswith("dp-")]
    found += [f"cgroup dp-{n}" for n in cgroups.labs_in(cgroups.mounted_root())]
    if os.path.ismount(cgroups.LAB_MOUNT):
        found.append(f"mount {cgroups.LAB_MOUNT}")
    found += lab_processes()
    return found


def root_snapshot() -> dict:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        links = sorted((l.get("ifname"), l.get("kind") or "") for l in ipr.get_links())
        addrs = sorted((a["index"], a.get("address"), a["prefixlen"]) for a in ipr.get_addr())
        routes = sorted((r.get("table"), r.get("dst"), r["dst_len"], r.get("gateway"), r.get("oif"))
                        for r in ipr.get_routes(family=2, table=0))
        rules = sorted((r.get("table"), r.get("priority"), r["src_len"], r["dst_len"]) for r in ipr.get_rules(family=2))
    nft = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    ipt = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    ipt = "\n".join(l for l in ipt.splitlines() if not l.startswith("#"))  # timestamps
    return {"links": links, "addresses": addrs, "routes": routes, "rules": rules, "nft": nft,
            "iptables": ipt}


def changed(before: dict, after: dict) -> list[str]:
    """The parts of the root namespace that differ between two snapshots."""
    return [key for key in before if after.get(key) != before[key]]
