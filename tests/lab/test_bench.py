"""`dataplane bench`, bounded: dpperf measures what it says in a namespace, and a small run of every
lab bench yields a well-formed figure for each backend and leaves nothing behind. No figure is
judged by its size: speed is measured by the command, never asserted here."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from dataplane.lab import netns, state
from dataplane.lab.workload import perf
from dataplane.run.bench import suite
from dataplane.run.bench.lab import SERVE_PORT
from tests.lab.conftest import dataplane, leftovers


@pytest.fixture
def ns():
    name = f"dp-perftest{os.getpid()}.box"
    netns.remove(name)
    netns.create(name)
    with netns.ipr(name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    try:
        yield name
    finally:
        netns.kill_all_in(name)
        netns.remove(name)


def _run(ns, argv, stdin=None, timeout=30):
    out = netns.run(ns, argv, timeout=timeout, input=stdin)
    assert out.returncode == 0, out.stderr
    return perf.parse(out.stdout, argv[1])


def test_dpperf_counts_what_it_does(ns):
    server = netns.popen(ns, perf.serve_argv(SERVE_PORT), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert server.stdout.readline().strip() == b"ready"
        got = _run(ns, perf.connect_argv(SERVE_PORT, 300), stdin="127.0.0.1\n")
        assert len(got["ns"]) == 300 and got["errors"] == {} and min(got["ns"]) > 0
        # nobody listens on 9: every connect is refused, and said so
        got = _run(ns, perf.connect_argv(9, 5), stdin="127.0.0.1\n")
        assert got == {"ns": [], "errors": {"refused": 5}}
        got = _run(ns, perf.rr_argv("127.0.0.1", SERVE_PORT, 200, 64))
        assert len(got["ns"]) == 200 and got["errors"] == {}
        # echoes larger than a socket's send buffer come back whole (written as room appears)
        got = _run(ns, perf.rr_argv("127.0.0.1", SERVE_PORT, 20, 65536))
        assert len(got["ns"]) == 20 and got["errors"] == {}
        got = _run(ns, perf.crr_argv(SERVE_PORT, 1, 2), stdin="127.0.0.1\n")
        assert got["connections"] > 0 and got["errors"] == 0 and got["processes"] == 2
    finally:
        server.kill()
        server.wait()
    sink = netns.popen(ns, perf.udp_sink_argv(9000, 1, 5), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert sink.stdout.readline().strip() == b"ready"
    flood = _run(ns, perf.udp_flood_argv("127.0.0.1", 9000, 2, 18, 4))
    got = perf.parse(sink.communicate(timeout=10)[0].decode(), "udp-sink")
    assert flood["sent"] > 0 and flood["flows"] == 4
    assert 0 < got["packets"] <= flood["sent"] and got["bytes"] == 18 * got["packets"]


def test_a_small_run_of_every_lab_bench(tmp_path):
    """Two backends, 1 and 30 services, one repeat each: every figure there, every connection
    answered, the labs gone afterwards; the plots and the JSON written as `bench all --out` does."""
    params = suite.Params(backends=("ebpf", "iptables"), services=(1, 30), reps=1, connects=100,
                          round_trips=100, seconds=1, kernel_fills=(), kernel_calls=0)
    run = suite.run(suite.LAB_BENCHES, params)
    seen = {(r["bench"], r["backend"]) for r in run.rows}
    for backend in params.backends:
        for bench in ("sync", "connect", "rr", "crr", "throughput", "nodeport"):
            assert (bench, backend) in seen, (bench, backend)
    for r in run.rows:
        assert r["value"] > 0 and r["spread"][0] <= r["value"] <= r["spread"][1] and len(r["reps"]) == 1, r
        if r["bench"] in ("connect", "rr"):
            assert r["samples"] == 100 and r["errors"] == {}, r
        if r["bench"] == "crr":
            assert r["errors"] == 0, r
    connect = {(r["backend"], r["services"], r["target"]) for r in run.rows if r["bench"] == "connect"}
    assert ("ebpf", 30, "via service (last)") in connect and ("iptables", 1, "direct") in connect
    assert not [x for x in leftovers() if "bench" in x]
    assert state.all_names() == []


def test_bench_all_out_writes_json_and_plots(tmp_path):
    """The command as a user runs it (kernel figures only, to stay short): exit 0, results.json
    with the machine and revision, a plot."""
    out = tmp_path / "out"
    proc = dataplane("bench", "kernel", "--services", "1,50", "--calls", "200", "--out", str(out), "--json",
                     timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["machine"] and data["revision"] and data["benches"] == ["kernel"]
    assert {r["services"] for r in data["rows"]} == {1, 50}
    assert json.loads(proc.stdout)["rows"] == data["rows"]
    assert (out / "kernel.png").read_bytes()[:4] == b"\x89PNG"
    assert "ns per packet" in (out / "results.txt").read_text()
