"""Print a run's report: a table for people, a JSON document for programs."""
from __future__ import annotations

import json
import shutil

import click

from .runner import Report


def table(report: Report) -> str:
    width = shutil.get_terminal_size((120, 20)).columns
    rows = [("", "check", "detail")] + [("PASS" if r.passed else "FAIL", r.name, r.detail)
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
