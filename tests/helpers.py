"""Writing throwaway scenario files for tests."""
from __future__ import annotations

import textwrap
from pathlib import Path

BASE = """\
name: t
topology:
  model: flat
  nodes: [node1, node2]
  pods:
    - {name: client, node: node1}
    - {name: web-1, node: node1, labels: {app: web}}
    - {name: web-2, node: node2, labels: {app: web}}
  outside:
    - {name: ext}
"""


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p
