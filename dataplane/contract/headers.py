"""Where the BPF sources are, and the numbers their headers define: the datapath's constants are
declared once, in bpf/include, and read from there (never copied into Python)."""
from __future__ import annotations

import ast
import operator
import re
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
INCLUDE_DIR = BPF_DIR / "include"

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.LShift: operator.lshift, ast.BitOr: operator.or_}


def text_of(header: str) -> str:
    """A header of bpf/include without its comments."""
    return re.sub(r"/\*.*?\*/", "", (INCLUDE_DIR / header).read_text(), flags=re.S)


def _value(node, known: dict) -> int:
    """Integer arithmetic on literals and earlier #defines; anything else is not a number."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name) and node.id in known:
        return known[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left, known), _value(node.right, known))
    raise ValueError("not an integer expression")


def numeric_defines(header: str) -> dict:
    """Every #define of the header whose value is an integer expression, by name."""
    out = {}
    for name, expr in re.findall(r"^#define\s+([A-Z][A-Z0-9_]*)\s+(.+?)\s*$", text_of(header), re.M):
        expr = re.sub(r"(\d+)U?L*\b", r"\1", expr)
        try:
            out[name] = _value(ast.parse(expr, mode="eval").body, out)
        except (ValueError, SyntaxError):
            continue
    return out
