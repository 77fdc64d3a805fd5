"""Lab tests build real namespaces. Around the whole session: the root namespace must end as it
began (no route, address, link or rule added), and no lab object may be left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dataplane.lab import netns, state
from dataplane.lab.names import lab_of_netns

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


def leftovers() -> list[str]:
    """Every lab object on the machine: namespaces, records, pinned BPF objects, cgroups and the
    lab's own cgroup2 mount."""
    from dataplane.lab import cgroups
    found = [f"netns {ns}" for ns in netns.list_all() if lab_of_netns(ns)]
    found += [f"record {n}" for n in state.all_names()]
    if os.path.isdir("/sys/fs/bpf"):
        found += [f"pin {p}" for p in os.listdir("/sys/fs/bpf") if p.startswith("dp-")]
    found += [f"cgroup dp-{n}" for n in cgroups.labs_in(cgroups.mounted_root())]
    found += [f"agent {pid} of lab {lab}" for pid, lab in state.agents().items()]
    if os.path.ismount(cgroups.LAB_MOUNT):
        found.append(f"mount {cgroups.LAB_MOUNT}")
    return found


@pytest.fixture(scope="session", autouse=True)
def root_namespace_untouched():
    if os.geteuid() != 0:
        yield
        return
    assert leftovers() == [], "lab objects existed before the tests: run `dataplane down --all`"
    before = root_snapshot()
    yield
    after = root_snapshot()
    left = leftovers()
    assert left == [], f"lab objects left after the test session: {left}"
    for key in before:
        assert after[key] == before[key], f"the root namespace's {key} changed during the lab tests"


def dataplane(*args, check=False, timeout=120, **kw) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a child process."""
    proc = subprocess.run([sys.executable, "-m", "dataplane.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"dataplane {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def status() -> list[dict]:
    return json.loads(dataplane("status", "--json", check=True).stdout)
