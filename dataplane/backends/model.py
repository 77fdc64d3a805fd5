"""`model`: the scenario on a simulated lab (dataplane.emulator), the reference model at the BPF
hooks. Needs neither root nor namespaces; runs the same checks, judged by the same code."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .ebpf.program import CtTimeouts


@dataclass
class ModelBackend:
    name = "model"
    description = "simulated lab, reference model at the BPF hooks (no root needed)"
    needs = ()
    simulated = True

    seed: int | None = None
    timeouts: CtTimeouts = field(default_factory=CtTimeouts)

    def __post_init__(self):
        if self.seed is None:
            self.seed = random.SystemRandom().randrange(1 << 32)
