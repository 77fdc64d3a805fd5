"""A long-lived TCP connection through a NodePort survives 1,000 short connections churning
through the same node (issue 4), with a conntrack table small enough (2,048 entries) that the
churn must evict: the LRU table gives up the dead and idle, never the live connection."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from dataplane.backends import get
from dataplane.backends.ebpf.program import MapSizes
from dataplane.checks import CheckSpec, client_argv, evaluate, parse_client_output
from dataplane.lab import netns
from dataplane.lab.lab import Lab
from dataplane.scenario import load
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
    from dataplane.agent.client import _http_answers
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
