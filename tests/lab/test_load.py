"""Background load on live labs: an outage under load is counted and listed with its times (the
check can fail in the kernel as on the emulator), and a run stopped while loads run leaves no
generator behind."""
from __future__ import annotations

import json
import os
import time
import signal
import subprocess
import sys

import pytest

from dataplane.backends import get
from dataplane.lab import netns, state
from dataplane.run.runner import run_live
from dataplane.spec.scenario import load
from tests.helpers import BASE, write
from tests.lab.test_lifecycle import lab_namespaces, wait_for

SERVICE = ("services:\n  - {name: web, clusterIP: 10.96.0.10, selector: {app: web}, ports: "
           "[{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, targetPort: 8080, protocol: UDP}]}\n")
OUTAGE = (BASE + SERVICE + "checks:\n"
          "  - load: {name: tcp, from: pod/client, to: service/web, port: 80, rate: 20}\n"
          "  - load: {name: udp, from: [pod/client, node/node2], to: service/web, port: 53, rate: 20}\n"
          "  - sleep: 1\n"
          "  - update: {name: down, pods: [{name: web-1, ready: false}, {name: web-2, ready: false}]}\n"
          "  - sleep: 1\n"
          "  - update: {name: up, pods: [{name: web-1, ready: true}, {name: web-2, ready: true}]}\n"
          "  - sleep: 1\n"
          "  - endLoad: {name: tcp}\n"
          "  - endLoad: {name: udp}\n")


@pytest.mark.parametrize("backend", ["ebpf", "nftables"])
def test_an_outage_under_load_is_counted_and_listed(tmp_path, backend):
    """For one second no endpoint is ready: the requests of that second fail, the others not, and
    the failures are listed at their times. Both backends reject a service without endpoints;
    kube-proxy's rejections are ICMP port unreachables (TCP too) that the node rate-limits
    (docs/differences.md), so most of its failures are silence (dropped), where eBPF's are all
    refused."""
    report = run_live(load(write(tmp_path, OUTAGE)), get(backend, strict=False, seed=1), f"t-load-{backend[:4]}")
    for result in report.results:
        assert not result.passed, result.detail
        failed = result.failures
        kinds = {"reachable", "refused"} | ({"dropped"} if backend != "ebpf" else set())
        assert {"reachable", "refused"} <= set(result.outcomes) <= kinds, result.outcomes
        assert result.requests - result.outcomes["reachable"] == len(failed) == sum(
            n for k, n in result.outcomes.items() if k != "reachable")
        # about one second of requests per client: 20/s, give or take the syncs' timing
        per_client = len(failed) / len({f["client"] for f in failed})
        assert 12 <= per_client <= 28, (per_client, result.detail)
        times = sorted(f["at"] for f in failed)
        assert 0.8 <= times[0] and times[-1] <= 2.6, times
        assert result.detail.startswith(f"{len(failed)} of {result.requests} requests failed (at most 0): ")
        assert "refused (ECONNREFUSED" in result.detail
        assert result.to_json()["failed"] == len(failed)


def test_a_run_stopped_under_load_leaves_no_generator(tmp_path):
    path = write(tmp_path, BASE + SERVICE + "checks:\n"
                 "  - load: {name: tcp, from: [pod/client, host/ext], to: service/web, port: 80, rate: 10}\n"
                 "  - sleep: 60\n"
                 "  - endLoad: {name: tcp}\n")
    proc = subprocess.Popen([sys.executable, "-m", "dataplane.cli", "run", str(path), "--name", "t-loadstop"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (state.load("t-loadstop") or state.LabRecord("t-loadstop")).ready, 120, "the lab")
        rec = state.load("t-loadstop")
        generators = lambda: [p for ns in (rec.objects["client"], rec.objects["ext"]) for p in netns.pids_in(ns)
                              if b"dataplane.lab.workload.load" in _cmdline(p)]
        wait_for(lambda: len(generators()) == 2, 60, "both generators to run")
        running = generators()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and "tearing down lab t-loadstop" in err, err
    assert lab_namespaces("t-loadstop") == []
    assert not [p for p in running if os.path.exists(f"/proc/{p}")]


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


# A server of every kind of answer, on the loopback of a namespace of its own.
SERVERS = r'''
import socket, sys, threading
def http(port, answer, close):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(512)
    held = []
    def serve():
        while True:
            c, _ = s.accept()
            if answer is None:
                held.append(c)          # accepted, never answered
                continue
            c.recv(4096); c.sendall(answer)
            c.close() if close else held.append(c)
    threading.Thread(target=serve, daemon=True).start()
http(8081, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nsrv-open\n", close=False)  # answers, keeps the connection
http(8082, b"HTTP/1.1 503 Unavailable\r\n\r\n", close=True)
http(8083, None, close=False)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 8085))
def udp():
    while True:
        data, peer = u.recvfrom(4096); u.sendto(b"srv-udp\n", peer)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
'''

GENERATED = {   # case: (port, protocol, outcomes seen, error of the failures)
    "a whole answer by Content-Length, the connection left open": (8081, "TCP", {"reachable"}, None),
    "an HTTP error": (8082, "TCP", {"error"}, "HTTP 503"),
    "accepted, never answered": (8083, "TCP", {"dropped"}, "timeout"),
    "nothing listening": (8084, "TCP", {"refused"}, "ECONNREFUSED"),
    "UDP answered": (8085, "UDP", {"reachable"}, None),
    "UDP to a closed port": (8086, "UDP", {"refused"}, "ECONNREFUSED"),
}


@pytest.fixture(scope="module")
def answers():
    ns = "dp-t-loadgen.srv"
    netns.create(ns)
    server = None
    try:
        netns.run(ns, ["ip", "link", "set", "lo", "up"], timeout=10)
        server = netns.popen(ns, [sys.executable, "-c", SERVERS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        assert server.stdout.readline().strip() == "ready"
        yield ns
    finally:
        if server is not None:
            server.kill()
            server.wait()
        netns.remove(ns)


def _generate(ns, port, protocol, seconds=1.0, prefix=(), rate=20, timeout=0.3):
    argv = [*prefix, sys.executable, "-m", "dataplane.lab.workload.load", "--to", "127.0.0.1", "--port", str(port),
            "--protocol", protocol, "--rate", str(rate), "--timeout", str(timeout)]
    proc = netns.popen(ns, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == '{"started": true}'
    time.sleep(seconds)
    out, err = proc.communicate("stop\n", timeout=10)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(GENERATED))
def test_the_generator_classifies_every_answer(answers, case):
    port, protocol, outcomes, error = GENERATED[case]
    summary = _generate(answers, port, protocol)
    assert set(summary["outcomes"]) == outcomes, summary
    assert summary["requests"] == summary["due"] >= 18, summary       # 20/s for 1 s, none skipped
    assert sum(summary["outcomes"].values()) == summary["requests"]
    assert {f["error"] for f in summary["failures"]} == ({error} if error else set())
    if outcomes == {"reachable"}:
        assert set(summary["answered"]) == {"srv-open" if protocol == "TCP" else "srv-udp"}
    if error == "timeout":       # timed out after --timeout, listed at the times they were due
        assert {f["ms"] for f in summary["failures"]} == {300.0}
        assert [f["at"] for f in summary["failures"]][:3] == pytest.approx([0.0, 0.05, 0.1], abs=0.02)


def test_out_of_descriptors_is_counted_not_fatal(answers):
    """Requests that never end (port 8083) pile up sockets until the process has no descriptor
    left: those requests fail with EMFILE, and the summary still comes."""
    summary = _generate(answers, 8083, "TCP", prefix=("prlimit", "--nofile=16:16"), rate=100, timeout=1)
    errors = {f["error"] for f in summary["failures"]}
    assert any("EMFILE" in e or "Too many open files" in e for e in errors), errors
    assert summary["outcomes"].get("error") and summary["outcomes"].get("dropped"), summary
