"""A test server for lab pods, like Kubernetes e2e's `agnhost netexec`.

HTTP on every --tcp port, UDP on every --udp port (one request per datagram, answered from the
same port):
  hostname        the server's name (the pod, node or host it runs in)
  clientip        the client address and port the server saw, "ip:port"
  healthz         "ok"
  echo TEXT       TEXT
with the options of dataplane.lab.workload.protocol: a delay before answering, and padding (answers are
padded as their requests were).

Prints "ready" on stdout once every socket is bound, then nothing more there.

  python -m dataplane.lab.workload.netexec --name web-1 --tcp 8080 --udp 8080
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .protocol import answer, padded, parse_udp


def http_server(name: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"   # keep-alive: several requests on one connection
        disable_nagle_algorithm = True  # headers and body leave at once, no delayed-ACK stall

        def do_GET(self):
            body = answer(name, self.path, self.client_address)
            code = 200 if body is not None else 404
            delay = self.headers.get("X-Delay")
            if delay:
                try:
                    time.sleep(min(max(float(delay), 0.0), 600.0))
                except ValueError:
                    pass
            data = (padded(body, self.headers.get("X-Pad")) if body is not None else "not found").encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # quiet: one line per request would flood the log
            pass

    class Server(ThreadingHTTPServer):
        allow_reuse_address = True
        daemon_threads = True
        # as large a backlog as the namespace allows (the kernel caps SOMAXCONN at its
        # net.core.somaxconn), as agnhost's Go listener asks; Python's default of 5 overflows
        # under a burst of new connections: SYNs dropped, retransmitted a second later
        request_queue_size = socket.SOMAXCONN

    return Server(("0.0.0.0", port), Handler)


def udp_server(name: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    return sock


def serve_udp(name: str, sock: socket.socket) -> None:
    while True:
        data, client = sock.recvfrom(65535)
        request, options = parse_udp(data)
        reply = answer(name, request, client)
        if reply is None:
            continue
        if options.get("delay"):
            # answered later, from a thread of its own: the socket keeps serving others meanwhile
            threading.Timer(options["delay"], sock.sendto,
                            (padded(reply, options.get("pad")).encode(), client)).start()
        else:
            sock.sendto(padded(reply, options.get("pad")).encode(), client)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="the name /hostname answers")
    ap.add_argument("--tcp", type=int, action="append", default=[], help="HTTP port (repeatable)")
    ap.add_argument("--udp", type=int, action="append", default=[], help="UDP port (repeatable)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    servers = [http_server(args.name, p) for p in args.tcp]
    sockets = [udp_server(args.name, p) for p in args.udp]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    for s in sockets:
        threading.Thread(target=serve_udp, args=(args.name, s), daemon=True).start()
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
