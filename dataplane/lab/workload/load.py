"""Background load for a scenario's `load` step: new requests on a fixed schedule, each a new
flow, until told to stop; then one summary of what failed.

Request k is due at k/rate seconds from the start. Every request is a new TCP connection (GET
/hostname with `Connection: close`; the answer is complete at its Content-Length or at the
server's close) or a new UDP socket (one `hostname` datagram, one answer). Each is started when
due, whether or not the earlier ones have finished, so a stalled dataplane shows as failures, not
as a slower load. A request the generator itself could not start in time (more than
max(0.1 s, 2/rate) late: the machine was busy) is skipped, not sent late in a burst, and counted
as skipped. A request fails when it is refused (RST, ICMP port unreachable), dropped (no answer
within --timeout, ICMP network/host unreachable, a local firewall's EPERM) or answered wrongly
(not HTTP 200, no hostname); outcomes are classified as the lab's client does.

Prints {"started": true} once running. A line "stop" on stdin (or its end) stops new requests;
those in flight finish (or time out), then one JSON line:
  {"t0": 81234.5, "requests": 200, "skipped": 0, "due": 200, "seconds": 10.0,
   "outcomes": {"reachable": 199, "refused": 1}, "answered": {"web-1": 100, ...},
   "failures": [{"seq": 57, "at": 2.85, "late": 0.1, "outcome": "refused", "error": "ECONNREFUSED",
                 "ms": 0.4}], "ms": {"p50": 0.9, "p99": 3.1, "max": 12.0}, "late_ms": {"max": 0.4}}
("t0": the start on CLOCK_MONOTONIC, which every process of the machine shares; "at": when the
request was due, in seconds from t0; "late": how long after that it started, in ms; "due": the
requests due until the stop, sent or skipped; at most 1,000 failures are listed, all counted.)

  python -m dataplane.lab.workload.load --to 10.96.0.10 --port 80 --rate 50
  python -m dataplane.lab.workload.load --to 10.96.0.10 --port 53 --protocol UDP --rate 20 --timeout 0.5
"""
from __future__ import annotations

import argparse
import collections
import errno
import heapq
import json
import resource
import selectors
import socket
import sys
import time

from .client import classify
from .protocol import first_line, http_request, udp_request

MAX_FAILURES_LISTED = 1000
LOCAL_ICMP_WAIT = 0.5     # seconds for a local REJECT's ICMP error to reach the socket (as the client)


class Request:
    """One request in flight: a non-blocking socket moved on by the selector."""

    def __init__(self, gen: "Generator", seq: int, due: float, now: float):
        self.gen, self.seq, self.due, self.start = gen, seq, due, now
        self.deadline = now + gen.timeout
        self.out = b""              # TCP: what is left to send
        self.data = b""             # TCP: what the server sent
        self.done = False
        self.stopped_locally = False
        self.sock = None
        try:
            self._open(now)
        except OSError as exc:      # EMFILE, ENOBUFS, a refused connect, ...
            self.fail(exc)

    def _open(self, now: float) -> None:
        gen = self.gen
        kind = socket.SOCK_STREAM if gen.protocol == "TCP" else socket.SOCK_DGRAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.setblocking(False)
        if gen.protocol == "TCP":
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.out = http_request("/hostname", gen.target[0], close=True)
            code = self.sock.connect_ex(gen.target)
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, errno.errorcode.get(code, str(code)))
            gen.selector.register(self.sock, selectors.EVENT_WRITE, self)
            return
        self.sock.connect(gen.target)
        gen.selector.register(self.sock, selectors.EVENT_READ, self)
        try:
            self.sock.send(udp_request("hostname"))
        except PermissionError:
            # the node's own firewall stopped it; a REJECT also sends the socket an ICMP port
            # unreachable, read next (as the lab's client does: refused, else dropped)
            self.stopped_locally = True
            self.deadline = min(self.deadline, now + LOCAL_ICMP_WAIT)

    def ready(self, events: int) -> None:
        try:
            if events & selectors.EVENT_WRITE:          # TCP: connected (or not), then sending
                code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, errno.errorcode.get(code, str(code)))
                sent = self.sock.send(self.out)
                self.out = self.out[sent:]
                if not self.out:
                    self.gen.selector.modify(self.sock, selectors.EVENT_READ, self)
                return
            chunk = self.sock.recv(65536)
            if self.gen.protocol == "UDP":
                self.finish(first_line(chunk.decode(errors="replace")))
                return
            self.data += chunk
            answer = _http_answer(self.data, closed=not chunk)
            if answer is not None:
                status, body = answer
                if status != b"200":
                    self.record("error", error=f"HTTP {status.decode(errors='replace')}")
                else:
                    self.finish(first_line(body.decode(errors="replace")))
            elif not chunk:
                self.record("error", error="closed before a whole answer")
        except BlockingIOError:
            pass                                         # spurious wake-up: wait for the next event
        except OSError as exc:
            self.fail(exc)

    def finish(self, hostname: str) -> None:
        if hostname:
            self.record("reachable", hostname=hostname)
        else:
            self.record("error", error="empty answer")

    def fail(self, exc: OSError) -> None:
        outcome, error = classify(exc)
        if self.stopped_locally:
            error = f"EPERM, then {error} (rejected by a local rule)"
        self.record(outcome, error=error)

    def expire(self) -> None:
        self.record("dropped", error="EPERM (dropped by a local rule)" if self.stopped_locally else "timeout")

    def record(self, outcome: str, hostname: str | None = None, error: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        if self.sock is not None:
            try:
                self.gen.selector.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.sock.close()
        self.gen.result(self, outcome, hostname, error)


def _http_answer(data: bytes, closed: bool):
    """(status, body) once `data` holds a whole HTTP answer (by Content-Length, or everything
    until the close without one), else None."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.split(b"\r\n")
    length = None
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
    if length is not None and len(body) >= length:
        body = body[:length]
    elif not closed:
        return None
    parts = lines[0].split(b" ", 2)
    return (parts[1] if len(parts) > 1 else b"?"), body


class Generator:
    def __init__(self, ip: str, port: int, protocol: str, rate: float, timeout: float):
        self.target, self.protocol, self.rate, self.timeout = (ip, port), protocol, rate, timeout
        self.late_limit = max(0.1, 2 / rate)
        self.selector = selectors.DefaultSelector()
        self.in_flight: list = []             # heap of (deadline, seq, Request)
        self.outcomes: collections.Counter = collections.Counter()
        self.answered: collections.Counter = collections.Counter()
        self.failures: list[dict] = []
        self.latencies: list[float] = []
        self.late_max = 0.0
        self.sent = self.skipped = 0
        self.t0 = 0.0

    def result(self, req: Request, outcome: str, hostname, error) -> None:
        self.outcomes[outcome] += 1
        ms = round((time.monotonic() - req.start) * 1000, 2)
        if outcome == "reachable":
            self.answered[hostname] += 1
            self.latencies.append(ms)
            return
        if outcome == "dropped" and error == "timeout":
            ms = round(self.timeout * 1000, 2)
        if len(self.failures) < MAX_FAILURES_LISTED:
            self.failures.append({"seq": req.seq, "at": round(req.due - self.t0, 3),
                                  "late": round((req.start - req.due) * 1000, 2), "outcome": outcome,
                                  "error": error, "ms": ms})

    def _start_due(self, now: float) -> None:
        while True:
            due = self.t0 + (self.sent + self.skipped) / self.rate
            if due > now:
                return
            if now - due > self.late_limit:
                self.skipped += 1
                continue
            self.late_max = max(self.late_max, now - due)
            req = Request(self, self.sent + self.skipped, due, now)
            self.sent += 1
            if not req.done:
                heapq.heappush(self.in_flight, (req.deadline, req.seq, req))

    def run(self, stdin) -> dict:
        self.t0 = time.monotonic()
        self.selector.register(stdin, selectors.EVENT_READ, None)
        stopping_at = None
        while True:
            now = time.monotonic()
            if stopping_at is None:
                self._start_due(now)
            while self.in_flight and (self.in_flight[0][2].done or self.in_flight[0][0] <= now):
                heapq.heappop(self.in_flight)[2].expire()          # no-op for a finished one
            if stopping_at is not None and not self.in_flight:
                break
            wake = [self.in_flight[0][0]] if self.in_flight else []
            if stopping_at is None:
                wake.append(self.t0 + (self.sent + self.skipped) / self.rate)
            for key, events in self.selector.select(max(0.0, min(wake) - time.monotonic())):
                if key.data is None:
                    line = stdin.readline()
                    if not line or line.strip() == "stop":
                        stopping_at = time.monotonic()
                        self.selector.unregister(stdin)
                else:
                    key.data.ready(events)
        lat = sorted(self.latencies)
        return {"t0": self.t0, "requests": self.sent, "skipped": self.skipped, "due": self.sent + self.skipped,
                "seconds": round(stopping_at - self.t0, 3), "outcomes": dict(self.outcomes),
                "answered": dict(self.answered), "failures": self.failures,
                "ms": {"p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99), "max": lat[-1] if lat else None},
                "late_ms": {"max": round(self.late_max * 1000, 2)}}


def percentile(values: list, q: float):
    """The q-quantile of sorted `values` (None when empty): the generator's, the emulator's and
    the benchmarks'."""
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def _more_files() -> None:
    """As many descriptors as the hard limit allows: a load at its rate through an outage holds
    rate x timeout sockets at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--to", required=True, help="destination IPv4 address")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--protocol", choices=["TCP", "UDP"], default="TCP")
    ap.add_argument("--rate", type=float, required=True, help="new requests per second")
    ap.add_argument("--timeout", type=float, default=1.0, help="seconds a request may take")
    args = ap.parse_args(argv)
    _more_files()
    gen = Generator(args.to, args.port, args.protocol, args.rate, args.timeout)
    print(json.dumps({"started": True}), flush=True)
    print(json.dumps(gen.run(sys.stdin)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
