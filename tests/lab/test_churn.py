"""A long-lived TCP connection through a NodePort survives 1,000 short connections churning
through the same node (issue 4), with a conntrack table small enough (2,048 entries) that the
churn must evict: the LRU table gives up the dead and idle, never the live connection."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from dataplane.backends import get
from dataplane.contract.limits import MapSizes
from dataplane.judge.checks import evaluate
from dataplane.lab.workload.argv import client_argv, parse_client_output
from dataplane.spec.checks import CheckSpec
from dataplane.lab import netns
from dataplane.lab.lab import Lab
from dataplane.spec.scenario import load
from tests.helpers import write

SCENARIO = """\
name: churn
topology:
  model: island
  nodes: [node1, node2]
  pods:
    - {name: web-1, node: node1, labels: {app: web}}
    - {name: web-2, node: node2, labels: {app: web}}
  outside:
    - {name: ext, ip: 10.128.1.1}
services:
  - name: web
    type: NodePort
    clusterIP: 10.96.0.120
    selector: {app: web}
    ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
"""

# One connection, kept open, asking /hostname every 20 ms until stdin closes.
HOLDER = textwrap.dedent("""
    import json, socket, sys, threading
    from dataplane.lab.workload.client import _http_answers
    s = socket.create_connection(("10.240.0.1", 30080), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    ok, errors, names = 0, [], set()
    print("connected", flush=True)
    while not stop.wait(0.02):
        try:
            names.add(_http_answers(s, ["/hostname"], "node1", 0.0, 0, False)[0])
            ok += 1
        except Exception as exc:
            errors.append(repr(exc))
            break
    print(json.dumps({"ok": ok, "errors": errors, "backends": sorted(names)}), flush=True)
""")


def test_long_lived_connection_survives_churn(tmp_path):
    sc = load(write(tmp_path, SCENARIO))
    lab = Lab.create(sc.topology, "t-churn", frontends=sc.frontend_routes)
    backend = get("ebpf", seed=9, sizes=MapSizes(conntrack=2048))
    try:
        backend.setup(lab, sc.services)
        ext = lab.record.objects["ext"]
        holder = netns.popen(ext, [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "connected"
        churn = CheckSpec(name="churn", client="ext", target="node/node1", ip=lab.spec.find("node1").ip,
                          port=30080, protocol="TCP", expect="reachable", requests=1000, timeout=2)
        out = netns.run(ext, client_argv(sys.executable, churn), timeout=600)
        result = evaluate(churn, parse_client_output(out.stdout))
        holder.stdin.close()
        report = json.loads(holder.stdout.readline())
        holder.wait(timeout=10)
        assert result.passed, result.detail                      # the churn itself worked
        assert report["errors"] == [] and report["ok"] > 20      # the long connection kept answering
        assert len(report["backends"]) == 1                     # ... from one backend throughout
        metrics = backend.metrics()["node1"]
        assert metrics["M_DNAT_NEW"] >= 1001
        entries = len(backend.nodes["node1"].table("conntrack"))
        assert 1500 <= entries <= 2048          # the churn filled the table: it had to evict
        assert metrics["DROP_CT_FULL"] == 0 and metrics["DROP_SNAT_EXHAUSTED"] == 0
    finally:
        backend.teardown(lab)
        lab.teardown()


OVERLOAD = """\
name: overload
topology:
  model: island
  nodes: [node1, node2]
  pods:
    - {name: client, node: node1}
    - {name: web-1, node: node2, labels: {app: web}}
services:
  - name: web
    clusterIP: 10.96.0.121
    selector: {app: web}
    ports: [{port: 80, targetPort: 8080}]
"""

# 48 connections at once (96 entries) through a table of 64: open all, then ask on each (a lost
# flow's request fails after half a second).
MANY = textwrap.dedent("""
    import json, socket
    from dataplane.lab.workload.client import _http_answers
    socks, ok, failed = [], 0, 0
    for _ in range(48):
        s = socket.create_connection(("10.96.0.121", 80), timeout=3)
        socks.append(s)
    for s in socks:
        s.settimeout(0.5)
        try:
            _http_answers(s, ["/hostname"], "web", 0.0, 0, False)
            ok += 1
        except OSError:
            failed += 1
    print(json.dumps({"ok": ok, "failed": failed}))
""")


def test_conntrack_pressure_is_counted(tmp_path):
    """More live flows than the table holds (issue 9, defect 7): the LRU table evicts some, and
    that shows: a flow whose entries are both gone is counted when its next segment arrives
    (DROP_CT_LOST), a flow that lost one half is healed and counted (M_CT_RESTORED); every
    failed request is one of those."""
    sc = load(write(tmp_path, OVERLOAD))
    lab = Lab.create(sc.topology, "t-overload")
    backend = get("ebpf", seed=9, sizes=MapSizes(conntrack=64))
    try:
        backend.setup(lab, sc.services)
        out = netns.run(lab.record.objects["client"], [sys.executable, "-c", MANY], timeout=300)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        metrics = backend.metrics()["node1"]
        assert result["ok"] + result["failed"] == 48
        assert metrics["DROP_CT_LOST"] + metrics["M_CT_RESTORED"] > 0      # the pressure is visible
        if result["failed"]:
            assert metrics["DROP_CT_LOST"] > 0                              # ... and explains the failures
        assert len(backend.nodes["node1"].table("conntrack")) <= 64
    finally:
        backend.teardown(lab)
        lab.teardown()
