"""The layout stamp of a node's maps: what a reload must check before it reuses pinned maps.

bcc opens a pinned map by path and never compares it with the declaration it compiled (a map of
4-byte keys is reused by a program declaring 8-byte ones, and the verifier accepts it). So each
node's maps carry a stamp in their `layout` map (bpf/include/pinning.h): a hash of every map's
type, capacity, flags and key/value layout as bcc's generated ctypes describe them (nothing here
restates a struct). A build whose stamp differs from the pinned one is refused before it writes
anything or attaches anything; the description is kept beside the lab's state so that the error
can say which maps changed.
"""
from __future__ import annotations

import ctypes
import hashlib
import json

from ...errors import DataplaneError


class LayoutMismatch(DataplaneError):
    """Pinned maps of another layout: reusing them would misread every entry."""


def _ctype(t) -> object:
    """A ctypes type as plain data: fields with offsets, arrays with lengths, scalars by size."""
    if hasattr(t, "_fields_"):
        return {"size": ctypes.sizeof(t), "kind": "union" if issubclass(t, ctypes.Union) else "struct",
                "fields": [[f[0], getattr(t, f[0]).offset, _ctype(f[1])] for f in t._fields_]}
    if hasattr(t, "_length_"):
        return {"size": ctypes.sizeof(t), "array": t._length_, "of": _ctype(t._type_)}
    return {"size": ctypes.sizeof(t), "scalar": t.__name__}


def describe(bpf, names) -> dict:
    """Map name -> its type, capacity, flags, key and value layout (from bcc's tables); and the
    constants of bpf/include/consts.h, whose values map entries carry (flag bits, directions,
    states): a changed meaning is as much a new layout as a changed struct."""
    from ...contract.headers import numeric_defines
    out = {"(constants)": dict(sorted(numeric_defines("consts.h").items()))}
    for name in names:
        t = bpf[name.encode()]
        out[name] = {"type": int(t.ttype), "max_entries": int(t.max_entries), "flags": int(t.flags),
                     # a per-CPU map's Leaf is one value per CPU; sLeaf is the value itself
                     "key": _ctype(t.Key), "value": _ctype(getattr(t, "sLeaf", t.Leaf))}
    return out


def stamp(description: dict) -> int:
    """A 64-bit hash of a description (never 0: 0 is what a fresh `layout` map holds)."""
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "little") or 1


def changed_maps(old: dict, new: dict) -> list[str]:
    """Which maps differ between two descriptions, and how (for the error)."""
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        if name == "(constants)":
            keys = sorted(k for k in set(a or {}) | set(b or {}) if (a or {}).get(k) != (b or {}).get(k))
            out.append(f"constants of bpf/include/consts.h ({', '.join(keys)})")
            continue
        if a is None or b is None:
            out.append(f"{name} {'added' if a is None else 'removed'}")
            continue
        what = [k for k in ("type", "max_entries", "flags", "key", "value") if a.get(k) != b.get(k)]
        detail = ", ".join(f"{k} {a[k]} -> {b[k]}" if k in ("type", "max_entries", "flags") else f"{k} layout"
                           for k in what)
        out.append(f"{name} ({detail})")
    return out
