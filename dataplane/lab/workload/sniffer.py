"""Capture frames on an interface of the namespace it runs in (scapy, AF_PACKET), for checks and
tests that look at the wire: which addresses and ports a packet carried, whether its checksums
hold.

Prints "ready" once capturing, then, after --duration seconds (or SIGTERM), one JSON document:
{"frames": ["<hex>", ...]} with every IPv4 frame seen, both directions.

  python -m dataplane.lab.workload.sniffer --iface eth0 --duration 3
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iface", default="eth0")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds to capture")
    args = ap.parse_args(argv)
    from scapy.config import conf
    conf.verb = 0
    from scapy.layers.inet import IP
    from scapy.sendrecv import AsyncSniffer

    started = threading.Event()
    sniffer = AsyncSniffer(iface=args.iface, lfilter=lambda f: IP in f, store=True,
                           started_callback=started.set)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sniffer.start()
    started.wait(5)
    print("ready", flush=True)
    stop.wait(args.duration)
    frames = sniffer.stop() or []
    json.dump({"frames": [bytes(f).hex() for f in frames]}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
