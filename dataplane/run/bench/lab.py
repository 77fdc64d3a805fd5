"""The lab the traffic benchmarks run on, one per backend, and the service tables they install.

Two nodes in the flat model (outside hosts reach pod IPs directly, so a node port has a direct
path to compare with):

  node1: client, web-a, web-b     every filler service's two endpoints are web-a and web-b
  node2: remote                   the far end of the cross-node figures
  ext:   an outside host          the node-port generator

Each server pod runs dpperf (TCP accept and echo on SERVE_PORT) and iperf3 (IPERF_PORT), and
no test server of the lab's own (`ports: []`); the UDP sink is started per measurement. The table holds the bench's own services (namespace `bench`),
a background of imported services if asked (imported.py), and N filler services
`zz-bench/svc-NNNNN`, ClusterIP port 80 -> SERVE_PORT: the connect figures go to the last of them
(last in KUBE-SERVICES order, which is by namespace and name here) or to random ones.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from ipaddress import IPv4Address

from ... import backends
from ...lab import netns, state
from ...lab.lab import Lab
from ...lab.workload import perf
from ...spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable
from .synthetic import topology_of

SERVE_PORT, IPERF_PORT, UDP_PORT, NODE_PORT = 8080, 5201, 9000, 30900
FIRST_VIP = IPv4Address("10.96.0.1")
BENCH_VIPS = IPv4Address("10.100.0.1")      # the bench's own services, apart from the fillers
FILLER_NAMESPACE = "zz-bench"               # sorts after the namespaces of an imported cluster
TOPOLOGY = """\
name: bench
topology:
  model: flat
  nodes: [node1, node2]
  pods:
    - {name: client, node: node1, ports: []}
    - {name: web-a, node: node1, ports: []}
    - {name: web-b, node: node1, ports: []}
    - {name: remote, node: node2, ports: []}
  outside:
    - {name: ext}
"""
SERVERS = ("web-a", "web-b", "remote")


def topology():
    return topology_of(TOPOLOGY)


def filler_vip(i: int) -> IPv4Address:
    return FIRST_VIP + i


def bench_services(pods: dict) -> list[Service]:
    def ep(pod, port, proto="TCP"):
        return Endpoint(pods[pod], (EndpointPort("", port, proto),), "node2" if pod == "remote" else "node1", pod)
    tcp = lambda p: (ServicePort("", p, "TCP", p),)       # noqa: E731
    return [
        Service("bench", "iperf-local", "ClusterIP", BENCH_VIPS, tcp(IPERF_PORT), endpoints=(ep("web-a", IPERF_PORT),)),
        Service("bench", "iperf-remote", "ClusterIP", BENCH_VIPS + 1, tcp(IPERF_PORT),
                endpoints=(ep("remote", IPERF_PORT),)),
        Service("bench", "udp-sink", "NodePort", BENCH_VIPS + 2, (ServicePort("", UDP_PORT, "UDP", UDP_PORT, NODE_PORT),),
                endpoints=(ep("web-a", UDP_PORT, "UDP"),)),
    ]


def filler(i: int, pods: dict) -> Service:
    """Filler service i: ClusterIP port 80 on web-a and web-b."""
    port = (EndpointPort("", SERVE_PORT, "TCP"),)
    eps = [Endpoint(pods[p], port, "node1", p) for p in ("web-a", "web-b")]
    return Service(FILLER_NAMESPACE, f"svc-{i:05d}", "ClusterIP", filler_vip(i), (ServicePort("", 80, "TCP", SERVE_PORT),),
                   endpoints=tuple(eps))


def fillers(n: int, pods: dict) -> list[Service]:
    return [filler(i, pods) for i in range(n)]


def table(n: int, pods: dict, background=()) -> ServiceTable:
    """The bench's services, the background (imported services), and n fillers."""
    t = ServiceTable()
    for s in [*bench_services(pods), *background, *fillers(n, pods)]:
        t.add(s)
    return t


def toggled(svc: Service, extra: IPv4Address) -> Service:
    """svc with an endpoint at `extra` added (on node2, with the ports of its first endpoint), or
    removed if it has one: the change that change-one and churn make."""
    kept = tuple(e for e in svc.endpoints if e.address != extra)
    if len(kept) < len(svc.endpoints):
        return replace(svc, endpoints=kept)
    return replace(svc, endpoints=kept + (Endpoint(extra, svc.endpoints[0].ports, "node2", None),))


class BenchLab:
    """A lab with one backend, its servers started; close() removes every trace of it."""

    def __init__(self, backend_name: str, name: str, progress=lambda m: None):
        self.backend = backends.get(backend_name)
        self.progress = progress
        spec = topology()
        self.pods = {p.name: p.ip for p in spec.pods}
        self.node1 = next(n.ip for n in spec.nodes if n.name == "node1")
        self.lab = Lab.create(spec, name, progress=progress, backend=self.backend.name)
        self._procs = []
        try:
            self.table = table(0, self.pods)
            self.backend.setup(self.lab, self.table)
            for pod in SERVERS:
                self.start(pod, perf.serve_argv(SERVE_PORT), wait_ready=True)
                self.start(pod, ["iperf3", "-s", "-p", str(IPERF_PORT)], wait_ready=False)
        except BaseException:
            self.close()
            raise

    def ns(self, obj: str) -> str:
        return self.lab.record.objects[obj]

    def start(self, obj: str, argv: list, wait_ready: bool) -> subprocess.Popen:
        """A server in `obj`'s namespace, its errors in the lab's log directory (removed with the lab)."""
        logdir = state.lab_files(self.lab.name)
        log_path = os.path.join(logdir, f"{obj}-{os.path.basename(argv[0])}-{argv[1]}.log")
        with open(log_path, "w") as log:
            proc = netns.popen(self.ns(obj), argv, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE if wait_ready else log, stderr=log, start_new_session=True)
        self._procs.append(proc)
        if wait_ready:
            line = proc.stdout.readline().decode().strip()
            if line != "ready":
                with open(log_path) as f:
                    why = f.read().strip()[-300:]
                raise perf.PerfError(f"{' '.join(argv[:3])} in {obj} did not start: {why or 'no output'}")
        return proc

    def sync(self, table: ServiceTable) -> None:
        self.backend.sync(self.lab, table)
        self.table = table

    def run(self, obj: str, argv: list, timeout: float, input: str | None = None) -> dict:
        out = netns.run(self.ns(obj), argv, timeout=timeout, input=input)
        if out.returncode != 0:
            raise perf.PerfError(f"{' '.join(map(str, argv[:3]))} in {obj} failed ({out.returncode}): "
                                 f"{(out.stderr or out.stdout).strip()[-300:]}")
        return perf.parse(out.stdout, f"{argv[1] if len(argv) > 1 else argv[0]} in {obj}")

    def forget_flows(self) -> None:
        """Empty conntrack tables (the kernel's, and the backend's own): each traffic figure
        starts as the first, whatever ran before it."""
        self.backend.forget_flows(self.lab)

    def close(self) -> None:
        try:
            for proc in self._procs:
                proc.kill()
                proc.wait()
            self._procs = []
        finally:
            try:
                self.backend.teardown(self.lab)
            finally:
                self.lab.teardown()     # also kills whatever still runs in its namespaces
