"""kube-proxy's health-check node port server, for one node: on every port of the state file,
GET answers 200 with the service's local endpoint count when there is at least one, else 503:

  {"service": {"namespace": "default", "name": "web"}, "localEndpoints": 1, "serviceProxyHealthy": true}

The state file ({"<port>": ["namespace/name", count], ...}) is re-read on every request, so an
update only rewrites it.

  python -m dataplane.backends.healthcheck_server --state /run/dataplane/labs/lab1.logs/node1.health --port 32000
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def answer(state_file: str, port: int) -> tuple[int, dict]:
    try:
        with open(state_file) as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = {}
    key, count = state.get(str(port), ["", 0])
    ns, _, name = key.partition("/")
    body = {"service": {"namespace": ns, "name": name}, "localEndpoints": count, "serviceProxyHealthy": True}
    return (200 if count > 0 else 503), body


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", required=True)
    ap.add_argument("--port", type=int, action="append", default=[])
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    def handler_for(port):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self):
                code, body = answer(args.state, port)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass
        return Handler

    ThreadingHTTPServer.allow_reuse_address = True
    for port in args.port:
        srv = ThreadingHTTPServer(("0.0.0.0", port), handler_for(port))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("ready", flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
