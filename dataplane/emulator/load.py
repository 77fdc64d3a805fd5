"""Background loads on the emulator: the requests a live load's generator would send, on the
emulator's clock. A load sends from each client when it starts, `rate` times a second through
every sleep, and once right after every update (the moment a live load may catch a sync half
done); `stop` gives the summaries the live judge (judge/load.py) reads."""
from __future__ import annotations

from collections import Counter

from ..spec.load import LoadSpec


class _Stream:
    """One client's requests, summarised as dataplane.lab.workload.load does."""

    def __init__(self, t0: int):
        self.t0, self.sent = t0, 0
        self.outcomes, self.answered = Counter(), Counter()
        self.failures, self.ms = [], []

    def summary(self, now: int) -> dict:
        lat = sorted(self.ms)
        pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None)
        return {"t0": self.t0 / 1e9, "requests": self.sent, "due": self.sent, "seconds": round((now - self.t0) / 1e9, 3),
                "outcomes": dict(self.outcomes), "answered": dict(self.answered), "failures": self.failures,
                "ms": {"p50": pct(0.5), "p99": pct(0.99), "max": lat[-1] if lat else None}}


class SimLoads:
    def __init__(self, net, plan):
        self.net, self.plan = net, plan
        self.running: dict[str, tuple[LoadSpec, dict]] = {}

    def start(self, spec: LoadSpec) -> None:
        self.running[spec.name] = (spec, {c: _Stream(self.net.now) for c in spec.clients})
        self._send(spec.name)

    def sleep(self, seconds: float) -> None:
        """Advance the clock by `seconds`, each load sending at its rate meanwhile."""
        start = self.net.now
        end = start + int(seconds * 1e9)
        due = sorted((start + int(k * 1e9 / spec.rate), name) for name, (spec, _) in self.running.items()
                     for k in range(1, int(seconds * spec.rate) + 1))
        for at, name in due:
            self.net.now = max(self.net.now, at)
            self._send(name)
        self.net.now = max(self.net.now, end)

    def updated(self) -> None:
        for name in list(self.running):
            self._send(name)

    def stop(self, name: str) -> dict:
        """Stop a load: client -> its summary, as its live generator gives it."""
        _, streams = self.running.pop(name)
        return {c: s.summary(self.net.now) for c, s in streams.items()}

    def _send(self, name: str) -> None:
        spec, streams = self.running[name]
        for client, stream in streams.items():
            start = self.net.now
            r = self.net.request(self.plan.netns_of(client), spec.ip, spec.port, spec.protocol, timeout=spec.timeout)
            ms = round((self.net.now - start) / 1e6, 2)
            stream.outcomes[r["outcome"]] += 1
            if r["outcome"] == "reachable":
                stream.answered[r["hostname"]] += 1
                stream.ms.append(ms)
            else:
                stream.failures.append({"seq": stream.sent, "at": round((start - stream.t0) / 1e9, 3),
                                        "outcome": r["outcome"], "error": r.get("error"), "ms": ms})
            stream.sent += 1
