"""The lab's test client: asks a netexec server who it is and whom it saw, and says what happened.

Each request uses a fresh connection (TCP) or socket (UDP), so each is a new flow. Per request it
reports one outcome:
  reachable   a server answered; "hostname" and "clientip" say which one and what source it saw
  refused     TCP RST or ICMP port unreachable (connection refused), also when a rule of the
              node's own rejected a UDP send (EPERM, then the REJECT's ICMP error)
  dropped     no answer within the timeout, an ICMP network/host unreachable from a router, or
              a send a rule of the node's own dropped (EPERM)

Prints one JSON document: {"results": [{"outcome", "hostname", "clientip", "error", "ms"}...]}

Options shape the requests (dataplane.lab.workload.protocol): --delay asks the server to wait before its
first answer, --size pads requests and answers, --half-close (TCP) sends both requests and shuts
the sending side before reading the answers.

With --hold, one TCP connection is opened and held instead: the client prints {"held": true} (or a
failed result) and waits for a line on stdin; then it asks /hostname over the held connection,
prints that result and exits. A check uses it to show that a connection of a node's own process
survives what the check does.

  python -m dataplane.lab.workload.client --to 10.0.2.10 --port 8080 --protocol TCP --requests 3
  python -m dataplane.lab.workload.client --to 10.96.0.10 --port 53 --protocol UDP --source-port 40000
  python -m dataplane.lab.workload.client --to 10.96.0.10 --port 80 --half-close --delay 12
  python -m dataplane.lab.workload.client --to 10.0.1.3 --port 8080 --source-port 40000 --hold
"""
from __future__ import annotations

import argparse
import errno
import json
import socket
import struct
import sys
import time

from .protocol import first_line, http_request, udp_request as udp_datagram

REFUSED = {errno.ECONNREFUSED, errno.ECONNRESET}
UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}


def _result(outcome, hostname=None, clientip=None, error=None, start=0.0):
    return {"outcome": outcome, "hostname": hostname, "clientip": clientip, "error": error,
            "ms": round((time.monotonic() - start) * 1000, 2)}


def classify(exc: BaseException) -> tuple[str, str]:
    """(outcome, error) of a failed request: one classification for the client and the load
    generator."""
    if isinstance(exc, socket.timeout):
        return "dropped", "timeout"
    code = getattr(exc, "errno", None)
    if code in REFUSED:
        return "refused", errno.errorcode.get(code, str(code))
    if code in UNREACHABLE:
        return "dropped", errno.errorcode.get(code, str(code))
    return "error", f"{type(exc).__name__}: {exc}"


def _failure(exc: BaseException, start: float) -> dict:
    outcome, error = classify(exc)
    return _result(outcome, error=error, start=start)


def _read_response(sock: socket.socket, buf: bytes) -> tuple[bytes, str, bytes]:
    """One HTTP response from the connection: (status, body, what was read beyond it)."""
    data = buf
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
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
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "closed in the middle of the response")
        body += chunk
    status = head.split(b" ", 2)[1]
    return status, body[:length].decode(errors="replace"), body[length:]


def _http_answers(sock: socket.socket, paths: list[str], host: str, delay: float, size: int,
                  half_close: bool) -> list[str]:
    """Ask each path on one connection and return the answers' first lines. The first request
    carries the delay. Half-closed: every request is sent, then the sending side is shut."""
    requests = [http_request(p, host, delay if i == 0 else 0.0, size) for i, p in enumerate(paths)]
    if half_close:
        sock.sendall(b"".join(requests))
        sock.shutdown(socket.SHUT_WR)
    out, rest = [], b""
    for i, path in enumerate(paths):
        if not half_close:
            sock.sendall(requests[i])
        status, body, rest = _read_response(sock, rest)
        if status != b"200":
            raise ValueError(f"HTTP {status.decode()} for {path}")
        out.append(first_line(body))
    return out


def _tcp_socket(timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    return sock


def _bind(sock: socket.socket, source_port: int | None) -> None:
    if source_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.type == socket.SOCK_STREAM:
            # close with RST: no TIME_WAIT, so the next request can reuse the same tuple
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.bind(("0.0.0.0", source_port))


def tcp_request(ip: str, port: int, timeout: float, source_port: int | None = None, delay: float = 0.0,
                size: int = 0, half_close: bool = False) -> dict:
    start = time.monotonic()
    sock = _tcp_socket(timeout)
    try:
        _bind(sock, source_port)
        sock.connect((ip, port))
        # Two requests on one connection: the same flow, so the same backend and source.
        hostname, clientip = _http_answers(sock, ["/hostname", "/clientip"], ip, delay, size, half_close)
        return _result("reachable", hostname, clientip, start=start)
    except (OSError, ValueError) as exc:
        return _failure(exc, start)
    finally:
        sock.close()


def http_get(ip: str, port: int, timeout: float, path: str) -> dict:
    """One GET; any HTTP answer is `reachable`, with its status and body."""
    start = time.monotonic()
    sock = _tcp_socket(timeout)
    try:
        sock.connect((ip, port))
        sock.sendall(http_request(path, ip, close=True))
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


def udp_request(ip: str, port: int, timeout: float, source_port: int | None = None, delay: float = 0.0,
                size: int = 0) -> dict:
    start = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        _bind(sock, source_port)
        sock.connect((ip, port))  # connected: an ICMP port unreachable surfaces as ECONNREFUSED
        answers = []
        for i, req in enumerate(("hostname", "clientip")):
            try:
                sock.send(udp_datagram(req, delay if i == 0 else 0.0, size))
            except PermissionError:
                return _locally_stopped(sock, timeout, start)
            answers.append(first_line(sock.recv(65535).decode(errors="replace")))
        return _result("reachable", answers[0], answers[1], start=start)
    except OSError as exc:
        return _failure(exc, start)
    finally:
        sock.close()


LOCAL_ICMP_WAIT = 0.5     # seconds for a local REJECT's ICMP error to reach the socket


def _locally_stopped(sock: socket.socket, timeout: float, start: float) -> dict:
    """A send the node's own firewall stopped (EPERM: a rule in its OUTPUT path dropped the
    datagram, as kube-proxy's REJECT of a service without endpoints does for the node's own
    processes). A REJECT also sends the socket an ICMP port unreachable, which the next receive
    reports as ECONNREFUSED: refused. Without one, dropped."""
    sock.settimeout(min(timeout, LOCAL_ICMP_WAIT))
    try:
        sock.recv(65535)
    except ConnectionRefusedError:
        return _result("refused", error="EPERM, then ECONNREFUSED (rejected by a local rule)", start=start)
    except OSError:
        pass
    return _result("dropped", error="EPERM (dropped by a local rule)", start=start)


def hold(ip: str, port: int, timeout: float, source_port: int | None) -> int:
    """Open one TCP connection, say so, wait for a line on stdin, then use it once."""
    start = time.monotonic()
    sock = _tcp_socket(timeout)
    try:
        _bind(sock, source_port)
        sock.connect((ip, port))
    except OSError as exc:
        json.dump(_failure(exc, start), sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(json.dumps({"held": True}), flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    try:
        (hostname,) = _http_answers(sock, ["/hostname"], ip, 0.0, 0, False)
        result = _result("reachable", hostname, start=start)
    except (OSError, ValueError) as exc:
        result = _failure(exc, start)
    finally:
        sock.close()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


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
    ap.add_argument("--delay", type=float, default=0.0, help="seconds the server waits before its first answer")
    ap.add_argument("--size", type=int, default=0, help="pad every request and answer to this many bytes")
    ap.add_argument("--half-close", action="store_true",
                    help="TCP: send both requests, shut the sending side, then read the answers")
    ap.add_argument("--hold", action="store_true",
                    help="hold one TCP connection open until a line arrives on stdin, then use it once")
    args = ap.parse_args(argv)
    if args.hold:
        return hold(args.to, args.port, args.timeout, args.source_port)
    if args.http_get:
        def request(ip, port, timeout, _sp):
            return http_get(ip, port, timeout, args.http_get)
    elif args.protocol == "TCP":
        def request(ip, port, timeout, sp):
            return tcp_request(ip, port, timeout, sp, args.delay, args.size, args.half_close)
    else:
        def request(ip, port, timeout, sp):
            return udp_request(ip, port, timeout, sp, args.delay, args.size)
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
