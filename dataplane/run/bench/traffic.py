"""Traffic figures on a BenchLab, each through a service and straight to the pod, in the same run
(so a ratio holds on a noisy machine), each repeated: `dataplane bench connect|rr|throughput|nodeport`.

  connect     connect() latency (SYN to SYN-ACK through the dataplane, then a reset: no payload,
              no TIME_WAIT), client pod -> the last filler service, random fillers, web-a directly
  rr          round trips of 1 byte on one kept connection, client -> last filler / web-a
  crr         connections per second (connect, 1 byte each way, reset), 2 client processes
  throughput  iperf3 TCP, client -> web-a (same node) and remote (node2), via a service and direct
  nodeport    64-byte frames (18 bytes of UDP payload) from the outside host to node1's node port,
              16 flows, counted by the sink in web-a; direct: to web-a's pod IP

Every figure is one row: {"bench", "backend", "services", "target", "unit", "value" (the median of
the repeats), "spread" [min, max of the repeats], "reps" [...]}, with p50/p99/p999 rows for the
latencies. Repeats are interleaved (via, direct, via, direct, ...) so drift falls on both.
"""
from __future__ import annotations

import random
import statistics

from ...lab.workload import perf
from ...lab.workload.load import percentile
from .lab import IPERF_PORT, NODE_PORT, SERVE_PORT, UDP_PORT, BenchLab, BENCH_VIPS, filler_vip

FRAME_PAYLOAD = 18          # 14 Ethernet + 20 IP + 8 UDP + 18 + 4 FCS = 64 bytes on a wire
FLOWS = 16


def _row(bench, backend, n, target, unit, reps, stat="value", **extra) -> dict:
    return {"bench": bench, "backend": backend, "services": n, "target": target, "stat": stat, "unit": unit,
            "value": round(statistics.median(reps), 3), "spread": [round(min(reps), 3), round(max(reps), 3)],
            "reps": [round(r, 3) for r in reps], **extra}


def _latency_rows(bench, backend, n, target, runs: list[dict]) -> list[dict]:
    """p50/p99/p999 per repeat (µs), and the errors of all repeats."""
    errors: dict = {}
    per = {"p50": [], "p99": [], "p999": []}
    samples = 0
    for r in runs:
        ns = sorted(r["ns"])
        if not ns:
            raise perf.PerfError(f"{bench} {target} on {backend}: no connection succeeded ({r['errors']})")
        samples += len(ns)
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
        for stat, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
            per[stat].append(percentile(ns, q) / 1000.0)
    return [_row(bench, backend, n, target, "us", per[s], stat=s, samples=samples, errors=errors) for s in per]


def connect(lab: BenchLab, n: int, fillers: int, count: int, reps: int, rng: random.Random) -> list[dict]:
    """n services installed, of which `fillers` serve the connect figures."""
    name = lab.backend.name
    last = str(filler_vip(fillers - 1))
    spread = [str(filler_vip(rng.randrange(fillers))) for _ in range(min(count, 5000))]
    targets = {"via service (last)": [last], "via service (random)": spread, "direct": [str(lab.pods["web-a"])]}
    runs = {t: [] for t in targets}
    for _ in range(reps):
        for t, ips in targets.items():
            lab.progress(f"{name}: connect x{count:,} {t}, {n:,} services")
            runs[t].append(lab.run("client", perf.connect_argv(SERVE_PORT if t == "direct" else 80, count),
                                   timeout=count * 0.1 + 30, input="\n".join(ips) + "\n"))
    return [row for t in targets for row in _latency_rows("connect", name, n, t, runs[t])]


def rr(lab: BenchLab, n: int, fillers: int, count: int, reps: int) -> list[dict]:
    name = lab.backend.name
    targets = {"via service": (str(filler_vip(fillers - 1)), 80), "direct": (str(lab.pods["web-a"]), SERVE_PORT)}
    runs = {t: [] for t in targets}
    for _ in range(reps):
        for t, (ip, port) in targets.items():
            lab.progress(f"{name}: rr x{count:,} {t}")
            runs[t].append(lab.run("client", perf.rr_argv(ip, port, count, 1), timeout=count * 0.1 + 30))
    return [row for t in targets for row in _latency_rows("rr", name, n, t, runs[t])]


def crr(lab: BenchLab, n: int, fillers: int, seconds: float, reps: int) -> list[dict]:
    name = lab.backend.name
    targets = {"via service": (str(filler_vip(fillers - 1)), 80), "direct": (str(lab.pods["web-a"]), SERVE_PORT)}
    rates = {t: [] for t in targets}
    errors = {t: 0 for t in targets}
    for _ in range(reps):
        for t, (ip, port) in targets.items():
            lab.progress(f"{name}: connection rate for {seconds:g} s {t}")
            r = lab.run("client", perf.crr_argv(port, seconds, 2), timeout=seconds + 30, input=ip + "\n")
            rates[t].append(r["connections"] / r["seconds"])
            errors[t] += r["errors"]
    return [_row("crr", name, n, t, "conn/s", rates[t], errors=errors[t]) for t in targets]


def throughput(lab: BenchLab, n: int, seconds: float, reps: int) -> list[dict]:
    name = lab.backend.name
    targets = {"same node, via service": str(BENCH_VIPS), "same node, direct": str(lab.pods["web-a"]),
               "across nodes, via service": str(BENCH_VIPS + 1), "across nodes, direct": str(lab.pods["remote"])}
    gbits = {t: [] for t in targets}
    for _ in range(reps):
        for t, ip in targets.items():
            lab.progress(f"{name}: iperf3 {seconds:g} s {t}")
            r = lab.run("client", ["iperf3", "-c", ip, "-p", str(IPERF_PORT), "-t", str(int(seconds)), "-J"],
                        timeout=seconds + 30)
            if "error" in r:
                raise perf.PerfError(f"iperf3 to {t} on {name}: {r['error']}")
            gbits[t].append(r["end"]["sum_received"]["bits_per_second"] / 1e9)
    return [_row("throughput", name, n, t, "Gbit/s", gbits[t]) for t in targets]


def nodeport(lab: BenchLab, n: int, seconds: float, reps: int) -> list[dict]:
    """The sink counts for `seconds` from the first datagram; the generator runs one second longer
    so the window is full at both ends."""
    name = lab.backend.name
    targets = {"node port": (str(lab.node1), NODE_PORT), "direct": (str(lab.pods["web-a"]), UDP_PORT)}
    pps = {t: [] for t in targets}
    sent = {t: [] for t in targets}
    for _ in range(reps):
        for t, (ip, port) in targets.items():
            lab.progress(f"{name}: UDP flood {seconds:g} s to {t}")
            sink = lab.start("web-a", perf.udp_sink_argv(UDP_PORT, seconds, 10), wait_ready=True)
            flood = lab.run("ext", perf.udp_flood_argv(ip, port, seconds + 1, FRAME_PAYLOAD, FLOWS),
                            timeout=seconds + 30)
            out, _ = sink.communicate(timeout=30)
            got = perf.parse(out.decode(), f"udp-sink for {t}")
            if not got["packets"]:
                raise perf.PerfError(f"nodeport {t} on {name}: the sink received nothing "
                                     f"({got.get('error', '')}; the generator sent {flood['sent']})")
            pps[t].append(got["packets"] / got["seconds"] / 1e6)
            sent[t].append(flood["sent"] / flood["seconds"] / 1e6)
    return [_row("nodeport", name, n, t, "Mpps", pps[t], offered=[round(s, 3) for s in sent[t]]) for t in targets]
