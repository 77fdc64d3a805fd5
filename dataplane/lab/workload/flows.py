"""Long-lived flows through a running lab, for what must survive a change (a reload, a rolling
update): each TCP flow is one HTTP keep-alive connection, each UDP flow one socket (one source
port) sending to one address. They are opened once and never re-opened: a flow that breaks is
reported broken.

  python -m dataplane.lab.workload.flows --tcp 10.96.0.10:80 --udp 10.96.0.10:53

Prints {"opened": [...]} once every flow is open (or {"error": ...}), then answers each line on
stdin ("round") by using every flow once, printing one JSON line:
  {"round": 1, "flows": [{"flow": "tcp 10.96.0.10:80", "ok": true, "answer": "web-1", "tries": 1,
                          "error": null}, ...]}
The request is `hostname`: the answer names the backend, which a kept flow must not change. A UDP
request is sent up to --tries times, --timeout seconds apart (what a UDP application's
retransmission would do); TCP retransmits by itself within --timeout.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys

from .protocol import first_line


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class TcpFlow:
    def __init__(self, target, timeout: float):
        self.name = f"tcp {target[0]}:{target[1]}"
        self.target = target
        self.sock = socket.create_connection(target, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def use(self) -> dict:
        try:
            self.sock.sendall(f"GET /hostname HTTP/1.1\r\nHost: {self.target[0]}\r\n\r\n".encode())
            head, body = self._response()
            return {"ok": head.startswith(b"HTTP/1.1 200"), "answer": first_line(body.decode(errors="replace")),
                    "tries": 1, "error": None}
        except OSError as exc:
            return {"ok": False, "answer": None, "tries": 1, "error": f"{type(exc).__name__}: {exc}"}

    def _response(self) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return head, body

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by the peer")
        self.buf += chunk


class UdpFlow:
    def __init__(self, target, timeout: float, tries: int):
        self.name = f"udp {target[0]}:{target[1]}"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(target)          # one source port for the flow's life
        self.sock.settimeout(timeout)
        self.tries = tries

    def use(self) -> dict:
        error = None
        for attempt in range(1, self.tries + 1):
            try:
                self.sock.send(b"hostname")
                data = self.sock.recv(65536)
                return {"ok": True, "answer": first_line(data.decode(errors="replace")), "tries": attempt,
                        "error": None}
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
        return {"ok": False, "answer": None, "tries": self.tries, "error": error}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tcp", action="append", default=[], metavar="IP:PORT")
    ap.add_argument("--udp", action="append", default=[], metavar="IP:PORT")
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--tries", type=int, default=3)
    args = ap.parse_args(argv)
    flows = []
    try:
        flows += [TcpFlow(_addr(t), args.timeout) for t in args.tcp]
        flows += [UdpFlow(_addr(u), args.timeout, args.tries) for u in args.udp]
    except OSError as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"opened": [f.name for f in flows]}), flush=True)
    n = 0
    for line in sys.stdin:
        if line.strip() != "round":
            continue
        n += 1
        print(json.dumps({"round": n, "flows": [{"flow": f.name, **f.use()} for f in flows]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
