"""`dataplane bench kernel`, bounded: every path it times is the path it names (a frame that is
dropped, or takes another branch, would time something else), and it leaves nothing behind."""
from __future__ import annotations

import os

from dataplane.lab import netns
from dataplane.run.bench.kernel import PATHS, TRACED, run_kernel


# the counter each call of a path must move (the programs count every decision)
EXPECTED = {"not-service": "M_PASS", "new-flow": "M_DNAT_NEW", "established": "M_DNAT", "reply": "M_REVNAT",
            "nodeport-new": "M_DNAT_NEW", "masquerade-new": "M_SNAT_NEW", "masquerade-est": "M_SNAT"}


def test_every_path_is_the_one_it_names():
    results = run_kernel(fills=(1, 200), calls=300, seed=3)
    names = [*PATHS, *(f"{p}{kind}" for p in TRACED for kind in ("-detached", "+trace", "-notrace"))]
    assert [(r.path, r.services) for r in results] == [(p, n) for n in (1, 200) for p in names]
    for r in results:
        assert r.calls == 300 and 0 < r.p50 <= r.p90 <= r.p99, r
        assert "drop" not in r.verdict, f"{r.path} at {r.services} services ends in {r.verdict}: {r.counters}"
        path = r.path.removesuffix("+trace").removesuffix("-detached").removesuffix("-notrace")
        traced = r.path.endswith("+trace")
        if r.path == "floor":
            assert r.counters == {}, r            # not our program
        else:
            assert r.counters.get(EXPECTED[path]) == 300, f"{r.path}: {r.counters}"
        if traced:
            # every decision traced; a packet left alone (not service traffic) makes no event
            assert r.counters["trace events"] == (0 if path == "not-service" else 300), r.counters
        else:
            assert "trace events" not in r.counters
    assert not netns.exists(f"dp-bench{os.getpid()}.node1")


def test_a_profile_places_the_paths_samples_in_its_program_and_what_it_calls():
    """`dataplane bench profile`, bounded (perf samples for one second per path): the samples are
    the program's, shares add up, each site names a line of bpf/ (or code the compiler added, or
    bcc's helpers), and the established path, which rewrites the packet, is seen calling the
    kernel's checksum helper from lib/nat.h; the not-service path calls no helper at all."""
    import shutil
    from dataplane.run.bench.profile import profile_paths
    assert shutil.which("perf"), "perf is installed by make setup (linux-perf)"
    before = os.sched_getaffinity(0)
    profiles = profile_paths(("not-service", "established"), services=1, seconds=1, calls=2000)
    assert os.sched_getaffinity(0) == before
    assert [p.path for p in profiles] == ["not-service", "established"]
    for p in profiles:
        assert p.samples > 0 and p.calls > 0 and p.p50_ns > 0
        assert abs(sum(s.share for s in p.sites) - 1) < 0.01
        for s in p.sites:
            assert s.place.startswith(("lib/", "pod.c", "node.c", "sock.c", "include/", "helpers.h", "(no source",
                                       "(the program's entry")), s
    fast, established = profiles
    assert {s.function for s in fast.sites} <= {"program", "__x86_return_thunk", "srso_alias_return_thunk",
                                                 "__x86_indirect_thunk_rax"}, fast.sites
    assert any(s.function == "bpf_l4_csum_replace" and s.place.startswith("lib/nat.h") for s in established.sites)
    assert not netns.exists(f"dp-bench{os.getpid()}.node1")
