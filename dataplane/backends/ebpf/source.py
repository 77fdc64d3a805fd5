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


def assemble(entry: str | Path, defines: dict | None = None) -> str:
    entry = Path(entry) if Path(entry).is_absolute() else BPF_DIR / entry
    seen: set[Path] = set()
    out = [f"#define {k} {v}" for k, v in (defines or {}).items()]

    def expand(path: Path) -> None:
        if path in seen:
            return
        seen.add(path)
        out.append(f'#line 1 "{path}"')
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = _INCLUDE.match(line)
            if m:
                expand(_find(m.group(1), path))
                out.append(f'#line {n + 1} "{path}"')
            else:
                out.append(line)

    expand(entry)
    return "\n".join(out) + "\n"
