"""The lab's test client: asks a netexec server who it is and whom it saw, and says what happened.

Each request uses a fresh connection (TCP) or socket (UDP), so each is a new flow. Per request it
reports one outcome:
  reachable   a server answered; "hostname" and "clientip" say which one and what source it saw
  refused     TCP RST or ICMP port unreachable (connection refused)
  dropped     no answer within the timeout, or an ICMP network/host unreachable from a router

Prints one JSON document: {"results": [{"outcome", "hostname", "clientip", "error", "ms"}...]}

  python -m dataplane.agent.client --to 10.0.2.10 --port 8080 --protocol TCP --requests 3
  python -m dataplane.agent.client --to 10.96.0.10 --port 53 --protocol UDP --source-port 40000
"""
from __future__ import annotations

import argparse
import errno
import json
import socket
import struct
import sys
import time

REFUSED = {errno.ECONNREFUSED, errno.ECONNRESET}
UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}


def _result(outcome, hostname=None, clientip=None, error=None, start=0.0):
    return {"outcome": outcome, "hostname": hostname, "clientip": clientip, "error": error,
            "ms": round((time.monotonic() - start) * 1000, 2)}


def _failure(exc: BaseException, start: float) -> dict:
    if isinstance(exc, socket.timeout):
        return _result("dropped", error="timeout", start=start)
    code = getattr(exc, "errno", None)
    if code in REFUSED:
        return _result("refused", error=errno.errorcode.get(code, str(code)), start=start)
    if code in UNREACHABLE:
        return _result("dropped", error=errno.errorcode.get(code, str(code)), start=start)
    return _result("error", error=f"{type(exc).__name__}: {exc}", start=start)


def _http_get(sock: socket.socket, path: str, host: str) -> str:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "closed before the response")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise ValueError(f"HTTP {status.decode()} for {path}")
    return body[:length].decode()


def _bind(sock: socket.socket, source_port: int | None) -> None:
    if source_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.type == socket.SOCK_STREAM:
            # close with RST: no TIME_WAIT, so the next request can reuse the same tuple
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.bind(("0.0.0.0", source_port))


def tcp_request(ip: str, port: int, timeout: float, source_port: int | None = None) -> dict:
    start = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    try:
        _bind(sock, source_port)
        sock.connect((ip, port))
        # Two requests on one connection: the same flow, so the same backend and source.
        hostname = _http_get(sock, "/hostname", ip)
        clientip = _http_get(sock, "/clientip", ip)
        return _result("reachable", hostname, clientip, start=start)
    except (OSError, ValueError) as exc:
        return _failure(exc, start)
    finally:
        sock.close()


def http_get(ip: str, port: int, timeout: float, path: str) -> dict:
    """One GET; any HTTP answer is `reachable`, with its status and body."""
    start = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    try:
        sock.connect((ip, port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        result = _result("reachable", start=start)
        result["status"] = int(head.split(b" ", 2)[1])
        result["body"] = body.decode(errors="replace")
        return result
    except (OSError, ValueError, IndexError) as exc:
        return _failure(exc, start)
    finally:
        sock.close()


def udp_request(ip: str, port: int, timeout: float, source_port: int | None = None) -> dict:
    start = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        _bind(sock, source_port)
        sock.connect((ip, port))  # connected: an ICMP port unreachable surfaces as ECONNREFUSED
        answers = []
        for req in (b"hostname", b"clientip"):
            sock.send(req)
            answers.append(sock.recv(65535).decode())
        return _result("reachable", answers[0], answers[1], start=start)
    except OSError as exc:
        return _failure(exc, start)
    finally:
        sock.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--to", required=True, help="destination IPv4 address")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--protocol", choices=["TCP", "UDP"], default="TCP")
    ap.add_argument("--requests", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds per request")
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between requests")
    ap.add_argument("--source-port", type=int, help="send every request from this port")
    ap.add_argument("--http-get", metavar="PATH", help="one GET of PATH per request; report status and body")
    args = ap.parse_args(argv)
    request = tcp_request if args.protocol == "TCP" else udp_request
    if args.http_get:
        request = lambda ip, port, timeout, _sp: http_get(ip, port, timeout, args.http_get)  # noqa: E731
    results = []
    for i in range(args.requests):
        if i and args.interval:
            time.sleep(args.interval)
        results.append(request(args.to, args.port, args.timeout, args.source_port))
    json.dump({"results": results}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
