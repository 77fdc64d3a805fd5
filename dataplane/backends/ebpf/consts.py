"""Constants of the BPF programs, read from bpf/include/consts.h itself (one source of truth):
the counter names in `enum metric` order, and every numeric #define."""
from __future__ import annotations

import ast
import operator
import re

from .source import BPF_DIR

_TEXT = (BPF_DIR / "include" / "consts.h").read_text()
_NOCOMMENT = re.sub(r"/\*.*?\*/", "", _TEXT, flags=re.S)

METRICS = tuple(re.findall(r"^\s*([A-Z][A-Z0-9_]*)\s*(?:=\s*0\s*)?,", 
                           re.search(r"enum metric\s*\{(.*?)\};", _NOCOMMENT, re.S).group(1), re.M))
METRICS = tuple(m for m in METRICS if m != "M_MAX")
INDEX = {name: i for i, name in enumerate(METRICS)}


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.LShift: operator.lshift, ast.BitOr: operator.or_}


def _value(node, known: dict) -> int:
    """Integer arithmetic on literals and earlier #defines; anything else is not a number."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name) and node.id in known:
        return known[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left, known), _value(node.right, known))
    raise ValueError("not an integer expression")


def _defines() -> dict:
    out = {}
    for name, expr in re.findall(r"^#define\s+([A-Z][A-Z0-9_]*)\s+(.+?)\s*$", _NOCOMMENT, re.M):
        expr = re.sub(r"(\d+)U?L*\b", r"\1", expr)
        try:
            out[name] = _value(ast.parse(expr, mode="eval").body, out)
        except (ValueError, SyntaxError):
            continue
    return out


DEFINES = _defines()
globals().update(DEFINES)   # CT_SERVICE, CT_F_HAIRPIN, CT_LIFETIME_TCP, SVC_F_AFFINITY, ...
