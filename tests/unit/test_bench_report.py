"""The bench's pure parts: the terminal table, the plots, the imported background, option errors.
(The figures themselves are measured by `dataplane bench`; tests/lab/test_bench.py runs it bounded.)"""
from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from click.testing import CliRunner

from dataplane import bench_report
from dataplane.cli import cli
from dataplane.run.bench import profile, suite
from dataplane.run.bench.imported import BACKGROUND_PODS, from_dump
from dataplane.run.bench.lab import NODE_PORT, table, toggled

PODS = {"client": IPv4Address("10.0.1.2"), "web-a": IPv4Address("10.0.1.3"), "web-b": IPv4Address("10.0.1.4"),
        "remote": IPv4Address("10.0.2.2")}


def _row(bench, backend, n, target, unit, value, stat="value"):
    return {"bench": bench, "backend": backend, "services": n, "target": target, "stat": stat, "unit": unit,
            "value": value, "spread": [value * 0.9, value * 1.1], "reps": [value * 0.9, value, value * 1.1]}


def _run() -> suite.Run:
    rows = []
    for b in ("ebpf", "iptables"):
        for n in (1, 1000):
            rows += [_row("sync", b, n, t, u, v) for t, u, v in
                     (("apply all", "ms", 5.0 * n), ("change one", "ms", 2.0), ("churn, 1 per sync", "changes/s", 400))]
            rows += [_row("connect", b, n, t, "us", 30.0 + i, stat=s) for i, s in enumerate(("p50", "p99", "p999"))
                     for t in ("via service (last)", "via service (random)", "direct")]
        rows += [_row("rr", b, 1000, t, "us", 20.0, stat="p50") for t in ("via service", "direct")]
        rows += [_row("crr", b, 1000, t, "conn/s", 9000.0) for t in ("via service", "direct")]
        rows += [_row("throughput", b, 1000, t, "Gbit/s", 20.0) for t in ("same node, via service", "same node, direct")]
        rows += [_row("nodeport", b, 1000, t, "Mpps", 0.5) for t in ("node port", "direct")]
    rows += [_row("kernel", "ebpf", n, p, "ns", 100.0 * (1 + i), stat=s) for n in (1, 1000)
             for i, p in enumerate(("floor", "not-service")) for s in ("p50", "p99")]
    return suite.Run(suite.QUICK, suite.BENCHES, "Linux 6.18, 2 CPUs (test)", "abc1234", "2026-11-30", 12.0, rows)


def test_the_table_names_machine_revision_and_every_figure():
    text = bench_report.text(_run())
    assert "revision abc1234" in text and "Linux 6.18, 2 CPUs (test)" in text
    for title in bench_report.TITLES.values():
        assert title in text
    assert "via service (last) p99" in text and "[27.0 - 33.0]" in text


def test_a_plot_per_bench(tmp_path):
    made = bench_report.plots(_run(), str(tmp_path))
    assert sorted(p.rsplit("/", 1)[1] for p in made) == sorted(
        f"{b}.png" for b in ("connect", "sync", "rr", "crr", "throughput", "nodeport", "kernel"))
    for path in made:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_imported_background_fits_the_bench_lab():
    bg = from_dump("tests/data/kubectl-dump.yaml", scale=3)
    one = from_dump("tests/data/kubectl-dump.yaml", scale=1)
    assert len(bg.services) == 3 * len(one.services) > 0
    keys = [s.key for s in bg.services]
    assert len(set(keys)) == len(keys)
    assert len({s.cluster_ip for s in bg.services}) == len(bg.services)
    node_ports = [p.node_port for s in bg.services for p in s.ports if p.node_port]
    assert len(set(node_ports)) == len(node_ports) and NODE_PORT not in node_ports
    assert not any(s.load_balancer_ips or s.external_ips or s.type == "LoadBalancer" for s in bg.services)
    for s in bg.services:
        for e in s.endpoints:
            assert e.address >= BACKGROUND_PODS and e.node in ("node1", "node2") and e.pod is None
    # the same pods behind every copy, as copies of a service select the same pods
    first = {s.name: s for s in bg.services[:len(one.services)]}
    for s in bg.services[len(one.services):]:
        assert s.endpoints == first[s.name.rsplit("-x", 1)[0]].endpoints
    assert any("copies" in n for n in bg.notes) and any("LoadBalancer" in n for n in bg.notes)
    t = table(4, PODS, bg.services)
    assert len(t) == 3 + len(bg.services) + 4
    assert list(t)[-1].key == "zz-bench/svc-00003"       # the connect figures' "last" service is last


def test_a_toggle_adds_then_removes_one_endpoint():
    svc = next(s for s in table(3, PODS) if s.key == "zz-bench/svc-00001")
    once = toggled(svc, PODS["remote"])
    assert len(once.endpoints) == 3 and once.endpoints[-1].address == PODS["remote"]
    assert toggled(once, PODS["remote"]) == svc


@pytest.mark.parametrize("args, message", [
    (["bench", "connect", "--scale", "3"], "--scale multiplies the services of --services-from"),
    (["bench", "connect", "--services", "1,x"], "expected numbers separated by commas"),
    (["bench", "sync", "--services", "0"], "each from 1 to 65,000; got 0"),
    (["bench", "kernel", "--services", "70000"], "each from 1 to 65,536"),
])
def test_bad_options_are_refused_before_anything_runs(args, message):
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 2 and message in out.output, out.output


def test_markdown_has_a_column_per_backend_and_a_row_per_figure():
    md = bench_report.markdown(_run())
    assert "| services | figure | ebpf | iptables |" in md
    assert "| 1,000 | via service (last) p99 | 31.0 [27.9 – 34.1] | 31.0 [27.9 – 34.1] |" in md
    assert "| 1 | floor p50 | 100 [90.0 – 110] |" in md


# -- bench profile: how perf's samples are given to sites (run/bench/profile.py) ------------------

PROG = "bpf_prog_0123456789abcdef_from_pod"
JIT = profile.JitMap(PROG, [0x0, 0x40, 0x80], ["pod.c:80  entry", "lib/parse.h:130  parse", "lib/lb.h:101  lookup"])


def _sample(*frames: str) -> str:
    return "\n".join(f"\tffffffffc0001000 {f}" for f in frames)


@pytest.mark.parametrize("frames, site", [
    # in the program itself: the line of that instruction
    ((f"{PROG}+0x45", "bpf_test_run+0x10"), ("program", "lib/parse.h:130  parse")),
    # in a function it called: that function, and the line of the call (the return address - 1)
    (("memcpy+0x3", "bpf_skb_load_bytes+0x20", f"{PROG}+0x81", "bpf_test_run+0x10"),
     ("bpf_skb_load_bytes", "lib/lb.h:101  lookup")),
    (("__htab_map_lookup_elem+0x9", f"{PROG}+0x80", "bpf_test_run+0x10"),
     ("__htab_map_lookup_elem", "lib/parse.h:130  parse")),
    # not in the program at all: the harness, the syscall, Python
    (("bpf_test_run+0x10", "__sys_bpf+0x99"), None),
    (("pv_native_safe_halt+0xb",), None),
    # the call into the program (a thunk whose caller is the program's first address, found in CI)
    (("__x86_indirect_thunk_rax+0x0", f"{PROG}+0x0", "bpf_test_run+0x10"),
     ("__x86_indirect_thunk_rax", profile.ENTRY)),
], ids=["body", "helper-and-below", "call-at-line-start", "harness", "idle", "entry"])
def test_a_sample_goes_to_the_program_site_or_the_function_it_called(frames, site):
    got = profile.attribute(_sample(*frames), JIT)
    if site is None:
        assert (got.inside, got.outside, got.sites) == (0, 1, {})
    else:
        assert (got.inside, got.outside, dict(got.sites)) == (1, 0, {site: 1})


def test_samples_are_counted_per_site_across_a_script():
    script = "\n\n".join([_sample(f"{PROG}+0x45")] * 3 + [_sample("bpf_test_run+0x1")] * 2 +
                         [_sample("memcpy+0x3", "bpf_skb_load_bytes+0x2", f"{PROG}+0x10")])
    got = profile.attribute(script, JIT)
    assert (got.inside, got.outside) == (4, 2)
    assert got.sites == {("program", "lib/parse.h:130  parse"): 3, ("bpf_skb_load_bytes", "pod.c:80  entry"): 1}
    # within the helper, the function the sample was taken in
    assert got.leaves == {("bpf_skb_load_bytes", "memcpy"): 1}


def test_samples_of_other_threads_are_not_the_paths():
    script = "    41 \n" + _sample(f"{PROG}+0x45") + "\n\n    99 \n" + _sample(f"{PROG}+0x45")
    mine, every = profile.attribute(script, JIT, tid=41), profile.attribute(script, JIT)
    assert (mine.inside, mine.outside) == (1, 1) and (every.inside, every.outside) == (2, 0)


def test_line_info_of_bccs_rewritten_copy_is_placed_back_in_the_sources(tmp_path):
    """bcc compiles a copy of the assembled text with lines added where it rewrote (map
    declarations): distinctive lines found once give the offset, every line takes its nearest."""
    a = tmp_path / "bpf" / "lib" / "a.h"
    a.parent.mkdir(parents=True)
    a.write_text("int x;\nstatic int first_distinctive_line(void);\n}\nreturn lookup_of_the_table(k);\n}\n")
    origins = [None] + [(a, n) for n in range(1, 6)]         # a define, then a.h's five lines
    # bcc's copy: the define, then 3 lines it added, then a.h (text lines 2.. of the copy shifted by 3)
    raw = [(0x10, "/virtual/main.c", 2 + 1 + 3, "static int first_distinctive_line(void);"),
           (0x20, "/virtual/main.c", 4 + 1 + 3, "return bpf_map_lookup_elem(...);"),   # rewritten text
           (0x30, "/virtual/main.c", 0, ""),
           (0x40, "/usr/include/bcc/helpers.h", 1077, "return __builtin_bswap32(val);")]
    place = profile._placer(raw, origins)
    assert place(*raw[0][1:]) == "lib/a.h:2  static int first_distinctive_line(void);"
    assert place(*raw[1][1:]) == "lib/a.h:4  return lookup_of_the_table(k);"
    assert place(*raw[2][1:]).startswith("(no source line")
    assert place(*raw[3][1:]) == "helpers.h:1077  return __builtin_bswap32(val);"


def test_every_kernel_path_but_the_floor_can_be_profiled():
    from dataplane.run.bench.kernel import PATHS
    assert profile.PROFILED == tuple(p for p in PATHS if p != "floor")
