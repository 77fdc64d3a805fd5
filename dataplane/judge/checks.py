"""The one judge of checks: a check's per-request results (from a live lab's client or the
emulator, the same format) -> passed or not, with a detail that says why."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from ..spec.checks import CheckSpec
from ..spec.topology import TopologySpec


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    outcomes: dict = field(default_factory=dict)    # outcome -> count
    answered: dict = field(default_factory=dict)    # backend name -> count
    sources: dict = field(default_factory=dict)     # source seen (ip) -> count
    # the key of the documented difference (docs/differences.md) that gave this backend its
    # expected outcome, where it differs from the scenario's
    difference: str | None = None
    # a background load's (judge/load.py): every request's failure, and how many were sent
    failures: list | None = None
    requests: int | None = None
    # `run --explain`: the path of one new connection of this check, on this backend (lines)
    explanation: list | None = None

    def to_json(self) -> dict:
        out = {"name": self.name, "passed": self.passed, "detail": self.detail,
               "outcomes": self.outcomes, "backends": self.answered, "sources": self.sources,
               "difference": self.difference}
        if self.explanation is not None:
            out["explanation"] = self.explanation
        if self.failures is not None:
            out.update(requests=self.requests, failed=self.requests - self.outcomes.get("reachable", 0),
                       failures=self.failures)
        return out


def evaluate(spec: CheckSpec, results: list[dict], held: dict | None = None) -> CheckResult:
    """Judge a check from the client's per-request results (see dataplane.lab.workload.client) and, with
    holdConnection, the result of the held connection's request after them."""
    outcomes = Counter(r["outcome"] for r in results)
    answered = Counter(r["hostname"] for r in results if r["outcome"] == "reachable" and r.get("hostname"))
    sources = Counter(r["clientip"].rsplit(":", 1)[0] for r in results
                      if r["outcome"] == "reachable" and r.get("clientip"))
    problems = []
    if len(results) != spec.requests:
        problems.append(f"{len(results)} results for {spec.requests} requests")
    wrong = {k: v for k, v in outcomes.items() if k != spec.expect}
    if wrong:
        errors = Counter(r["error"] for r in results if r["outcome"] != spec.expect and r.get("error"))
        problems.append(f"expected {spec.expect}, got " + ", ".join(f"{k} x{v}" for k, v in sorted(wrong.items()))
                        + (f" ({', '.join(f'{e} x{n}' for e, n in errors.items())})" if errors else ""))
    if spec.backends is not None:
        stray = {b: n for b, n in answered.items() if b not in spec.backends}
        if stray:
            problems.append(f"answered by {', '.join(sorted(stray))}, allowed: {', '.join(spec.backends)}")
    if spec.http_get is not None:
        answers = [r for r in results if r["outcome"] == "reachable"]
        if spec.status is not None:
            bad = Counter(r.get("status") for r in answers if r.get("status") != spec.status)
            if bad:
                problems.append(f"expected HTTP {spec.status}, got " + ", ".join(f"{s} x{n}" for s, n in bad.items()))
        if spec.body_contains is not None:
            missing = [r.get("body", "") for r in answers if spec.body_contains not in (r.get("body") or "")]
            if missing:
                problems.append(f"body without {spec.body_contains!r}: {missing[0][:120]}")
    if spec.same_backend and len(answered) > 1:
        problems.append(f"expected one backend for every request, got {_counts(answered)}")
    if spec.every_backend:
        silent = [b for b in spec.backends if b not in answered]
        if silent:
            problems.append(f"never answered: {', '.join(silent)}")
    if spec.min_backends is not None and len(answered) < spec.min_backends:
        problems.append(f"expected at least {spec.min_backends} backends, got {_counts(answered) or 'none'}")
    if spec.max_share is not None and results:
        top = max(answered.values(), default=0) / len(results)
        if top > spec.max_share:
            problems.append(f"one backend took {top:.0%} of requests (at most {spec.max_share:.0%}): "
                            f"{_counts(answered)}")
    if spec.source is not None:
        bad = {s: n for s, n in sources.items() if s != str(spec.source)}
        if bad:
            problems.append(f"server saw source {', '.join(sorted(bad))}, expected {spec.source} "
                            f"({spec.source_label})")
    if spec.hold is not None:
        h = spec.hold
        what = f"held connection {h.client} -> {h.target}:{h.port}"
        if held is None or held.get("outcome") != "reachable":
            error = (held or {}).get("error") or "no result"
            problems.append(f"{what} broke: {(held or {}).get('outcome', 'lost')} ({error})")
        elif h.server is not None and held.get("hostname") != h.server:
            problems.append(f"{what} answered by {held.get('hostname')}, not {h.server}")
    if problems:
        detail = "; ".join(problems)
    else:
        detail = f"{spec.expect} x{spec.requests}"
        errors = Counter(r["error"] for r in results if r.get("error"))
        if errors:
            detail += " (" + ", ".join(f"{e} x{n}" if n > 1 else e for e, n in sorted(errors.items())) + ")"
        if spec.http_get is not None:
            statuses = Counter(r.get("status") for r in results if r["outcome"] == "reachable")
            detail += ", HTTP " + ", ".join(f"{s} x{n}" if spec.requests > 1 else str(s) for s, n in statuses.items())
        if answered:
            detail += ", answered by " + ", ".join(f"{b} x{n}" if spec.requests > 1 else b
                                                   for b, n in sorted(answered.items()))
        if sources:
            detail += ", source seen " + ", ".join(sorted(sources))
        if spec.hold is not None:
            detail += f"; held connection from {spec.hold.client} still answered"
    return CheckResult(spec.name, not problems, detail, dict(outcomes), dict(answered), dict(sources))


def capture_targets(spec: CheckSpec, topology: TopologySpec) -> dict:
    """The objects a capture watches besides the client: name -> address of each possible server."""
    if spec.backends:
        names = spec.backends
    elif topology.find(spec.target.split("/", 1)[-1]) is not None and "/" in spec.target \
            and not spec.target.startswith("service/"):
        names = (spec.target.split("/", 1)[1],)
    else:
        names = tuple(p.name for p in topology.pods)
    return {n: topology.find(n).ip for n in names if n != spec.client}


def with_capture(result: CheckResult, spec: CheckSpec, topology: TopologySpec, frames: dict) -> CheckResult:
    """Add what the capture shows to a judged check."""
    from .capture import judge
    problems, summary = judge(spec, topology.find(spec.client).ip, capture_targets(spec, topology), frames)
    if problems:
        detail = "; ".join(problems) if result.passed else result.detail + "; " + "; ".join(problems)
        return replace(result, passed=False, detail=detail)
    return replace(result, detail=f"{result.detail}; {summary}")


def _counts(answered: Counter | dict) -> str:
    return ", ".join(f"{b} x{n}" for b, n in sorted(answered.items()))
