"""Background loads on the emulator: the requests a live load's generator would send, on the
emulator's clock. Request k of a load is due at k/rate seconds from its start, and sleeps send
whatever falls due in them (a load's rhythm runs across steps, as the live one's does); each
load also sends once right after every update (the moment a live load may catch a sync half
done). The emulator's clock waits for its requests (1 ms each), so it never skips one; loads
adding up to more than 1,000 requests a second stretch a sleep. `stop` gives the summaries the
live judge (judge/load.py) reads."""
from __future__ import annotations

from collections import Counter

from ..lab.workload.load import percentile
from ..spec.load import LoadSpec


class _Stream:
    """One client's requests, summarised as dataplane.lab.workload.load does."""

    def __init__(self, t0: int):
        self.t0, self.sent = t0, 0
        self.outcomes, self.answered = Counter(), Counter()
        self.failures, self.ms = [], []

    def summary(self, now: int) -> dict:
        lat = sorted(self.ms)
        return {"t0": self.t0 / 1e9, "requests": self.sent, "skipped": 0, "due": self.sent,
                "seconds": round((now - self.t0) / 1e9, 3), "outcomes": dict(self.outcomes),
                "answered": dict(self.answered), "failures": self.failures,
                "ms": {"p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99), "max": lat[-1] if lat else None}, "late_ms": {"max": 0.0}}


class _Load:
    def __init__(self, spec: LoadSpec, t0: int):
        self.spec, self.t0 = spec, t0
        self.scheduled = 0                       # requests of the schedule sent so far
        self.streams = {c: _Stream(t0) for c in spec.clients}

    def next_due(self) -> int:
        return self.t0 + int(self.scheduled * 1e9 / self.spec.rate)


class SimLoads:
    def __init__(self, net, plan):
        self.net, self.plan = net, plan
        self.running: dict[str, _Load] = {}

    def start(self, spec: LoadSpec) -> None:
        load = self.running[spec.name] = _Load(spec, self.net.now)
        load.scheduled = 1
        self._send(load)

    def sleep(self, seconds: float) -> None:
        """Advance the clock by `seconds`, each load sending what falls due meanwhile."""
        end = self.net.now + int(seconds * 1e9)
        while self.running:
            load = min(self.running.values(), key=_Load.next_due)
            at = load.next_due()
            if at > end:
                break
            self.net.now = max(self.net.now, at)
            load.scheduled += 1
            self._send(load)
        self.net.now = max(self.net.now, end)

    def updated(self) -> None:
        for load in self.running.values():
            self._send(load)

    def stop(self, name: str) -> dict:
        """Stop a load: client -> its summary, as its live generator gives it."""
        load = self.running.pop(name)
        return {c: s.summary(self.net.now) for c, s in load.streams.items()}

    def _send(self, load: _Load) -> None:
        spec = load.spec
        for client, stream in load.streams.items():
            start = self.net.now
            r = self.net.request(self.plan.netns_of(client), spec.ip, spec.port, spec.protocol, timeout=spec.timeout)
            ms = round((self.net.now - start) / 1e6, 2)
            stream.outcomes[r["outcome"]] += 1
            if r["outcome"] == "reachable":
                stream.answered[r["hostname"]] += 1
                stream.ms.append(ms)
            else:
                if r.get("error") == "timeout":
                    ms = spec.timeout * 1000       # the live generator waits that long
                stream.failures.append({"seq": stream.sent, "at": round((start - stream.t0) / 1e9, 3),
                                        "late": 0.0, "outcome": r["outcome"], "error": r.get("error"), "ms": ms})
            stream.sent += 1
