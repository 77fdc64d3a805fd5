"""The judge of a background load (spec/load.py): the summaries its clients' generators gave
(dataplane.lab.workload.load, or the emulator's, the same format) -> a CheckResult that counts
the failed requests and lists them, placed against the updates."""
from __future__ import annotations

from collections import Counter

from ..spec.load import EndLoad
from .checks import CheckResult

LISTED = 10               # failures named in the detail (the JSON report lists them)
KEPT_PACE = 0.8           # a client must have sent this share of the requests due (the rest skipped)


def evaluate_load(end: EndLoad, summaries: dict, updates=()) -> CheckResult:
    """`summaries`: client -> its generator's summary, or why it gave none (a string). `updates`:
    (began, synced, name) of every update so far, in seconds on the summaries' clock ("t0"), to
    place each failure against them. Failure times are printed from the first client's start."""
    load = end.load
    outcomes, answered, failures, problems = Counter(), Counter(), [], []
    requests = skipped = 0
    origin = min((s["t0"] for s in summaries.values() if isinstance(s, dict)), default=0.0)
    for client in load.clients:
        s = summaries.get(client)
        if not isinstance(s, dict):
            problems.append(f"{client}: {s or 'the load generator gave no summary'}")
            continue
        requests += s["requests"]
        skipped += s["skipped"]
        outcomes.update(s["outcomes"])
        answered.update(s["answered"])
        for f in s["failures"]:
            began = s["t0"] + f["at"] + f.get("late", 0) / 1000
            failures.append({"client": client, **f, "at": round(s["t0"] + f["at"] - origin, 3),
                             "when": _when(began, began + f["ms"] / 1000, updates)})
        if s["requests"] < KEPT_PACE * s["due"]:
            problems.append(f"{client} sent {s['requests']} of the {s['due']} requests due in {s['seconds']:g} s "
                            f"(the rest skipped: the generator could not keep its rate, so the load is not "
                            f"what it says)")
    failed = requests - outcomes.get("reachable", 0)
    failures.sort(key=lambda f: (f["at"], f["client"]))
    rate = f"{load.rate:g}/s from {len(load.clients)} client{'s' if len(load.clients) > 1 else ''}"
    counts = (f"{requests} requests ({rate}, {load.protocol} to {load.target}:{load.port}), {failed} failed"
              + (f" (at most {end.max_failed})" if end.max_failed else "")
              + (f", {skipped} skipped by a late generator" if skipped else ""))
    if failed > end.max_failed:
        listed = "; ".join(f"{f['client']} at {f['at']:.2f} s ({f['when']}): {f['outcome']} ({f['error']})"
                           for f in failures[:LISTED])
        more = f"; and {failed - LISTED} more" if failed > LISTED else ""
        problems.insert(0, f"{failed} of {requests} requests failed (at most {end.max_failed}): {listed}{more}")
    slowest = max((s["ms"]["p99"] for s in summaries.values()
                   if isinstance(s, dict) and s["ms"]["p99"] is not None), default=None)
    if problems:
        detail = "; ".join(problems) + ("" if failed > end.max_failed else f"; {counts}")
    else:
        detail = counts
        if answered:
            detail += ", answered by " + ", ".join(f"{b} x{n}" for b, n in sorted(answered.items()))
        if slowest is not None:
            detail += f", p99 {slowest:g} ms"
    return CheckResult(end.check, not problems, detail, dict(outcomes), dict(answered), failures=failures,
                       requests=requests)


def _when(start: float, finish: float, updates) -> str:
    """Where a failed request [start, finish] stands against the updates: overlapping one, or how
    long after the last one before it."""
    last = None
    for began, synced, name in updates:
        if began <= finish and start <= synced:
            return f"during update {name!r}"
        if synced < start:
            last = (synced, name)
    if last is None:
        return "before any update"
    return f"{start - last[0]:.2f} s after update {last[1]!r}"
