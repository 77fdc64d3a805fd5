"""A running lab's agent (issue 12): reload keeps connections, apply and delete change a running
lab, drift is repaired. Every check goes through the CLI, as a user would, and through real
sockets in the lab."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from dataplane.lab import netns, state
from tests.helpers import write
from tests.lab.conftest import dataplane

LIVE = ("ebpf", "iptables", "iptables-legacy", "nftables")

# ClusterIP and NodePort (TCP and UDP) and egress masquerade in one lab (island: pods are not
# routed outside, so pod -> outside host is masqueraded to the node IP).
RELOAD = """\
name: t-agent
topology:
  model: island
  nodes: [node1, node2]
  pods:
    - {name: client, node: node1}
    - {name: web-1, node: node1, labels: {app: web}}
    - {name: web-2, node: node2, labels: {app: web}}
  outside:
    - {name: ext, ip: 10.128.1.1, ports: [8080, 8080/UDP]}
  masquerade: {enabled: true}
services:
  - name: web
    type: NodePort
    clusterIP: 10.96.0.50
    selector: {app: web}
    ports:
      - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
      - {name: dns, port: 53, targetPort: 8080, nodePort: 30053, protocol: UDP}
"""

EMPTY = """\
name: t-apply
topology:
  model: flat
  nodes: [node1, node2]
  pods:
    - {name: client, node: node1}
    - {name: web-1, node: node1, labels: {app: web}}
    - {name: web-2, node: node2, labels: {app: web}}
services:
  - name: other
    clusterIP: 10.96.0.60
    selector: {app: web}
    ports: [{port: 81, targetPort: 8080}]
"""

ADD = """\
services:
  - name: web
    clusterIP: 10.96.0.50
    selector: {app: web}
    ports: [{port: 80, targetPort: 8080}]
"""


class Flows:
    """dataplane.lab.workload.flows in one of the lab's namespaces."""

    def __init__(self, lab: str, obj: str, tcp=(), udp=()):
        argv = [sys.executable, "-m", "dataplane.lab.workload.flows"]
        argv += [a for t in tcp for a in ("--tcp", t)] + [a for u in udp for a in ("--udp", u)]
        self.proc = netns.popen(state.load(lab).objects[obj], argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        first = json.loads(self.proc.stdout.readline() or '{"error": "no output"}')
        assert "opened" in first, f"flows from {obj} did not open: {first}"

    def round(self) -> dict:
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        return {f["flow"]: f for f in json.loads(self.proc.stdout.readline())["flows"]}

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def request(lab: str, obj: str, target: str, protocol: str = "tcp") -> dict:
    """One new flow (opened, used once, closed): {"ok", "answer", "error"}."""
    argv = [sys.executable, "-m", "dataplane.lab.workload.flows", f"--{protocol}", target, "--timeout", "2",
            "--tries", "1"]
    proc = netns.run(state.load(lab).objects[obj], argv, timeout=30, input="round\n")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    if "error" in lines[0]:
        return {"ok": False, "answer": None, "error": lines[0]["error"]}
    return lines[1]["flows"][0]


def wait_until(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.25)


def filter_ids(lab: str, node: str) -> set:
    ns = state.load(lab).objects[node]
    out = netns.run(ns, ["tc", "-j", "filter", "show", "dev", "eth0", "ingress"], timeout=10).stdout
    return {f["options"]["prog"]["id"] for f in json.loads(out or "[]") if "options" in f and "prog" in f["options"]}


def pinned_map_ids(lab: str, node: str) -> dict:
    d = f"/sys/fs/bpf/dp-{lab}/{node}"
    out = {}
    for name in sorted(os.listdir(d)):
        shown = subprocess.run(["bpftool", "-j", "map", "show", "pinned", f"{d}/{name}"], capture_output=True,
                               text=True, check=True).stdout
        out[name] = json.loads(shown)["id"]
    return out


def test_reload_keeps_connections_through_vip_nodeport_and_masquerade(tmp_path):
    path = write(tmp_path, RELOAD)
    dataplane("up", str(path), "--backend", "ebpf", check=True, timeout=300)
    inside = outside = None
    try:
        inside = Flows("t-agent", "client", tcp=["10.96.0.50:80", "10.128.1.1:8080"],
                       udp=["10.96.0.50:53", "10.128.1.1:8080"])
        outside = Flows("t-agent", "ext", tcp=["10.240.0.1:30080"], udp=["10.240.0.1:30053"])
        before = {**inside.round(), **outside.round()}
        assert all(f["ok"] for f in before.values()), before
        agent_before = state.load("t-agent").agent_pid
        programs_before = filter_ids("t-agent", "node1")
        maps_before = pinned_map_ids("t-agent", "node1")

        # another seed: a flow whose conntrack entry were lost could hash to another backend
        reload = dataplane("reload", "t-agent", "--seed", "4242", check=True, timeout=300)
        assert "lab t-agent reloaded" in reload.stdout
        assert state.load("t-agent").agent_pid not in (0, agent_before)
        # the programs were replaced (new ids in the same filters), not left as they were
        assert programs_before and filter_ids("t-agent", "node1").isdisjoint(programs_before)
        # ... and the maps are the very same kernel objects
        assert pinned_map_ids("t-agent", "node1") == maps_before

        for _ in range(3):
            after = {**inside.round(), **outside.round()}
            for flow, result in after.items():
                assert result["ok"], f"{flow} broke across the reload: {result}"
                # the same backend (the conntrack entry was kept) and, for TCP, the same connection
                assert result["answer"] == before[flow]["answer"], (flow, before[flow], result)
    finally:
        for f in (inside, outside):
            if f is not None:
                f.close()
        dataplane("down", "t-agent", check=True)


def test_reload_refuses_maps_of_another_layout_and_keeps_serving(tmp_path):
    path = write(tmp_path, RELOAD)
    dataplane("up", str(path), "--backend", "ebpf", check=True, timeout=300)
    try:
        flows = Flows("t-agent", "client", tcp=["10.96.0.50:80"])
        first = flows.round()
        refused = dataplane("reload", "t-agent", "--map-size", "services=1000", timeout=300)
        assert refused.returncode != 0
        assert "do not have this build's layout" in refused.stderr and "services (max_entries" in refused.stderr
        assert state.load("t-agent").agent_pid in state.agent_pids("t-agent")     # an agent again
        assert flows.round() == first                                          # still the same connection
        flows.close()
    finally:
        dataplane("down", "t-agent", check=True)


@pytest.mark.parametrize("backend", LIVE)
def test_apply_adds_a_service_and_delete_removes_it(tmp_path, backend):
    path = write(tmp_path, EMPTY)
    add = write(tmp_path, ADD, "add.yaml")
    lab = "t-apply"
    dataplane("up", str(path), "--name", lab, "--backend", backend, check=True, timeout=300)
    try:
        never = request(lab, "client", "10.96.0.50:80")      # the lab before the service exists
        assert not never["ok"]
        bad = write(tmp_path, ADD.replace("port: 80,", "port: 99999,"), "bad.yaml")
        refused = dataplane("apply", lab, str(bad))
        assert refused.returncode != 0 and "bad.yaml:5" in refused.stderr and "port" in refused.stderr
        applied = dataplane("apply", lab, str(add), check=True)
        assert "service default/web created" in applied.stdout
        got = wait_until(lambda: request(lab, "client", "10.96.0.50:80"), 10, "the applied service answers")
        assert got["answer"] in ("web-1", "web-2")
        deleted = dataplane("delete", lab, "service/web", check=True)
        assert "service default/web deleted" in deleted.stdout
        # gone as if it had never been: the client fails as it did before (how depends on the
        # mode: nftables drops traffic to unallocated cluster IPs, the others leave it to routing)
        gone = request(lab, "client", "10.96.0.50:80")
        assert not gone["ok"] and gone["error"].split(":")[0] == never["error"].split(":")[0], (never, gone)
        # a restarted agent rebuilds the same state from the journal
        dataplane("reload", lab, check=True, timeout=300)
        assert not request(lab, "client", "10.96.0.50:80")["ok"]
        assert request(lab, "client", "10.96.0.60:81")["ok"]
    finally:
        dataplane("down", lab, check=True)


BEHIND_OUR_BACK = {
    "ebpf": [["sh", "-c", "for k in $(bpftool -j map dump pinned /sys/fs/bpf/dp-t-drift/node1/services | "
                          "python3 -c 'import json,sys; [print(\"_\".join(e[\"key\"])) for e in json.load(sys.stdin)]'); "
                          "do bpftool map delete pinned /sys/fs/bpf/dp-t-drift/node1/services key $(echo $k | tr _ ' '); "
                          "done"],
             ["tc", "filter", "del", "dev", "v-client", "ingress"]],
    "iptables": [["iptables", "-t", "nat", "-F"], ["iptables", "-F"]],
    "iptables-legacy": [["iptables-legacy", "-t", "nat", "-F"], ["iptables-legacy", "-F"]],
    "nftables": [["nft", "delete", "table", "ip", "kube-proxy"]],
}


@pytest.mark.parametrize("backend", LIVE)
def test_drift_behind_the_agents_back_is_repaired(tmp_path, backend):
    path = write(tmp_path, EMPTY)
    lab = "t-drift"
    dataplane("up", str(path), "--name", lab, "--backend", backend, "--reconcile-period", "1", check=True,
              timeout=300)
    try:
        # traffic alone is no drift (counters move, conntrack fills): a few periods, no repair
        for _ in range(3):
            assert request(lab, "client", "10.96.0.60:81")["ok"]
            time.sleep(1)
        st = json.loads(dataplane("status", lab, "--json", check=True).stdout)["agent"]
        assert st["reconciles"] >= 2 and st["repairs"] == 0, st["drift"]
        node1 = state.load(lab).objects["node1"]
        for argv in BEHIND_OUR_BACK[backend]:
            done = netns.run(node1, argv, timeout=30)
            assert done.returncode == 0, done.stderr
        wait_until(lambda: request(lab, "client", "10.96.0.60:81")["ok"], 10, "the service answers again")
        st = json.loads(dataplane("status", lab, "--json", check=True).stdout)
        assert st["agent_running"] and st["agent"]["repairs"] >= 1 and st["agent"]["drift"]
        shown = dataplane("status", lab, check=True).stdout
        assert "drift found and repaired" in shown
    finally:
        dataplane("down", lab, check=True)


def test_a_change_that_does_not_fit_the_maps_is_refused_and_changes_nothing(tmp_path):
    path = write(tmp_path, EMPTY)
    add = write(tmp_path, ADD, "add.yaml")
    lab = "t-full"
    # room for the scenario's service (VIP marker, service port, two backend slots) and no more
    dataplane("up", str(path), "--name", lab, "--backend", "ebpf", "--map-size", "services=6", check=True,
              timeout=300)
    try:
        refused = dataplane("apply", lab, str(add))
        assert refused.returncode != 0
        assert "the services map holds 6 entries; this sync needs 8" in refused.stderr
        assert "--map-size services=16" in refused.stderr and "nothing was written" in refused.stderr
        assert request(lab, "client", "10.96.0.60:81")["ok"]          # the previous state still serves
        assert not request(lab, "client", "10.96.0.50:80")["ok"]
        st = json.loads(dataplane("status", lab, "--json", check=True).stdout)["agent"]
        assert st["refused"] == 1 and st["services"] == 1
        # and the journal did not keep it: a restarted agent serves the same
        dataplane("reload", lab, check=True, timeout=300)
        assert request(lab, "client", "10.96.0.60:81")["ok"]
    finally:
        dataplane("down", lab, check=True)


def test_a_killed_agent_leaves_the_dataplane_serving_and_reload_adopts_it(tmp_path):
    path = write(tmp_path, EMPTY)
    add = write(tmp_path, ADD, "add.yaml")
    lab = "t-killed"
    dataplane("up", str(path), "--name", lab, "--backend", "ebpf", check=True, timeout=300)
    flows = None
    try:
        flows = Flows(lab, "client", tcp=["10.96.0.60:81"], udp=["10.96.0.60:81"])
        first = flows.round()
        [pid] = state.agent_pids(lab)
        os.kill(pid, 9)
        wait_until(lambda: not state.agent_pids(lab), 10, "the agent to die")
        assert flows.round() == first                         # nobody drives it; it still serves
        assert request(lab, "client", "10.96.0.60:81")["ok"]
        refused = dataplane("apply", lab, str(add))
        assert refused.returncode != 0 and f"dataplane reload {lab}" in refused.stderr
        assert "no agent running" in dataplane("status", lab, check=True).stdout
        dataplane("reload", lab, check=True, timeout=300)
        assert state.agent_pids(lab) and flows.round() == first
        dataplane("apply", lab, str(add), check=True)
        wait_until(lambda: request(lab, "client", "10.96.0.50:80")["ok"], 10, "the applied service answers")
    finally:
        if flows is not None:
            flows.close()
        dataplane("down", lab, check=True)
