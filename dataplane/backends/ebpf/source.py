"""Assemble a BPF entry file and the project headers it includes into one C text for bcc.

bcc rewrites map method calls (`services.lookup(&k)`) only in the main file it is given, not in
headers it finds by include path; the sources stay one header per concern on disk and are joined
here, with #line markers so compiler errors name the original file and line.
"""
from __future__ import annotations

import re
from pathlib import Path

from ...contract.headers import BPF_DIR

SEARCH = (BPF_DIR / "include", BPF_DIR / "lib", BPF_DIR)
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def _find(name: str, here: Path) -> Path:
    for d in (here.parent, *SEARCH):
        p = d / name
        if p.exists():
            return p
    raise FileNotFoundError(f'#include "{name}" not found in {", ".join(str(d) for d in SEARCH)}')


def assemble(entry: str | Path, defines: dict | None = None, origins: list | None = None) -> str:
    """The entry file with its project headers inlined. With `origins` (a list, filled in), the
    text has no #line markers and origins[i] is (file, line) of the text's line i + 1 (None for
    the defines): the profiler's own map from bcc's line info back to the sources, which bcc's
    rewriting of the main file shifts (run/bench/profile.py)."""
    entry = Path(entry) if Path(entry).is_absolute() else BPF_DIR / entry
    seen: set[Path] = set()
    out = [f"#define {k} {v}" for k, v in (defines or {}).items()]
    where = [None] * len(out)

    def marker(text: str) -> None:
        if origins is None:
            out.append(text)
            where.append(None)

    def expand(path: Path) -> None:
        if path in seen:
            return
        seen.add(path)
        marker(f'#line 1 "{path}"')
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = _INCLUDE.match(line)
            if m:
                expand(_find(m.group(1), path))
                marker(f'#line {n + 1} "{path}"')
            else:
                out.append(line)
                where.append((path, n))

    expand(entry)
    if origins is not None:
        origins[:] = where
    return "\n".join(out) + "\n"
