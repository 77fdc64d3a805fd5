"""Loading, updating and unloading the eBPF backend leaves no program, filter, map or pin behind:
read back from the kernel (bpftool, netlink), not from the backend's own bookkeeping."""
from __future__ import annotations

import json
import os
import subprocess
import time

from dataplane.backends import get
from dataplane.backends.ebpf.program import ENTRY_POINTS, MAP_NAMES
from dataplane.lab import netns
from dataplane.lab.lab import Lab
from dataplane.scenario import load
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
    backend = get("ebpf", seed=3)
    try:
        backend.setup(lab, sc.services)
        progs, maps = bpf_ids("prog") - progs0, bpf_ids("map") - maps0
        assert len(progs) == len(ENTRY_POINTS) * len(sc.topology.nodes)   # one object per node
        assert len(maps) >= len(MAP_NAMES) * len(sc.topology.nodes)
        assert sorted(filters(lab, "node1")) == [("eth0", "egress", "to_netdev"), ("eth0", "ingress", "from_netdev"),
                                                 ("v-client", "egress", "to_pod"), ("v-client", "ingress", "from_pod")]
        assert len(filters(lab, "node2")) == 6 and {f[0] for f in filters(lab, "node2")} == {"eth0", "v-web-1", "v-web-2"}
        pins = f"/sys/fs/bpf/dp-{lab.name}"
        assert sorted(os.listdir(pins)) == ["node1", "node2"]
        update = next(s for s in sc.steps if hasattr(s, "table"))
        backend.sync(lab, update.table)
        assert bpf_ids("prog") - progs0 == progs                 # an update reloads nothing
        backend.teardown(lab)
        assert filters(lab, "node1") == [] and filters(lab, "node2") == []
        assert not os.path.exists(pins)
        assert wait_gone(progs, "prog") == set()
        assert wait_gone(maps, "map") == set()
    finally:
        backend.teardown(lab)
        lab.teardown()
