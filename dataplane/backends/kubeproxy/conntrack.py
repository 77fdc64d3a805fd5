"""Stale UDP conntrack entries, cleaned as kube-proxy cleans them (pkg/proxy/conntrack/cleanup.go,
CleanStaleEntries, run after every sync in both the iptables and nftables modes).

UDP has no connection to close, so a conntrack entry NATing a client to an endpoint that left
keeps sending the client's datagrams into the void (kubernetes#48370), and an entry created
while the service had no endpoints (REJECTed, not NATed) keeps the service unreachable for that
tuple. kube-proxy's rule: a UDP entry whose original destination is a service IP and port (cluster,
external or load-balancer IP), or whose original destination port is a service's node port, must
be answered by a serving endpoint of that service; any other entry is deleted (a service with no
serving endpoint at all is skipped until it has one again). TCP entries are
left alone (a TCP flow to a gone endpoint fails and the client reconnects).
"""
from __future__ import annotations

import re
import subprocess

from ...lab import netns
from ...spec.table import ServiceTable
from ...spec.policy import udp_serving

_FIELD = re.compile(r"(\w+)=(\S+)")


def serving_ips(table: ServiceTable):
    """policy.udp_serving, with addresses as conntrack prints them."""
    by_ip, by_node_port = udp_serving(table)
    return ({(str(ip), port): {str(a) for a in ips} for (ip, port), ips in by_ip.items()},
            {port: {str(a) for a in ips} for port, ips in by_node_port.items()})


def parse_entries(text: str) -> list[dict]:
    """`conntrack -L -p udp` lines -> {orig_dst, orig_dport, reply_src}."""
    out = []
    for line in text.splitlines():
        fields = _FIELD.findall(line)
        src = [v for k, v in fields if k == "src"]
        dst = [v for k, v in fields if k == "dst"]
        dport = [v for k, v in fields if k == "dport"]
        if len(src) >= 2 and dst and dport:
            out.append({"orig_dst": dst[0], "orig_dport": int(dport[0]), "reply_src": src[1]})
    return out


def stale_filters(entries: list[dict], table: ServiceTable) -> list[list[str]]:
    """conntrack -D filters for the entries kube-proxy would delete (each filter once)."""
    by_ip, by_node_port = serving_ips(table)
    filters = []
    for e in entries:
        eps = by_ip.get((e["orig_dst"], e["orig_dport"]))
        if eps is not None and e["reply_src"] not in eps:
            filters.append(["--orig-dst", e["orig_dst"], "--orig-port-dst", str(e["orig_dport"]),
                            "--reply-src", e["reply_src"]])
        eps = by_node_port.get(e["orig_dport"])
        if eps is not None and e["reply_src"] not in eps:
            filters.append(["--orig-port-dst", str(e["orig_dport"]), "--reply-src", e["reply_src"]])
    unique = []
    for f in filters:
        if f not in unique:
            unique.append(f)
    return unique


def clean_stale_entries(ns: str, table: ServiceTable) -> int:
    """Delete the stale UDP entries of one node's namespace; returns how many filters matched."""
    listed = netns.run(ns, ["conntrack", "-L", "-p", "udp"], timeout=30)
    deleted = 0
    for f in stale_filters(parse_entries(listed.stdout), table):
        proc = netns.run(ns, ["conntrack", "-D", "-p", "udp", *f], timeout=30)
        # conntrack exits 1 when nothing matched (already gone): not an error here.
        if proc.returncode == 0:
            deleted += 1
        elif "0 flow entries" not in proc.stderr and proc.returncode != 1:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return deleted
