"""The backends, by name: each renders the shared service table into a lab (see base.Backend).

Owns: the registry, the conformance order, which options apply to which backend.
May import: spec, lab, contract, errors.
"""
from __future__ import annotations

from ..errors import DataplaneError
from .base import OPTION_FLAGS, Backend
from .ebpf import EbpfBackend
from .emulator import EmulatorBackend
from .iptables import IptablesBackend, IptablesLegacyBackend
from .nftables import NftablesBackend
from .none import NoneBackend

BACKENDS: dict[str, type[Backend]] = {
    b.name: b for b in (EbpfBackend, IptablesBackend, IptablesLegacyBackend, NftablesBackend, EmulatorBackend,
                        NoneBackend)}
# Earlier names that still work: the emulator backend was called `model`.
ALIASES = {"model": "emulator"}
# The backend `run` and `demo` use when none is named.
DEFAULT = "ebpf"
# `--backend all`: every backend that serves services, in the order of the conformance matrix.
CONFORMANCE = ("ebpf", "iptables", "iptables-legacy", "nftables", "emulator")


def class_of(name: str) -> type[Backend]:
    try:
        return BACKENDS[ALIASES.get(name, name)]
    except KeyError:
        raise DataplaneError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}") from None


def takers(option: str) -> list[str]:
    """The backends an option applies to."""
    return [n for n, cls in BACKENDS.items() if option in cls.options]


def settings(seed=None, map_sizes=(), ct_timeouts=()) -> dict:
    """Backend options from their command-line form (--seed, --map-size NAME=ENTRIES,
    --ct-timeout NAME=SECONDS; None or empty: not given), as get() takes them."""
    from ..contract.limits import CtTimeouts, MapSizes
    return {"seed": seed, "sizes": MapSizes.parse(map_sizes) if map_sizes else None,
            "timeouts": CtTimeouts.parse(ct_timeouts) if ct_timeouts else None}


def get(name: str, strict: bool = True, **options) -> Backend:
    """A backend instance. Options (seed, sizes, timeouts; None: not given) go to the backends
    they apply to; with `strict`, giving one to a backend it does not apply to is an error (a
    run on every backend passes each its own)."""
    cls = class_of(name)
    given = {k: v for k, v in options.items() if v is not None}
    for key in given:
        if key not in cls.options and strict:
            raise DataplaneError(f"{OPTION_FLAGS[key]} does not apply to backend {cls.name} "
                                 f"(only to {', '.join(takers(key))})")
    return cls(**{k: v for k, v in given.items() if k in cls.options})
