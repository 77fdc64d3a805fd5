"""`none`: plain routing, no services. The lab as the network model alone defines it, for pod,
node and outside reachability, and as the baseline every service backend is compared with."""
from __future__ import annotations

from .base import Backend


class NoneBackend(Backend):
    name = "none"
    description = "plain routing, no service handling (service VIPs are not served)"
    needs = ("root", "netns")

    def setup(self, lab, table) -> None:
        pass

    def sync(self, lab, table) -> list[str]:
        return []

    def adopt(self, lab, table) -> list[str]:
        return []
