"""The debugging tools on running labs, through the CLI as a user runs them: `trace` while a
connection goes through a VIP (eBPF events; netfilter's trace on nftables), `maps` while a
connection is held open, and `explain` naming the same candidates as the eBPF trace and the maps.
BPF-level checks of the events themselves: tests/bpf/test_trace.py."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from dataplane.lab import netns
from tests.conftest import ROOT, SCENARIOS

VIP = "10.96.0.10"
HOSTS = {"web-1": "10.0.1.3:8080", "web-2": "10.0.2.2:8080", "web-3": "10.0.2.3:8080"}   # clusterip.yaml
ENDPOINTS = set(HOSTS.values())


def cli(*args, check=True, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "dataplane.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


CONNECT = """
import socket, sys
s = socket.create_connection(("{vip}", 80), timeout=3)
s.sendall(b"GET /hostname HTTP/1.0\\r\\n\\r\\n")
data = b""
while True:                     # HTTP/1.0: the server closes after its answer
    chunk = s.recv(1000)
    if not chunk:
        break
    data += chunk
print(data.split(b"\\r\\n\\r\\n", 1)[-1].decode().strip())
s.close()
try:
    socket.create_connection(("{vip}", 81), timeout=3)
    print("81 open?")
except ConnectionRefusedError:
    print("81 refused")
"""


def traced(lab: str, *args, seconds: float = 20.0):
    """Start `dataplane trace LAB --json`, wait until it says it is tracing, return the process."""
    proc = subprocess.Popen([sys.executable, "-m", "dataplane.cli", "trace", lab, "--json", "--seconds",
                             str(seconds), *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stderr.readline()
    assert line.startswith("# tracing"), line + proc.stderr.read()
    return proc


def events_of(proc) -> list[dict]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def client_connects(lab: str) -> list[str]:
    proc = netns.run(f"dp-{lab}.client", [sys.executable, "-c", CONNECT.format(vip=VIP)], timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.fixture(scope="module")
def ebpf_lab():
    name = "t-debug"
    cli("up", str(SCENARIOS / "clusterip.yaml"), "--name", name, "--backend", "ebpf")
    try:
        yield name
    finally:
        cli("down", name)


def test_trace_shows_dnat_reverse_nat_and_a_named_rejection(ebpf_lab):
    proc = traced(ebpf_lab, "--pod", "client", seconds=8)
    answer = client_connects(ebpf_lab)
    events = events_of(proc)
    assert answer[-1] == "refused"
    new = [e for e in events if e["outcome"] == "M_DNAT_NEW" and e["before"]["dport"] == 80]
    assert len(new) == 1, events
    e = new[0]
    assert e["hook"] == "from_pod" and e["interface"] == "v-client" and e["before"]["dst"] == VIP
    assert e["backend"] in ENDPOINTS and e["after"]["dst"] + ":8080" == e["backend"]
    assert e["service"] == "default/web:http (cluster IP)" and e["choice"]["count"] == 3
    assert HOSTS[answer[0]] == e["backend"]                 # the pod that answered is the one the event names
    # explain's candidates are in the order the programs' slots count (the one rule the oracle
    # and the renderer share, docs/datapath.md): the trace's slot names the same endpoint
    live = json.loads(cli("explain", ebpf_lab, "--from", "pod/client", "--to", "service/web", "--json").stdout)
    assert live[0]["candidates"][e["choice"]["slot"] - 1] == e["backend"]
    flow = [x for x in events if x["before"]["sport"] == e["before"]["sport"] or x["before"]["dport"] == e["before"]["sport"]]
    replies = [x for x in flow if x["outcome"] == "M_REVNAT"]
    assert replies and all(r["after"]["src"] == VIP and r["conntrack"]["entry"] == "CT_REPLY" for r in replies)
    assert all(x["backend"] == e["backend"] for x in flow)
    [rejected] = [x for x in events if x["before"]["dport"] == 81]
    assert rejected["outcome"] == "REJECT_PORT_UNSERVED" and rejected["after"]["proto"] == "ICMP"
    # the trace has stopped: its flag is off on every node
    config = json.loads(cli("maps", ebpf_lab, "config", "--json").stdout)
    assert all(not node["config"]["trace"] for node in config.values())


def test_a_trace_killed_with_sigkill_is_turned_off_by_the_agent(ebpf_lab):
    """The reader clears the flag when it stops; one killed outright cannot, and the lab's agent
    (reconcile, every 2 s by default) clears a flag whose reader no longer holds the lab's trace
    lock. A second reader meanwhile is refused while the first holds it."""
    import os
    import signal
    proc = traced(ebpf_lab, seconds=60)
    try:
        second = cli("trace", ebpf_lab, "--seconds", "1", check=False)
        assert second.returncode != 0 and "is being traced already" in second.stderr
        flags = json.loads(cli("maps", ebpf_lab, "config", "--json").stdout)
        assert all(node["config"]["trace"] for node in flags.values())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        flags = json.loads(cli("maps", ebpf_lab, "config", "--json").stdout)
        if not any(node["config"]["trace"] for node in flags.values()):
            break
        time.sleep(0.5)
    assert not any(node["config"]["trace"] for node in flags.values()), flags
    assert "trace events turned off (their reader is gone)" in cli("status", ebpf_lab).stdout


def test_maps_show_a_running_flow_and_explain_names_the_same_candidates(ebpf_lab):
    hold = netns.popen(f"dp-{ebpf_lab}.client", [sys.executable, "-c",
                       f"import socket,time\ns=socket.create_connection(('{VIP}',80),timeout=3)\n"
                       f"print(s.getsockname()[1], flush=True)\ntime.sleep(30)"],
                       stdout=subprocess.PIPE, text=True)
    try:
        port = int(hold.stdout.readline())
        data = json.loads(cli("maps", ebpf_lab, "--node", "node1", "--json").stdout)["node1"]
        [flow] = [f for f in data["conntrack"] if f["entry"] == "service" and f"10.0.1.2:{port} ->" in f["tuple"]]
        assert flow["nat"] in ENDPOINTS and flow["state"] == "established" and flow["remaining"] > 3600
        assert flow["service"] == "default/web:http (cluster IP)"
        [reply] = [f for f in data["conntrack"] if f["entry"] == "reply" and f["tuple"].endswith(f"10.0.1.2:{port}")]
        assert reply["tuple"].startswith(flow["nat"]) and reply["nat"] == f"{VIP}:80"
        [svc] = [s for s in data["services"] if s["frontend"] == f"{VIP}:80/TCP"]
        assert {b["endpoint"] for b in svc["backends"]} == ENDPOINTS
        assert data["metrics"]["M_DNAT_NEW"] >= 1
    finally:
        hold.kill()
        hold.wait()
    # explain, on the lab and offline on every backend: the same candidates as the maps and trace
    live = json.loads(cli("explain", ebpf_lab, "--from", "pod/client", "--to", "service/web", "--json").stdout)
    assert [e["backend"] for e in live] == ["ebpf"] and set(live[0]["candidates"]) == ENDPOINTS
    offline = json.loads(cli("explain", str(SCENARIOS / "clusterip.yaml"), "--from", "pod/client",
                             "--to", "service/web", "--json").stdout)
    assert [e["backend"] for e in offline] == ["ebpf", "iptables", "nftables"]
    for e in offline:
        assert set(e["candidates"]) == ENDPOINTS and e["verdict"] == "DNAT" and e["chosen"] in ENDPOINTS, e


def test_trace_on_nftables_shows_the_chains_netfilter_walked():
    name = "t-debug-nft"
    cli("up", str(SCENARIOS / "clusterip.yaml"), "--name", name, "--backend", "nftables")
    try:
        proc = traced(name, "--node", "node1", "--pod", "client", seconds=8)
        answer = client_connects(name)
        events = events_of(proc)
        assert answer[-1] == "refused"
        syn = [e for e in events if e["packet"].get("dst") == VIP and e["packet"].get("dport") == 80 and e.get("dnat")]
        assert syn, events
        chains = [s[1] for s in syn[0]["steps"]]
        assert "nat-prerouting" in chains and "services" in chains
        assert any(c.startswith("service-") and "default/web/tcp/http" in c for c in chains), chains
        assert syn[0]["dnat"] in ENDPOINTS
        rejected = [e for e in events if e["packet"].get("dport") == 81]
        assert rejected and any("reject" in (s[3] or "") or "reject" in s[2] for s in rejected[0]["steps"]), rejected
        live = json.loads(cli("explain", name, "--from", "pod/client", "--to", "service/web", "--json").stdout)
        assert [e["backend"] for e in live] == ["nftables"] and set(live[0]["candidates"]) == ENDPOINTS
        # the trace table is gone with the trace
        listing = netns.run(f"dp-{name}.node1", ["nft", "list", "tables"], timeout=30).stdout
        assert "dataplane-trace" not in listing
        # a trace killed outright leaves its table: the agent removes it once nobody holds the lock
        import os
        import signal
        proc = traced(name, "--node", "node1", seconds=60)
        assert "dataplane-trace" in netns.run(f"dp-{name}.node1", ["nft", "list", "tables"], timeout=30).stdout
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "dataplane-trace" in netns.run(
                f"dp-{name}.node1", ["nft", "list", "tables"], timeout=30).stdout:
            time.sleep(0.5)
        assert "dataplane-trace" not in netns.run(f"dp-{name}.node1", ["nft", "list", "tables"], timeout=30).stdout
        assert "the trace table dataplane-trace removed (its reader is gone)" in cli("status", name).stdout
        monitors = [p for p in netns.pids_in(f"dp-{name}.node1")
                    if open(f"/proc/{p}/cmdline", "rb").read().startswith(b"nft\0monitor")]
        assert monitors == []
    finally:
        cli("down", name)
