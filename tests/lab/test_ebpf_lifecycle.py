"""Loading, updating and unloading the eBPF backend leaves no program, filter, map or pin behind:
read back from the kernel (bpftool, netlink), not from the backend's own bookkeeping."""
from __future__ import annotations

import json
import os
import subprocess
import time

from dataplane.backends import get
from dataplane.backends.ebpf.program import ENTRY_POINTS, MAP_NAMES, SOCK_HOOKS
from dataplane.lab import netns
from dataplane.lab.lab import Lab
from dataplane.spec.scenario import load
from tests.conftest import SCENARIOS


def bpf_ids(kind: str) -> set:
    out = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True, check=True).stdout
    return {obj["id"] for obj in json.loads(out or "[]")}


def filters(lab, node: str) -> list:
    """Every TC bpf filter on the node's links, as `tc` reads them from the kernel."""
    ns = lab.record.objects[node]
    found = []
    with netns.ipr(ns) as ipr:
        links = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    for link in links:
        for direction in ("ingress", "egress"):
            out = netns.run(ns, ["tc", "-j", "filter", "show", "dev", link, direction], timeout=10).stdout
            found += [(link, direction, f.get("options", {}).get("bpf_name"))
                      for f in json.loads(out or "[]") if f.get("kind") == "bpf" and "options" in f]
    return found


def cgroup_hooks(path: str) -> list:
    """The BPF programs attached to a cgroup, as bpftool reads them from the kernel."""
    out = subprocess.run(["bpftool", "-j", "cgroup", "show", path], capture_output=True, text=True).stdout
    return sorted((p.get("attach_type"), p.get("name")) for p in json.loads(out.strip() or "[]"))


def expected_filters(sc, node: str) -> list:
    pods = [p.name for p in sc.topology.pods if p.node == node]
    return sorted([("eth0", "egress", "to_netdev"), ("eth0", "ingress", "from_netdev")] +
                  [(f"v-{p}", d, fn) for p in pods for d, fn in (("egress", "to_pod"), ("ingress", "from_pod"))])


def wait_gone(ids: set, kind: str, timeout=5.0) -> set:
    deadline = time.monotonic() + timeout
    left = ids & bpf_ids(kind)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = ids & bpf_ids(kind)
    return left


def test_load_update_unload_leaves_nothing():
    sc = load(SCENARIOS / "endpoint-update.yaml")
    progs0, maps0 = bpf_ids("prog"), bpf_ids("map")
    lab = Lab.create(sc.topology, "t-bpf-life")
    cgroups = [lab.cgroup_of(n) for n in ("node1", "node2")]
    backend = get("ebpf", seed=3)
    try:
        backend.setup(lab, sc.services)
        progs, maps = bpf_ids("prog") - progs0, bpf_ids("map") - maps0
        per_node = len(ENTRY_POINTS) + len(SOCK_HOOKS)                    # one object per node
        assert len(progs) == per_node * len(sc.topology.nodes)
        assert len(maps) >= len(MAP_NAMES) * len(sc.topology.nodes)
        for node in ("node1", "node2"):
            assert sorted(filters(lab, node)) == expected_filters(sc, node)
            # the socket hooks sit on the node's own cgroup, which the lab made
            assert [name for _, name in cgroup_hooks(lab.cgroup_of(node))] == sorted(SOCK_HOOKS)
        pins = f"/sys/fs/bpf/dp-{lab.name}"
        assert sorted(os.listdir(pins)) == ["node1", "node2"]
        update = next(s for s in sc.steps if hasattr(s, "table"))
        backend.sync(lab, update.table)
        assert bpf_ids("prog") - progs0 == progs                 # an update reloads nothing
        backend.teardown(lab)
        assert filters(lab, "node1") == [] and filters(lab, "node2") == []
        assert all(cgroup_hooks(cg) == [] for cg in cgroups)     # detached, the cgroups still there
        assert not os.path.exists(pins)
        assert wait_gone(progs, "prog") == set()
        assert wait_gone(maps, "map") == set()
    finally:
        backend.teardown(lab)
        lab.teardown()
    assert not any(os.path.exists(cg) for cg in cgroups)         # and the lab's teardown removes them
