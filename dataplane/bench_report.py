"""A bench run for people: the terminal table and the PNG plots (matplotlib, written to --out).

Rows come from dataplane/run/bench (suite.Run): {"bench", "backend", "services", "target", "stat",
"unit", "value" (median of the repeats), "spread" [min, max], "reps"}.
"""
from __future__ import annotations

import os
from collections import defaultdict

ORDER = ("sync", "connect", "rr", "crr", "throughput", "nodeport", "kernel")
TITLES = {"sync": "control plane (sync)", "connect": "new connections: connect() latency",
          "rr": "request/response on a kept connection (1 byte)", "crr": "connection rate (2 clients)",
          "throughput": "TCP throughput (iperf3)", "nodeport": "64-byte UDP through a node port, from outside",
          "kernel": "ns per packet in the BPF programs (BPF_PROG_TEST_RUN, one packet per call)"}
COLORS = {"ebpf": "tab:green", "iptables": "tab:red", "iptables-legacy": "tab:orange", "nftables": "tab:blue"}


def _fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if v < 10 else f"{v:.1f}"


def text(run) -> str:
    """The terminal table: one block per bench, a line per figure with its spread."""
    lines = [f"dataplane bench, {run.date}, revision {run.revision}, on {run.machine}",
             f"each figure: the median of {run.params.reps} repeats [min - max]; {run.seconds:.0f} s in all"]
    if run.params.source != "synthetic":
        lines.append(f"services: synthetic fillers beside those of {run.params.source}")
    for e in run.errors:
        lines.append(f"FAILED {e['backend']}: {e['error']} (its figures before the failure are kept)")
    by_bench = defaultdict(list)
    for r in run.rows:
        by_bench[r["bench"]].append(r)
    for bench in ORDER:
        rows = by_bench.get(bench)
        if not rows:
            continue
        lines += ["", TITLES[bench]]
        for r in rows:
            stat = "" if r["stat"] == "value" else f" {r['stat']}"
            lo, hi = r["spread"]
            spread = "" if lo == hi else f" [{_fmt(lo)} - {_fmt(hi)}]"
            extra = ""
            if r.get("errors"):
                extra = f"  errors: {r['errors']}"
            if r.get("verdict"):
                extra = f"  ({r['verdict']})"
            lines.append(f"  {r['backend']:<16}{r['services']:>7,} svc  {r['target'] + stat:<32}"
                         f"{_fmt(r['value']):>10} {r['unit']:<9}{spread}{extra}")
    return "\n".join(lines)


def markdown(run) -> str:
    """The run as Markdown tables: a row per figure, a column per backend (docs/benchmarks.md)."""
    by_bench = defaultdict(list)
    for r in run.rows:
        by_bench[r["bench"]].append(r)
    out = []
    for bench in ORDER:
        rows = by_bench.get(bench)
        if not rows:
            continue
        backends = list(dict.fromkeys(r["backend"] for r in rows))
        unit = rows[0]["unit"]
        out += [f"**{TITLES[bench]}** ({unit}; median of the repeats, [min – max])", "",
                "| services | figure | " + " | ".join(backends) + " |",
                "| ---: | --- |" + " ---: |" * len(backends)]
        cells = defaultdict(dict)
        for r in rows:
            stat = "" if r["stat"] == "value" else f" {r['stat']}"
            lo, hi = r["spread"]
            spread = "" if lo == hi else f" [{_fmt(lo)} – {_fmt(hi)}]"
            figure = r["target"] + stat + ("" if r["unit"] == unit else f" ({r['unit']})")
            cells[(r["services"], figure)][r["backend"]] = _fmt(r["value"]) + spread
        for (n, figure), by in cells.items():
            out.append(f"| {n:,} | {figure} | " + " | ".join(by.get(b, "") for b in backends) + " |")
        out.append("")
    return "\n".join(out)


def plots(run, out_dir: str) -> list[str]:
    """PNG files in out_dir, one per bench that has rows; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out_dir, exist_ok=True)
    by_bench = defaultdict(list)
    for r in run.rows:
        by_bench[r["bench"]].append(r)
    made = []
    for bench, draw in (("connect", _connect), ("sync", _sync), ("rr", _bars), ("crr", _bars),
                        ("throughput", _bars), ("nodeport", _bars), ("kernel", _kernel)):
        rows = by_bench.get(bench)
        if not rows:
            continue
        fig = draw(plt, rows, bench)
        fig.text(0.01, 0.005, f"{run.machine}; {run.date}; revision {run.revision}; median of {run.params.reps}, "
                              "bars/whiskers: min-max", fontsize=6, color="gray")
        path = os.path.join(out_dir, f"{bench}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def _series(rows, **match):
    pts = sorted(((r["services"], r) for r in rows if all(r.get(k) == v for k, v in match.items())),
                 key=lambda p: p[0])
    return [p[0] for p in pts], [p[1] for p in pts]


def _errs(rs):
    return [[r["value"] - r["spread"][0] for r in rs], [r["spread"][1] - r["value"] for r in rs]]


def _connect(plt, rows, bench):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    for ax, stat in zip(axes, ("p50", "p99")):
        for b in backends:
            for target, style in (("via service (last)", "-o"), ("via service (random)", ":^"), ("direct", "--s")):
                xs, rs = _series(rows, backend=b, stat=stat, target=target)
                if xs:
                    ax.errorbar(xs, [r["value"] for r in rs], yerr=_errs(rs), fmt=style, color=COLORS.get(b),
                                label=f"{b}, {target}", capsize=2, markersize=4)
        ax.set_xscale("log")
        ax.set_xlabel("services installed")
        ax.set_ylabel(f"connect() {stat}, µs")
        ax.set_title(f"{stat}")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6)
    return _titled(fig, bench)


def _sync(plt, rows, bench):
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    for ax, target, unit in ((axes[0], "apply all", "ms"), (axes[1], "change one", "ms"),
                             (axes[2], "churn, 1 per sync", "changes/s")):
        for b in backends:
            xs, rs = _series(rows, backend=b, target=target)
            if xs:
                ax.errorbar(xs, [r["value"] for r in rs], yerr=_errs(rs), fmt="-o", color=COLORS.get(b), label=b,
                            capsize=2, markersize=4)
            if target == "change one":       # the removal, dashed beside the gain
                xs, rs = _series(rows, backend=b, target="change one, endpoint removed")
                if xs:
                    ax.errorbar(xs, [r["value"] for r in rs], yerr=_errs(rs), fmt="--s", color=COLORS.get(b),
                                label=f"{b}, endpoint removed", capsize=2, markersize=3, alpha=0.7)
        _log_log(ax, "services installed", f"{target}, {unit}", target)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=6)
    return _titled(fig, bench)


def _bars(plt, rows, bench):
    """Grouped bars: a group per backend, a bar per target (p50 for latencies)."""
    rows = [r for r in rows if r["stat"] in ("value", "p50")]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(backends) * len(targets) / 2), 4.5))
    width = 0.8 / len(targets)
    for j, t in enumerate(targets):
        rs = [next((r for r in rows if r["backend"] == b and r["target"] == t), None) for b in backends]
        xs = [i + j * width for i, r in enumerate(rs) if r]
        present = [r for r in rs if r]
        ax.bar(xs, [r["value"] for r in present], width, yerr=_errs(present), capsize=3, label=t)
    ax.set_xticks([i + width * (len(targets) - 1) / 2 for i in range(len(backends))])
    ax.set_xticklabels(backends)
    unit = rows[0]["unit"]
    stat = " p50" if rows[0]["stat"] == "p50" else ""
    ax.set_ylabel(f"{unit}{stat}")
    ax.set_title(f"{TITLES[bench]}, {rows[0]['services']:,} services")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def _kernel(plt, rows, bench):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    paths = list(dict.fromkeys(r["target"] for r in rows))
    for ax, stat in zip(axes, ("p50", "p99")):
        for p in paths:
            xs, rs = _series(rows, target=p, stat=stat)
            ax.plot(xs, [r["value"] for r in rs], "-o", markersize=4, label=p)
        _log_log(ax, "services installed (map fill)", f"ns per packet, {stat}", stat)
    axes[1].legend(fontsize=7)
    return _titled(fig, bench)


def _log_log(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")


def _titled(fig, bench: str):
    fig.suptitle(TITLES[bench])
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig
