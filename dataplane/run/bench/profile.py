"""Where one BPF path spends its time: `dataplane bench profile`.

Method. A path's frames (kernel.py's, at one map fill) run in a loop, one BPF_PROG_TEST_RUN call
each, from this process pinned to one CPU, while `perf record -e cpu-clock -g -C CPU` samples that
CPU. A timer, because this VM has no hardware counters (`perf stat -e cycles`: not supported) and
the kernel no fentry, which `bpftool prog profile` needs. The JIT'd program has a kernel symbol
(net.core.bpf_jit_kallsyms) and frame pointers, so every sample taken in it, or in a kernel
function it called, has it in its call chain. Each such sample goes to a site:

  program     the program's own instructions (samples land mostly just after a call returns:
              the return's cost, raised by the machine's return-thunk mitigation, lands there)
  a function  the kernel function the program called (a helper, a map's lookup the verifier
              turned into a direct call, a return thunk), with everything it called in turn

and to the place in the source of the program's instruction (for a call, the call's): its line
info, as bcc emits it into BTF, for a build without #line markers (source.assemble's origins) so
that bcc's line numbers are those of the text it compiled, placed back in bpf/ by _placer. Only
this thread's samples count, and only those with the path's program in their call chain (an
identical program of a lab, run in softirq on that CPU while the loop is interrupted, shares its
symbol: run profiles on a machine without labs). A sample taken in a return thunk after the
program's frame is gone counts outside it.
New-flow paths start each pass over their frames from an empty conntrack table, so that they stay
new. Shares are of the samples in the program; ns = share x (the median kernel duration per call
in the same loop - the floor's, a trivial program's run the same way just before): the program's
own time, without the test-run timer every `bench kernel` figure includes. Sampling at 10 kHz
slows the loop a little, and a Python loop between calls leaves colder caches than `bench
kernel`'s: read the ns as a split of the program's time, and `bench kernel` for the time itself.
"""
from __future__ import annotations

import ctypes as ct
import ctypes.util
import os
import random
import shutil
import statistics
import struct
import subprocess
import tempfile
import threading
import time
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field

from ...errors import DataplaneError

PROFILED = ("not-service", "new-flow", "established", "reply", "nodeport-new", "masquerade-new", "masquerade-est")
NEW_PATHS = ("new-flow", "nodeport-new", "masquerade-new")
SAMPLE_HZ = 10000
ENTRY = "(the program's entry, before its first line)"


class _ProgInfo(ct.Structure):
    """struct bpf_prog_info (uapi/linux/bpf.h), as far as the fields read here and before them."""
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
                ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
                ("jited_prog_insns", ct.c_uint64), ("xlated_prog_insns", ct.c_uint64),
                ("load_time", ct.c_uint64), ("created_by_uid", ct.c_uint32), ("nr_map_ids", ct.c_uint32),
                ("map_ids", ct.c_uint64), ("name", ct.c_char * 16), ("ifindex", ct.c_uint32),
                ("gpl_compatible", ct.c_uint32), ("netns_dev", ct.c_uint64), ("netns_ino", ct.c_uint64),
                ("nr_jited_ksyms", ct.c_uint32), ("nr_jited_func_lens", ct.c_uint32),
                ("jited_ksyms", ct.c_uint64), ("jited_func_lens", ct.c_uint64),
                ("btf_id", ct.c_uint32), ("func_info_rec_size", ct.c_uint32), ("func_info", ct.c_uint64),
                ("nr_func_info", ct.c_uint32), ("nr_line_info", ct.c_uint32), ("line_info", ct.c_uint64),
                ("jited_line_info", ct.c_uint64), ("nr_jited_line_info", ct.c_uint32),
                ("line_info_rec_size", ct.c_uint32), ("jited_line_info_rec_size", ct.c_uint32)]


class _BtfInfo(ct.Structure):
    """struct bpf_btf_info."""
    _fields_ = [("btf", ct.c_uint64), ("btf_size", ct.c_uint32), ("id", ct.c_uint32),
                ("name", ct.c_uint64), ("name_len", ct.c_uint32), ("kernel_btf", ct.c_uint32)]


_lib = None


def _libbpf():
    global _lib
    if _lib is None:
        _lib = ct.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    return _lib


def _info(fd: int, obj) -> None:
    size = ct.c_uint32(ct.sizeof(obj))
    if _libbpf().bpf_obj_get_info_by_fd(fd, ct.byref(obj), ct.byref(size)) != 0:
        err = ct.get_errno()
        raise OSError(err, f"BPF_OBJ_GET_INFO_BY_FD: {os.strerror(err)}")


@dataclass
class JitMap:
    """A loaded program's kernel symbol and its JIT offsets -> source places."""
    symbol: str
    offsets: list          # sorted JIT offsets where a line starts
    places: list           # "lib/parse.h:135  text of the line", one per offset

    def place(self, offset: int) -> str:
        i = bisect_right(self.offsets, offset) - 1
        # before the first line: the program's entry (a sample in the call into it, e.g. the
        # indirect-call thunk, has the program's first address as its caller)
        return self.places[i] if i >= 0 else ENTRY


def jit_map(fd: int, origins: list | None = None) -> JitMap:
    """The program's symbol (bpf_prog_<tag>_<name>) and line info, from the kernel (its BTF's
    strings give file names and line texts). `origins`: source.assemble's, for a program built
    without #line markers: its main-file lines are then placed in the project's files."""
    first = _ProgInfo()
    _info(fd, first)
    tag = bytes(first.tag).hex()
    symbol = f"bpf_prog_{tag}_{first.name.decode()}"
    n, rec = first.nr_line_info, first.line_info_rec_size
    if not n or not first.nr_jited_line_info or not first.btf_id:
        return JitMap(symbol, [], [])
    lines = (ct.c_uint8 * (n * rec))()
    jited = (ct.c_uint64 * first.nr_jited_line_info)()
    ksyms = (ct.c_uint64 * max(1, first.nr_jited_ksyms))()
    info = _ProgInfo(nr_line_info=n, line_info_rec_size=rec, line_info=ct.addressof(lines),
                     nr_jited_line_info=first.nr_jited_line_info, jited_line_info_rec_size=8,
                     jited_line_info=ct.addressof(jited), nr_jited_ksyms=len(ksyms), jited_ksyms=ct.addressof(ksyms))
    _info(fd, info)
    strings = _btf_strings(first.btf_id)
    base = ksyms[0]
    raw = []
    for i in range(min(n, first.nr_jited_line_info)):
        _insn, file_off, line_off, line_col = struct.unpack_from("<IIII", bytes(lines), i * rec)
        raw.append((jited[i] - base, _string(strings, file_off), line_col >> 10, _string(strings, line_off).strip()))
    place = _placer(raw, origins)
    entries = sorted((off, place(path, line, text)) for off, path, line, text in raw)
    return JitMap(symbol, [o for o, _ in entries], [p for _, p in entries])


def _norm(text: str) -> str:
    return " ".join(text.split())


def _placer(raw: list, origins: list | None):
    """(file, line, text) of a line-info record -> "file:line  text". bcc compiles a rewritten copy
    of the main file (map calls rewritten, lines added), so a main-file line number is that copy's:
    records whose text is distinctive and found once near it give the offset there, and each
    record takes the offset of the nearest such record at or above it (bcc only adds lines)."""
    if not origins:
        return lambda path, line, text: f"{_short(path)}:{line}  {text}"
    files: dict = {}
    texts = []
    for o in origins:
        if o is not None and o[0] not in files:
            files[o[0]] = open(o[0]).read().splitlines()
        texts.append(_norm(files[o[0]][o[1] - 1]) if o is not None else "")
    where: dict = {}
    for i, t in enumerate(texts, 1):
        where.setdefault(t, []).append(i)
    anchors = []                  # (line in bcc's copy, lines bcc added above it)
    for path, line, text in sorted({(p, ln, t) for _, p, ln, t in raw}, key=lambda r: r[1]):
        t = _norm(text)
        if path.endswith("main.c") and len(t) >= 16 and len(where.get(t, ())) == 1 and where[t][0] <= line:
            anchors.append((line, line - where[t][0]))
    anchors.sort()
    keys = [a for a, _ in anchors]

    def place(path: str, line: int, text: str) -> str:
        if line == 0:
            return "(no source line: code the compiler added)"
        if not path.endswith("main.c"):
            return f"{_short(path)}:{line}  {text}"
        i = bisect_right(keys, line) - 1
        at = line - (anchors[i][1] if i >= 0 else 0)
        if not 1 <= at <= len(origins) or origins[at - 1] is None:
            return f"main.c:{line}  {text}"
        p, n = origins[at - 1]
        return f"{_short(str(p))}:{n}  {texts[at - 1]}"
    return place


def _short(path: str) -> str:
    return path.split("/bpf/", 1)[-1] if "/bpf/" in path else os.path.basename(path)


def _btf_strings(btf_id: int) -> bytes:
    lib = _libbpf()
    fd = lib.bpf_btf_get_fd_by_id(btf_id)
    if fd < 0:
        err = ct.get_errno()
        raise OSError(err, f"BPF_BTF_GET_FD_BY_ID: {os.strerror(err)}")
    try:
        head = _BtfInfo()
        _info(fd, head)
        raw = (ct.c_uint8 * head.btf_size)()
        _info(fd, _BtfInfo(btf=ct.addressof(raw), btf_size=head.btf_size))
    finally:
        os.close(fd)
    data = bytes(raw)
    # struct btf_header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
    _magic, _v, _f, hdr_len, _to, _tl, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
    return data[hdr_len + str_off:hdr_len + str_off + str_len]


def _string(strings: bytes, off: int) -> str:
    end = strings.find(b"\0", off)
    return strings[off:end if end >= 0 else len(strings)].decode(errors="replace")


@dataclass
class Site:
    function: str          # "program" or the kernel function the program called
    place: str             # where in the source
    samples: int
    share: float           # of the samples in the program
    ns: float              # share x (p50 - floor)


@dataclass
class Profile:
    path: str
    services: int
    entry: str
    calls: int             # BPF_PROG_TEST_RUN calls made while sampling
    p50_ns: float          # their median kernel duration
    floor_ns: float        # the trivial program's, run the same way just before
    samples: int           # samples in the program (its call chain)
    other_samples: int     # samples on the CPU outside it (the syscall, the test-run harness, Python)
    sites: list = field(default_factory=list)
    leaves: dict = field(default_factory=dict)   # function called -> {function sampled in: share of the path}


@dataclass
class Attributed:
    sites: Counter         # (function, place) -> samples
    leaves: Counter        # (function, the kernel function the sample was taken in) -> samples
    inside: int            # samples in the program (its call chain)
    outside: int           # the others


def attribute(script: str, jm: JitMap, tid: int | None = None) -> Attributed:
    """`perf script -F tid,ip,sym,symoff` output (with call chains) -> the samples by site and,
    within each function the program called, by the function they were taken in (a lock, a
    copy, an LRU refill below a map update). With `tid`, the samples of other threads (a lab's
    programs running in softirq on that CPU, say) are outside too."""
    sites, leaves, inside, outside = Counter(), Counter(), 0, 0
    for block in script.split("\n\n"):
        frames, thread = [], None
        for line in block.strip().splitlines():
            parts = line.split()
            if len(parts) >= 2:
                frames.append(parts[1])
            elif len(parts) == 1 and parts[0].isdigit():
                thread = int(parts[0])
        if not frames:
            continue
        if tid is not None and thread != tid:
            outside += 1
            continue
        at = next((i for i, f in enumerate(frames) if f.split("+", 1)[0] == jm.symbol), None)
        if at is None:
            outside += 1
            continue
        inside += 1
        sym_off = frames[at].split("+", 1)
        off = int(sym_off[1], 16) if len(sym_off) > 1 else 0
        if at == 0:
            sites[("program", jm.place(off))] += 1
        else:
            # the function the program called; the call is the instruction before the return address
            called = frames[at - 1].split("+", 1)[0]
            sites[(called, jm.place(off - 1))] += 1
            leaves[(called, frames[0].split("+", 1)[0])] += 1
    return Attributed(sites, leaves, inside, outside)


def profile_paths(paths, services: int, seconds: float, calls: int = 20000, seed: int = 1,
                  progress=lambda m: None) -> list[Profile]:
    from .kernel import Bench
    if not shutil.which("perf"):
        raise DataplaneError("`bench profile` samples with perf, which is not installed (Debian: linux-perf)")
    try:
        with open("/proc/sys/net/core/bpf_jit_kallsyms") as f:
            kallsyms = f.read().strip()
    except OSError:
        kallsyms = None
    if kallsyms != "1":
        raise DataplaneError("JIT'd BPF programs have no kernel symbol here (net.core.bpf_jit_kallsyms is "
                             f"{kallsyms or 'absent: is the JIT on?'}), so perf cannot tell their samples apart: "
                             "sysctl -w net.core.bpf_jit_enable=1 net.core.bpf_jit_kallsyms=1")
    origins: list = []
    bench = Bench(progress, origins)
    cpus = os.sched_getaffinity(0)
    try:
        bench.fill(services)
        rng = random.Random(seed)
        out = []
        for path in paths:
            progress(f"profile: {path} at {services:,} services, {seconds:g} s of samples")
            out.append(_profile_one(bench, path, services, seconds, calls, rng, origins, cpus))
        return out
    finally:
        os.sched_setaffinity(0, cpus)
        bench.close()


def _profile_one(bench, path: str, services: int, seconds: float, calls: int, rng, origins,
                 allowed: set) -> Profile:
    """One path sampled: this thread pinned to the last CPU of `allowed` (the process's own set,
    given back by the caller), perf on the others."""
    from ...backends.ebpf.testrun import run
    from ...lab import netns
    entry, frames = bench.path_frames(path, services, calls, rng)
    fd = bench.prog.fns[entry].fd
    jm = jit_map(fd, origins)
    if not jm.offsets:
        raise DataplaneError(f"the kernel gave no JIT addresses for {entry} (kernel.kptr_restrict hides them, or "
                             f"the program has no BTF line info): its samples cannot be placed")
    cpu = max(allowed)
    conntrack = bench.prog.table("conntrack")
    with netns.inside(bench.ns):
        floor = statistics.median(run(bench.floor_fd, frames[0]).duration_ns for _ in range(calls))
    durations = []
    with tempfile.TemporaryDirectory(prefix="dp-profile-") as tmp:
        data = os.path.join(tmp, "perf.data")
        # the loop alone on its CPU, perf on the others
        others = allowed - {cpu} or allowed
        rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(SAMPLE_HZ), "-g",
                                "-C", str(cpu), "-o", data, "--", "sleep", str(seconds)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=lambda: os.sched_setaffinity(0, others))
        try:
            os.sched_setaffinity(0, {cpu})
            time.sleep(0.3)        # perf is sampling before the first call
            with netns.inside(bench.ns):
                while rec.poll() is None:
                    for frame in frames:
                        durations.append(run(fd, frame).duration_ns)
                        if len(durations) % 256 == 0 and rec.poll() is not None:
                            break
                    if path in NEW_PATHS:
                        conntrack.clear()        # the next pass's flows are new again
        finally:
            if rec.poll() is None:
                rec.kill()
            err = rec.communicate()[1].decode(errors="replace")
        if rec.returncode != 0:
            raise DataplaneError(f"perf record failed ({rec.returncode}): {err.strip()[-500:]}")
        script = subprocess.run(["perf", "script", "-i", data, "-F", "tid,ip,sym,symoff"], capture_output=True,
                                text=True, timeout=300)
        if script.returncode != 0:
            raise DataplaneError(f"perf script failed: {script.stderr.strip()[-500:]}")
    got = attribute(script.stdout, jm, threading.get_native_id())
    sites, inside, outside = got.sites, got.inside, got.outside
    if not inside:
        raise DataplaneError(f"no sample of {path} fell in {jm.symbol}: is perf sampling kernel code "
                             f"(kernel.perf_event_paranoid <= 1 for a CPU-wide record as root)?")
    p50 = statistics.median(durations) if durations else 0.0
    own = max(0.0, p50 - floor)
    prof = Profile(path, services, entry, len(durations), p50, floor, inside, outside)
    for (function, place), n in sites.most_common():
        share = n / inside
        prof.sites.append(Site(function, place, n, round(share, 4), round(share * own, 1)))
    for (function, leaf), n in got.leaves.most_common():
        prof.leaves.setdefault(function, {})[leaf] = round(n / inside, 4)
    return prof


def text(profiles: list[Profile], top: int = 15) -> str:
    out = []
    for p in profiles:
        out.append(f"{p.path} at {p.services:,} services ({p.entry}): {p.calls:,} calls, p50 {p.p50_ns:,.0f} ns "
                   f"per call, floor {p.floor_ns:,.0f} ns: {p.p50_ns - p.floor_ns:,.0f} ns the program's own; "
                   f"{p.samples:,} samples in the program, {p.other_samples:,} outside it")
        out.append(f"  {'share':>6} {'ns':>7}  {'function':<28} where (line info)")
        shown = p.sites[:top]
        for s in shown:
            out.append(f"  {100 * s.share:5.1f}% {s.ns:7.1f}  {s.function:<28} {s.place[:90]}")
        rest = p.sites[top:]
        if rest:
            share = sum(s.share for s in rest)
            out.append(f"  {100 * share:5.1f}% {share * max(0.0, p.p50_ns - p.floor_ns):7.1f}  "
                       f"({len(rest)} more sites)")
        by_fn = Counter()
        for s in p.sites:
            by_fn[s.function] += s.share
        out.append("  by function: " + ", ".join(f"{fn} {100 * v:.0f}%" for fn, v in by_fn.most_common(8)))
        for fn, v in by_fn.most_common(3):
            inner = p.leaves.get(fn, {})
            if len(inner) > 1 or (inner and next(iter(inner)) != fn):
                out.append(f"    in {fn} ({100 * v:.0f}%): " +
                           ", ".join(f"{leaf} {100 * sh:.0f}%" for leaf, sh in list(inner.items())[:6]))
        out.append("")
    return "\n".join(out)
