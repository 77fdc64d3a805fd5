"""Host-network clients on the eBPF backend (issue 9, defect 11): the socket hooks on each lab
node's cgroup, read from the kernel and from the sockets themselves; only the lab's own processes
are in those cgroups, and the cgroups go with the lab."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from dataplane.backends import get
from dataplane.lab import cgroups, netns
from dataplane.lab.lab import Lab
from dataplane.spec.scenario import load
from tests.conftest import SCENARIOS

# A node process: UDP without connect() (sendto/recvfrom), and TCP with getpeername().
PROBE = """
import json, socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
u.sendto(b"hostname", ("10.96.0.100", 53))
answer, source = u.recvfrom(65535)
t = socket.create_connection(("10.96.0.100", 80), timeout=3)
peer = t.getpeername()
from dataplane.lab.workload.client import _http_answers
(seen,) = _http_answers(t, ["/clientip"], "web", 0.0, 0, False)
print(json.dumps({"answer": answer.decode(), "source": list(source), "peer": list(peer), "seen": seen}))
"""


def test_node_sockets_see_the_frontend_and_the_backend_sees_the_node():
    sc = load(SCENARIOS / "host-network.yaml")
    lab = Lab.create(sc.topology, "t-hostnet")
    backend = get("ebpf", seed=5)
    paths = [lab.cgroup_of(n.name) for n in sc.topology.nodes]
    try:
        backend.setup(lab, sc.services)
        root = cgroups.mounted_root()
        assert all(p.startswith(os.path.join(root, "dp-t-hostnet") + "/") for p in paths)
        # the node's test server is in its cgroup; a pod's is not in any of the lab's
        server = lab.record.servers["node1"]
        with open(os.path.join(paths[0], "cgroup.procs")) as f:
            assert str(server) in f.read().split()
        pod_server = lab.record.servers["web-1"]
        assert not any(str(pod_server) in open(os.path.join(p, "cgroup.procs")).read().split() for p in paths)
        out = netns.run(lab.record.objects["node1"], [sys.executable, "-c", PROBE], timeout=30,
                        cgroup=lab.cgroup_of("node1"))
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got["answer"] in ("web-1", "web-2")
        assert got["source"] == ["10.96.0.100", 53]          # recvmsg: from the frontend
        assert got["peer"] == ["10.96.0.100", 80]            # getpeername: the frontend
        assert got["seen"].startswith("10.240.0.1:")         # the backend saw the node's address
        metrics = backend.metrics()["node1"]
        assert metrics["M_SOCK_LB"] == 2 and metrics["M_SOCK_REVNAT"] >= 2
        # outside the node's cgroup, nothing is translated: the cluster IP is not served there
        out = netns.run(lab.record.objects["node1"], [sys.executable, "-c", PROBE], timeout=30)
        assert out.returncode != 0
    finally:
        backend.teardown(lab)
        lab.teardown()
    assert not any(os.path.exists(p) for p in paths)
    assert "t-hostnet" not in cgroups.labs_in(cgroups.mounted_root())


def test_dataplane_exec_on_a_node_joins_its_cgroup():
    proc = subprocess.run([sys.executable, "-m", "dataplane.cli", "up", str(SCENARIOS / "host-network.yaml"),
                           "--name", "t-hostexec"], capture_output=True, text=True, timeout=180)
    try:
        assert proc.returncode == 0, proc.stderr
        out = subprocess.run([sys.executable, "-m", "dataplane.cli", "exec", "t-hostexec", "node1", "--",
                              "cat", "/proc/self/cgroup"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "/dp-t-hostexec/node1" in out.stdout
        curl = subprocess.run([sys.executable, "-m", "dataplane.cli", "exec", "t-hostexec", "node1", "--",
                               sys.executable, "-m", "dataplane.lab.workload.client", "--to", "10.96.0.100", "--port", "80"],
                              capture_output=True, text=True, timeout=30)
        assert json.loads(curl.stdout)["results"][0]["outcome"] == "reachable", curl.stdout + curl.stderr
    finally:
        subprocess.run([sys.executable, "-m", "dataplane.cli", "down", "t-hostexec"], capture_output=True, timeout=60)


TWO_STATES = """\
name: hostudp
topology:
  model: island
  nodes: [node1, node2]
  pods:
    - {name: web-1, node: node1, labels: {app: %s}}
    - {name: web-2, node: node2, labels: {app: %s}}
services:
  - name: web
    clusterIP: 10.96.0.110
    selector: {app: web}
    ports: [{port: 53, targetPort: 8080, protocol: UDP}]
"""

# A node process with a connected UDP socket to the cluster IP (as a host DNS client has).
HOLD_UDP = """
import json, socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
u.connect(("10.96.0.110", 53))
u.send(b"hostname")
print(json.dumps({"first": u.recv(65535).decode()}), flush=True)
sys.stdin.readline()
try:
    u.send(b"hostname")
    print(json.dumps({"after": u.recv(65535).decode()}))
except OSError as exc:
    print(json.dumps({"errno": exc.errno}))
"""


def test_a_node_socket_whose_backend_leaves_is_closed(tmp_path):
    """A connected UDP socket's peer is fixed at connect(): when its backend leaves the service the
    sync closes it (ECONNABORTED), as Cilium terminates such sockets, rather than leave it talking
    to a pod that is no longer an endpoint (kube-proxy's reconciler would move the flow)."""
    from tests.helpers import write
    before = load(write(tmp_path, TWO_STATES % ("web", "spare"), "before.yaml"))
    after = load(write(tmp_path, TWO_STATES % ("gone", "web"), "after.yaml"))
    lab = Lab.create(before.topology, "t-hostudp")
    backend = get("ebpf", seed=5)
    try:
        backend.setup(lab, before.services)
        holder = netns.popen(lab.record.objects["node1"], [sys.executable, "-c", HOLD_UDP],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cgroup=lab.cgroup_of("node1"))
        assert json.loads(holder.stdout.readline()) == {"first": "web-1"}
        report = backend.sync(lab, after.services)
        out, err = holder.communicate("go\n", timeout=30)
        # closed under the process: ECONNABORTED, or EDESTADDRREQ from the disconnected socket
        assert json.loads(out) in ({"errno": 103}, {"errno": 89}), out + err
        assert any("flushed" in line for line in report)
        # a new socket reaches the remaining endpoint
        probe = netns.run(lab.record.objects["node1"], [sys.executable, "-m", "dataplane.lab.workload.client", "--to",
                          "10.96.0.110", "--port", "53", "--protocol", "UDP"], timeout=30, cgroup=lab.cgroup_of("node1"))
        assert json.loads(probe.stdout)["results"][0]["hostname"] == "web-2"
    finally:
        backend.teardown(lab)
        lab.teardown()
