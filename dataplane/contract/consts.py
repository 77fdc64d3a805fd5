"""Constants of the BPF programs, read from bpf/include/consts.h itself (one source of truth):
the counter names in `enum metric` order, and every numeric #define."""
from __future__ import annotations

import re

from .headers import numeric_defines, text_of

METRICS = tuple(re.findall(r"^\s*([A-Z][A-Z0-9_]*)\s*(?:=\s*0\s*)?,",
                           re.search(r"enum metric\s*\{(.*?)\};", text_of("consts.h"), re.S).group(1), re.M))
METRICS = tuple(m for m in METRICS if m != "M_MAX")
INDEX = {name: i for i, name in enumerate(METRICS)}

DEFINES = numeric_defines("consts.h")
globals().update(DEFINES)   # CT_SERVICE, CT_F_HAIRPIN, CT_LIFETIME_TCP, SVC_F_AFFINITY, ...
