"""Backends by name. Each renders the shared service model into a lab; see base.Backend."""
from __future__ import annotations

from ..errors import DataplaneError
from .ebpf import EbpfBackend
from .iptables import IptablesBackend, IptablesLegacyBackend
from .model import ModelBackend
from .nftables import NftablesBackend
from .none import NoneBackend

BACKENDS = {b.name: b for b in (EbpfBackend, IptablesBackend, IptablesLegacyBackend, NftablesBackend, ModelBackend,
                                         NoneBackend)}
# The backend `run` and `demo` use when none is named.
DEFAULT = "ebpf"
# `--backend all`: every backend that serves services, in the order of the conformance matrix.
CONFORMANCE = ("ebpf", "iptables", "iptables-legacy", "nftables", "model")


def get(name: str, **options):
    """A backend instance; options (e.g. seed) go to backends that take them."""
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise DataplaneError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}") from None
    import inspect
    params = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in options.items() if k in params and v is not None})
