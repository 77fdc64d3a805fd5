"""Print a run's report: a table for people, a JSON document for programs."""
from __future__ import annotations

import json
import shutil

import click

from .run.runner import Report


def table(report: Report) -> str:
    width = shutil.get_terminal_size((120, 20)).columns
    rows = [("", "check", "detail")] + [("PASS" if r.passed else "FAIL", r.name, _detail(r))
                                         for r in report.results]
    w1 = max(len(r[1]) for r in rows)
    lines = [f"scenario {report.scenario} on backend {report.backend}"
             + (f" (seed {report.seed})" if report.seed is not None else "")]
    for i, (status, name, detail) in enumerate(rows):
        line = f"  {status:4}  {name:<{w1}}  {detail}"
        if len(line) > width and i:
            line = line[: width - 1] + "…"
        if status == "PASS":
            line = click.style(line[:6], fg="green") + line[6:]
        elif status == "FAIL":
            line = click.style(line[:6], fg="red") + line[6:]
        lines.append(line)
        result = report.results[i - 1] if i else None
        if result is not None and result.explanation:
            lines += [f"          {x}" for x in result.explanation]
    passed = sum(r.passed for r in report.results)
    lines.append(f"{passed} of {len(report.results)} checks passed")
    for node, counters in sorted(report.counters.items()):
        if counters:
            lines.append(f"counters {node}: " + ", ".join(f"{k} {v}" for k, v in counters.items()))
    for event in report.events:
        lines.append(f"update: {event}")
    for note in report.ignored:
        lines.append(f"ignored: {note}")
    return "\n".join(lines)


def as_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2)


def _detail(result) -> str:
    return result.detail + (f" [documented difference {result.difference}]" if result.difference else "")


def matrix(reports: list[Report]) -> str:
    """One row per check, one column per backend: PASS, FAIL, and * where the backend's expected
    outcome comes from docs/differences.md; a load's cell adds its failed and sent requests."""
    backends = [r.backend for r in reports]
    names = [r.name for r in reports[0].results]
    w = max([len("check")] + [len(n) for n in names])
    loads = [max((len(f" {x.requests}/{x.requests}") for x in r.results if x.requests is not None), default=0)
             for r in reports]
    cols = [max(len(b), 6 + extra) for b, extra in zip(backends, loads)]
    lines = [f"scenario {reports[0].scenario}: {len(names)} checks on {len(backends)} backends",
             f"  {'check':<{w}}  " + "  ".join(f"{b:<{c}}" for b, c in zip(backends, cols))]
    notes = {}
    for i, name in enumerate(names):
        cells = []
        for rep, c in zip(reports, cols):
            r = rep.results[i] if i < len(rep.results) else None
            cell = "-" if r is None else ("PASS" if r.passed else "FAIL")
            if r is not None and r.requests is not None:     # a load: its failed requests of all sent
                cell += f" {r.requests - r.outcomes.get('reachable', 0)}/{r.requests}"
            key = r and r.difference
            if key:
                cell += "*"
                notes.setdefault(key, set()).add(f"{rep.backend}: {'/'.join(r.outcomes) or '-'}")
            styled = click.style(f"{cell:<{c}}", fg="green" if cell.startswith("PASS") else "red")
            cells.append(styled)
        lines.append(f"  {name:<{w}}  " + "  ".join(cells))
    for key, where in sorted(notes.items()):
        lines.append(f"* documented difference {key} (docs/differences.md): {', '.join(sorted(where))}")
    for rep in reports:
        for r in rep.results:
            if not r.passed:
                lines.append(f"FAIL on {rep.backend}: {r.name}: {_detail(r)}")
    total = sum(len(r.results) for r in reports)
    passed = sum(x.passed for r in reports for x in r.results)
    lines.append(f"{passed} of {total} checks passed")
    return "\n".join(lines)


def matrix_json(reports: list[Report]) -> str:
    names = [r.name for r in reports[0].results]
    return json.dumps({
        "scenario": reports[0].scenario,
        "backends": [r.backend for r in reports],
        "passed": all(r.passed for r in reports),
        "checks": [{"name": n, "results": {r.backend: r.results[i].to_json() for r in reports if i < len(r.results)}}
                   for i, n in enumerate(names)],
        "reports": {r.backend: r.to_json() for r in reports},
    }, indent=2)
