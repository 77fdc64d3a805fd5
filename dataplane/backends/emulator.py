"""`emulator` (formerly `model`): the scenario on a simulated lab (dataplane.emulator), the
reference datapath (dataplane.oracle) at the BPF hooks. Needs neither root nor namespaces; runs
the same checks, judged by the same code."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..contract.limits import CtTimeouts
from .base import Backend


@dataclass
class EmulatorBackend(Backend):
    name = "emulator"
    description = "simulated lab, reference datapath at the BPF hooks (no root needed)"
    simulated = True
    options = ("seed", "timeouts")
    has_counters = True

    seed: int | None = None
    timeouts: CtTimeouts = field(default_factory=CtTimeouts)

    def __post_init__(self):
        if self.seed is None:
            self.seed = random.SystemRandom().randrange(1 << 32)
