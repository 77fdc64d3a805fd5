"""The judge of a background load (spec/load.py): the summaries its clients' generators gave
(dataplane.lab.workload.load, or the emulator's, the same format) -> a CheckResult that counts
the failed requests and lists them."""
from __future__ import annotations

from collections import Counter

from ..spec.load import EndLoad
from .checks import CheckResult

LISTED = 10               # failures named in the detail (the JSON report lists them all)
KEPT_PACE = 0.8           # a client must have sent this share of the requests its rate asked for


def evaluate_load(end: EndLoad, summaries: dict, updates=()) -> CheckResult:
    """`summaries`: client -> its generator's summary, or why it gave none (a string). `updates`:
    (began, synced, name) of every update so far, in seconds on the summaries' clock ("t0"), to
    place each failure against them."""
    load = end.load
    outcomes, answered, failures, problems = Counter(), Counter(), [], []
    requests = 0
    for client in load.clients:
        s = summaries.get(client)
        if not isinstance(s, dict):
            problems.append(f"{client}: {s or 'the load generator gave no summary'}")
            continue
        requests += s["requests"]
        outcomes.update(s["outcomes"])
        answered.update(s["answered"])
        failures.extend({"client": client, **f, "when": _when(s["t0"] + f["at"], updates)} for f in s["failures"])
        if s["requests"] < KEPT_PACE * s["due"]:
            problems.append(f"{client} sent {s['requests']} of the {s['due']} requests its rate asked for "
                            f"in {s['seconds']:g} s (the generator fell behind; the load is not what it says)")
    failed = requests - outcomes.get("reachable", 0)
    failures.sort(key=lambda f: (f["at"], f["client"]))
    if failed > end.max_failed:
        listed = "; ".join(f"{f['client']} at {f['at']:.2f} s ({f['when']}): {f['outcome']} ({f['error']})"
                           for f in failures[:LISTED])
        more = f"; and {failed - LISTED} more" if failed > LISTED else ""
        problems.insert(0, f"{failed} of {requests} requests failed (at most {end.max_failed}): {listed}{more}")
    rate = f"{load.rate:g}/s from {len(load.clients)} client{'s' if len(load.clients) > 1 else ''}"
    slowest = max((s["ms"]["p99"] for s in summaries.values()
                  if isinstance(s, dict) and s["ms"]["p99"] is not None), default=None)
    if problems:
        detail = "; ".join(problems)
    else:
        detail = (f"{requests} requests ({rate}, {load.protocol} to {load.target}:{load.port}), {failed} failed"
                  + (f" (at most {end.max_failed})" if end.max_failed else ""))
        if answered:
            detail += ", answered by " + ", ".join(f"{b} x{n}" for b, n in sorted(answered.items()))
        if slowest is not None:
            detail += f", p99 {slowest:g} ms"
    return CheckResult(end.check, not problems, detail, dict(outcomes), dict(answered), failures=failures,
                       requests=requests)


def _when(t: float, updates) -> str:
    """Where a failure at `t` stands against the updates: during one, or how long after one."""
    last = None
    for began, synced, name in updates:
        if began <= t:
            last = (began, synced, name)
    if last is None:
        return "before any update"
    began, synced, name = last
    if t <= synced:
        return f"during update {name!r}"
    return f"{t - synced:.2f} s after update {name!r}"
