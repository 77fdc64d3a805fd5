"""Background load for a scenario's `load` step: new requests at a fixed rate, each a new flow,
until told to stop; then one summary of what failed.

Every request is a new TCP connection (GET /hostname with `Connection: close`, read to the end)
or a new UDP socket (one `hostname` datagram, one answer), started on schedule whether or not the
earlier ones have finished, so a stall shows as failures, not as a slower load. A request fails
when it is refused (RST, ICMP port unreachable), dropped (no answer within --timeout, ICMP
network/host unreachable) or answered wrongly (not HTTP 200, no hostname).

Prints {"started": true} once running. A line "stop" on stdin (or its end) stops new requests;
those in flight finish (or time out), then one JSON line:
  {"t0": 81234.5, "requests": 200, "due": 200, "seconds": 10.0, "outcomes": {"reachable": 199, "refused": 1},
   "answered": {"web-1": 100, ...}, "failures": [{"seq": 57, "at": 2.85, "outcome": "refused",
   "error": "ECONNREFUSED", "ms": 0.4}], "ms": {"p50": 0.9, "p99": 3.1, "max": 12.0}}
("t0": the start on CLOCK_MONOTONIC, which every process of the machine shares; "at": seconds
from it; "due": the requests the rate asked for until the stop.)

  python -m dataplane.lab.workload.load --to 10.96.0.10 --port 80 --rate 50
  python -m dataplane.lab.workload.load --to 10.96.0.10 --port 53 --protocol UDP --rate 20 --timeout 0.5
"""
from __future__ import annotations

import argparse
import collections
import errno
import json
import selectors
import socket
import sys
import time

from .protocol import first_line, http_request, udp_request

REFUSED = {errno.ECONNREFUSED, errno.ECONNRESET}
DROPPED = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.EPERM, errno.ETIMEDOUT}
MAX_FAILURES_LISTED = 1000
LOCAL_ICMP_WAIT = 0.5     # seconds for a local REJECT's ICMP error to reach the socket (as the client)


class Request:
    """One request in flight: a non-blocking socket moved on by the selector."""

    def __init__(self, gen: "Generator", seq: int, now: float):
        self.gen, self.seq, self.start = gen, seq, now
        self.deadline = now + gen.timeout
        self.data = b""
        self.done = False
        self.stopped_locally = False
        kind = socket.SOCK_STREAM if gen.protocol == "TCP" else socket.SOCK_DGRAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.setblocking(False)
        try:
            if gen.protocol == "TCP":
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                code = self.sock.connect_ex(gen.target)
                if code not in (0, errno.EINPROGRESS):
                    raise OSError(code, errno.errorcode.get(code, str(code)))
                gen.selector.register(self.sock, selectors.EVENT_WRITE, self)
            else:
                self.sock.connect(gen.target)
                gen.selector.register(self.sock, selectors.EVENT_READ, self)
                try:
                    self.sock.send(udp_request("hostname"))
                except PermissionError:
                    # the node's own firewall stopped it; a REJECT also sends the socket an ICMP
                    # port unreachable, read next (as the lab's client does: refused, else dropped)
                    self.stopped_locally = True
                    self.deadline = min(self.deadline, now + LOCAL_ICMP_WAIT)
        except OSError as exc:
            self.fail(exc)

    def ready(self, events: int) -> None:
        try:
            if events & selectors.EVENT_WRITE:          # TCP connected, or not
                code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, errno.errorcode.get(code, str(code)))
                self.sock.send(http_request("/hostname", self.gen.target[0], close=True))
                self.gen.selector.modify(self.sock, selectors.EVENT_READ, self)
                return
            chunk = self.sock.recv(65536)
            if self.gen.protocol == "UDP":
                self.finish(first_line(chunk.decode(errors="replace")))
            elif chunk:
                self.data += chunk
            else:                                        # the server closed: the whole answer is in
                head, _, body = self.data.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    self.record("error", error=f"answer {head[:40]!r}")
                else:
                    self.finish(first_line(body.decode(errors="replace")))
        except OSError as exc:
            self.fail(exc)

    def finish(self, hostname: str) -> None:
        if hostname:
            self.record("reachable", hostname=hostname)
        else:
            self.record("error", error="empty answer")

    def fail(self, exc: OSError) -> None:
        code = exc.errno
        name = errno.errorcode.get(code, str(exc)) if code else f"{type(exc).__name__}: {exc}"
        if self.stopped_locally:
            name = f"EPERM, then {name} (rejected by a local rule)"
        self.record("refused" if code in REFUSED else "dropped" if code in DROPPED else "error", error=name)

    def expire(self) -> None:
        self.record("dropped", error="EPERM (dropped by a local rule)" if self.stopped_locally else "timeout")

    def record(self, outcome: str, hostname: str | None = None, error: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.gen.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        self.gen.result(self, outcome, hostname, error)


class Generator:
    def __init__(self, ip: str, port: int, protocol: str, rate: float, timeout: float):
        self.target, self.protocol, self.rate, self.timeout = (ip, port), protocol, rate, timeout
        self.selector = selectors.DefaultSelector()
        self.in_flight: collections.deque[Request] = collections.deque()     # in start order
        self.outcomes: collections.Counter = collections.Counter()
        self.answered: collections.Counter = collections.Counter()
        self.failures: list[dict] = []
        self.latencies: list[float] = []
        self.sent = 0
        self.t0 = 0.0

    def result(self, req: Request, outcome: str, hostname, error) -> None:
        now = time.monotonic()
        self.outcomes[outcome] += 1
        ms = round((now - req.start) * 1000, 2)
        if outcome == "reachable":
            self.answered[hostname] += 1
            self.latencies.append(ms)
        elif len(self.failures) < MAX_FAILURES_LISTED:
            self.failures.append({"seq": req.seq, "at": round(req.start - self.t0, 3), "outcome": outcome,
                                  "error": error, "ms": ms})

    def run(self, stdin) -> dict:
        self.t0 = time.monotonic()
        self.selector.register(stdin, selectors.EVENT_READ, None)
        stopping_at = None
        while True:
            now = time.monotonic()
            if stopping_at is None:
                while self.t0 + self.sent / self.rate <= now:        # every request due by now
                    self.in_flight.append(Request(self, self.sent, now))
                    self.sent += 1
            while self.in_flight and (self.in_flight[0].done or self.in_flight[0].deadline <= now):
                self.in_flight.popleft().expire()                  # no-op for a finished one
            if stopping_at is not None and not self.in_flight:
                break
            wake = [self.in_flight[0].deadline] if self.in_flight else []
            if stopping_at is None:
                wake.append(self.t0 + self.sent / self.rate)
            timeout = max(0.0, min(wake) - time.monotonic())
            for key, events in self.selector.select(timeout):
                if key.data is None:
                    line = stdin.readline()
                    if not line or line.strip() == "stop":
                        stopping_at = time.monotonic()
                        self.selector.unregister(stdin)
                else:
                    key.data.ready(events)
        seconds = stopping_at - self.t0
        lat = sorted(self.latencies)
        return {"t0": self.t0, "requests": self.sent, "due": int(seconds * self.rate) + 1, "seconds": round(seconds, 3),
                "outcomes": dict(self.outcomes), "answered": dict(self.answered), "failures": self.failures,
                "ms": {"p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99), "max": lat[-1] if lat else None}}


def _pct(values: list, q: float):
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--to", required=True, help="destination IPv4 address")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--protocol", choices=["TCP", "UDP"], default="TCP")
    ap.add_argument("--rate", type=float, required=True, help="new requests per second")
    ap.add_argument("--timeout", type=float, default=1.0, help="seconds a request may take")
    args = ap.parse_args(argv)
    gen = Generator(args.to, args.port, args.protocol, args.rate, args.timeout)
    print(json.dumps({"started": True}), flush=True)
    print(json.dumps(gen.run(sys.stdin)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
