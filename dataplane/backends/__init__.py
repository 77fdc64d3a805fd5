"""Backends by name. Each renders the shared service model into a lab; see base.Backend."""
from __future__ import annotations

from ..errors import DataplaneError
from .none import NoneBackend

BACKENDS = {b.name: b for b in (NoneBackend,)}
# The backend `run` and `demo` use when none is named: ebpf once it exists.
DEFAULT = "none"


def get(name: str):
    try:
        return BACKENDS[name]()
    except KeyError:
        raise DataplaneError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}") from None
