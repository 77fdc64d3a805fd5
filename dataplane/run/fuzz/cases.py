"""What the packet fuzzer generates (hypothesis strategies): one node's service table and
masquerade settings, then a sequence of events: frames at the four TC hooks, answers to what
passed, ICMP errors quoting it, clock jumps, garbage collection, evictions and service updates.

Everything drawn is plain data (JSON-able), so a failing case is written to a file and replayed
as it was. Addresses come from a small universe (a few pods, nodes, cluster IPs, load-balancer and
external IPs, outside hosts, ports) so that flows meet: replies find their flows, ports collide,
affinities are reused. Frames are built with struct (emulator/packets.py) and then, now and
then, broken: IPv4 options, fragments, truncation, bad checksums, random bytes, other EtherTypes.
"""
from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network

from hypothesis import strategies as st

from ...contract.render import NodeConfig
from ...emulator.packets import ICMP, TCP, UDP, Ip, Tcp, Udp, ether, icmp
from ...spec.table import Endpoint, EndpointPort, Service, ServicePort, ServiceTable

NODE, NODE_IP = "node1", IPv4Address("10.240.0.1")
CLUSTER = IPv4Network("10.0.0.0/16")
LOCAL_PODS = ["10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.1.5"]          # on node1, the node under test
REMOTE_PODS = ["10.0.2.2", "10.0.2.3", "10.0.2.4"]                     # on node2
OUTSIDE = ["10.128.1.1", "10.128.1.2", "10.240.0.2", "8.8.8.8"]        # outside hosts, node2, beyond
VIPS = ["10.96.0.10", "10.96.0.11", "10.96.0.12", "10.96.0.13"]
LB_IPS = ["10.128.2.10", "10.128.2.11", "10.128.2.12", "10.128.2.13"]
EXTERNAL_IPS = ["10.128.3.10", "10.128.3.11", "10.128.3.12", "10.128.3.13"]
SOURCE_RANGES = ["10.128.1.0/31", "10.128.1.2/32", "10.0.0.0/16", "0.0.0.0/0"]
SERVICE_PORTS = [(80, "TCP"), (53, "UDP"), (53, "TCP"), (8080, "TCP")]
TARGET_PORTS = [8080, 5353, 80, 9000]
NODE_PORTS = [30000 + i for i in range(8)]   # two per service: the API server never gives one port twice
CLIENT_PORTS = [40000, 40001, 33000, 61000, 61001, 61002, 65535, 1024]
SNAT_RANGES = [(61000, 65535), (61000, 61003), (61000, 61000)]
TIMEOUTS = {"syn": 6, "tcp": 40, "close_wait": 20, "close": 3, "udp": 8}   # seconds: jumps cross them
POD_MAC, NODE_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:01"
HOOKS = ("from_pod", "to_pod", "from_netdev", "to_netdev")
EVERY_ADDRESS = LOCAL_PODS + REMOTE_PODS + OUTSIDE + VIPS + LB_IPS + EXTERNAL_IPS + [str(NODE_IP)]


# -- the service table -----------------------------------------------------------------------------

ENDPOINT_STATES = ["ready", "ready", "ready", "terminating", "unready", "terminating-unserving"]


def endpoint(rng, ports: list) -> dict:
    """A pod behind a service: where it runs, its state, which of the service's ports it serves."""
    return {"addr": rng.choice(LOCAL_PODS + REMOTE_PODS), "state": rng.choice(ENDPOINT_STATES),
            "ports": [p for p in ports if rng.random() < 0.9]}       # now and then a port it lacks


def service(rng, index: int) -> dict:
    kind = rng.choice(["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer"])
    ports = []
    for n, i in enumerate(rng.sample(range(len(SERVICE_PORTS)), rng.randint(1, 2))):
        port, proto = SERVICE_PORTS[i]
        ports.append({"name": f"p{n}", "port": port, "protocol": proto, "target": rng.choice(TARGET_PORTS),
                      "nodePort": NODE_PORTS[index * 2 + n] if kind != "ClusterIP" else None})
    eps = {}
    for _ in range(rng.randint(0, 4)):
        e = endpoint(rng, [p["name"] for p in ports])
        eps.setdefault(e["addr"], e)
    return {
        "name": f"s{index}", "type": kind, "clusterIP": VIPS[index], "ports": ports, "endpoints": list(eps.values()),
        "affinity": rng.choice([None, None, rng.randint(1, 30)]),
        "itp": rng.choice(["Cluster", "Local"]),
        "etp": rng.choice(["Cluster", "Local"]) if kind != "ClusterIP" else "Cluster",
        "externalIPs": [EXTERNAL_IPS[index]] if rng.random() < 0.25 else [],
        "lbIP": LB_IPS[index] if kind == "LoadBalancer" else None,
        "ranges": rng.sample(SOURCE_RANGES, rng.randint(0, 2)) if kind == "LoadBalancer" else [],
    }


def services(rng) -> list:
    return [service(rng, i) for i in range(rng.randint(1, 4))]


def build_table(services: list) -> ServiceTable:
    """The ServiceTable a drawn description stands for (what a loader would have made of it)."""
    table = ServiceTable()
    for s in services:
        sports = tuple(ServicePort(p["name"], p["port"], p["protocol"], p["target"], p["nodePort"]) for p in s["ports"])
        eps = []
        for e in s["endpoints"]:
            node = "node1" if e["addr"] in LOCAL_PODS else "node2"
            eports = tuple(EndpointPort(p["name"], p["target"], p["protocol"]) for p in s["ports"] if p["name"] in e["ports"])
            state = e["state"]
            eps.append(Endpoint(IPv4Address(e["addr"]), eports, node, None, ready=state == "ready",
                                serving=state in ("ready", "terminating"), terminating=state.startswith("terminating")))
        table.add(Service(
            "default", s["name"], s["type"], IPv4Address(s["clusterIP"]), sports,
            session_affinity="ClientIP" if s["affinity"] else "None", affinity_timeout=s["affinity"] or 10800,
            internal_traffic_policy=s["itp"], external_traffic_policy=s["etp"],
            external_ips=tuple(IPv4Address(a) for a in s["externalIPs"]),
            load_balancer_ips=(IPv4Address(s["lbIP"]),) if s["lbIP"] else (),
            load_balancer_source_ranges=tuple(IPv4Network(r) for r in s["ranges"]),
            endpoints=tuple(eps)))
    return table


def table_change(rng, services: list) -> list:
    """An update: one service's endpoint changes state, leaves or joins, its affinity toggles,
    the service goes, or a new one comes (drawn from the seeded `rng`, as the case's frames are)."""
    out = [dict(s, endpoints=[dict(e) for e in s["endpoints"]]) for s in services]
    op = rng.choice(["state", "leave", "join", "affinity", "delete", "add"])
    if op == "add" or not out:
        free = [i for i in range(len(VIPS)) if f"s{i}" not in {s["name"] for s in out}]
        if free:
            out.append(service(rng, free[0]))
        return out
    s = rng.choice(out)
    if op == "delete":
        out.remove(s)
    elif op == "affinity":
        s["affinity"] = None if s["affinity"] else rng.randint(1, 30)
    elif op == "join":
        e = endpoint(rng, [p["name"] for p in s["ports"]])
        if e["addr"] not in {x["addr"] for x in s["endpoints"]}:
            s["endpoints"].append(e)
    elif s["endpoints"]:
        e = rng.choice(s["endpoints"])
        if op == "leave":
            s["endpoints"].remove(e)
        else:
            e["state"] = rng.choice(ENDPOINT_STATES)
    return out


def config(rng) -> dict:
    return {"masquerade": rng.random() < 0.7, "masqLinkLocal": rng.random() < 0.5, "snatRange": rng.choice(SNAT_RANGES)}


def build_config(c: dict) -> NodeConfig:
    return NodeConfig(NODE_IP, CLUSTER, masquerade=c["masquerade"], masq_link_local=c["masqLinkLocal"],
                      snat_range=tuple(c["snatRange"]), non_masquerade=(CLUSTER,))


# -- frames ----------------------------------------------------------------------------------------

# Which addresses a frame at each hook comes from and goes to, mostly: what that hook sees in a
# cluster (any address now and then).
SOURCES = {"from_pod": LOCAL_PODS, "to_pod": LOCAL_PODS + REMOTE_PODS + OUTSIDE + [str(NODE_IP)],
           "from_netdev": OUTSIDE + REMOTE_PODS, "to_netdev": LOCAL_PODS + [str(NODE_IP)]}
DESTINATIONS = {"from_pod": VIPS + LOCAL_PODS + REMOTE_PODS + OUTSIDE + LB_IPS + EXTERNAL_IPS + [str(NODE_IP)],
                "to_pod": LOCAL_PODS,
                "from_netdev": [str(NODE_IP)] + LB_IPS + EXTERNAL_IPS + VIPS + LOCAL_PODS,
                "to_netdev": OUTSIDE + REMOTE_PODS + VIPS}
TCP_FLAGS = [0x02, 0x12, 0x10, 0x18, 0x11, 0x19, 0x04, 0x14, 0x01, 0x00, 0x03, 0x06, 0x3F, 0x07]


def _address(rng, usual: list) -> str:
    return rng.choice(usual) if rng.random() < 0.75 else rng.choice(EVERY_ADDRESS)


def _port(rng) -> int:
    return rng.choice(CLIENT_PORTS + TARGET_PORTS + NODE_PORTS + [80, 53]) if rng.random() < 0.5 else rng.randint(1, 65535)


def new_frame(rng, hook: str) -> dict:
    """A TCP or UDP packet (or, now and then, ICMP echo or another protocol) at `hook`."""
    return {"src": _address(rng, SOURCES[hook]), "dst": _address(rng, DESTINATIONS[hook]),
            "proto": rng.choice([TCP, TCP, UDP, UDP, ICMP, 47]), "sport": _port(rng),
            "dport": rng.choice([80, 53, 8080] + NODE_PORTS) if rng.random() < 0.5 else _port(rng),
            "flags": rng.choice(TCP_FLAGS), "payload": rng.randbytes(rng.randint(0, 24)), "ident": rng.randint(0, 3)}


def service_frame(rng, services: list):
    """A packet to one of the table's frontends, from a client where such clients are: (hook,
    description), or None without services. Mostly a connection's first packet."""
    if not services:
        return None
    svc = rng.choice(services)
    port = rng.choice(svc["ports"])
    frontends = [("cluster", svc["clusterIP"], port["port"])]
    if port["nodePort"]:
        frontends.append(("node", str(NODE_IP), port["nodePort"]))
    frontends += [("external", a, port["port"]) for a in svc["externalIPs"] + ([svc["lbIP"]] if svc["lbIP"] else [])]
    where, addr, dport = rng.choice(frontends)
    if rng.random() < 0.6:
        hook, src = "from_pod", rng.choice(LOCAL_PODS)
    else:
        hook, src = "from_netdev", rng.choice(OUTSIDE + REMOTE_PODS)
    proto = TCP if port["protocol"] == "TCP" else UDP
    if rng.random() < 0.1:
        proto = UDP if proto == TCP else TCP            # the other protocol on the same port
    flags = 0x02 if rng.random() < 0.8 else rng.choice(TCP_FLAGS)
    return hook, {"src": src, "dst": addr, "proto": proto, "sport": rng.choice(CLIENT_PORTS) if rng.random() < 0.7
                  else rng.randint(1024, 65535), "dport": dport, "flags": flags,
                  "payload": rng.randbytes(rng.randint(0, 16)), "ident": rng.randint(0, 3)}


def fragments(frame: bytes) -> list[bytes]:
    """A frame without options cut in two IPv4 fragments (the first carries 24 bytes: a TCP or
    UDP header and more; the second the rest at offset 24), or the frame alone if too short."""
    ip = Ip.parse(frame[14:])
    if ip is None or len(ip.payload) <= 32 or frame[14] != 0x45:
        return [frame]
    ip.ident = ip.ident or 0x4242
    head, rest = ip.payload[:24], ip.payload[24:]
    first = Ip(ip.src, ip.dst, ip.proto, head, ident=ip.ident, mf=True).build()
    later = Ip(ip.src, ip.dst, ip.proto, rest, ident=ip.ident, offset=24).build()
    return [frame[:14] + first, frame[:14] + later]


def _l4(f: dict, src: IPv4Address, dst: IPv4Address) -> bytes:
    if f["proto"] == TCP:
        return Tcp(f["sport"], f["dport"], 1000, 2000 if f["flags"] & 0x10 else 0, f["flags"], f["payload"]).build(src, dst)
    if f["proto"] == UDP:
        return Udp(f["sport"], f["dport"], f["payload"]).build(src, dst)
    if f["proto"] == ICMP:
        return icmp(8, 0, 0x1234, f["payload"])
    return f["payload"]


def build_frame(f: dict, hook: str) -> bytes:
    """The Ethernet frame of a drawn packet description (before any damage)."""
    src, dst = IPv4Address(f["src"]), IPv4Address(f["dst"])
    if "quote" in f:
        payload = icmp(3, f["code"], 0 if f["code"] != 4 else 1400, bytes.fromhex(f["quote"]))
        proto = ICMP
    else:
        payload, proto = _l4(f, src, dst), f["proto"]
    ip = Ip(src, dst, proto, payload, ident=f.get("ident", 0)).build()
    macs = (POD_MAC, NODE_MAC) if hook in ("from_pod", "from_netdev") else (NODE_MAC, POD_MAC)
    return ether(macs[0], macs[1], ip)


def parse_flow(frame: bytes):
    """(src, dst, proto, sport, dport, ip bytes) of a frame without options that passed, else None."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[14] != 0x45:
        return None
    ip = frame[14:]
    proto = ip[9]
    if proto not in (TCP, UDP) or len(ip) < 28:
        return None
    sport, dport = struct.unpack("!HH", ip[20:24])
    return str(IPv4Address(ip[12:16])), str(IPv4Address(ip[16:20])), proto, sport, dport, ip


def forward(rng, sent: list):
    """A frame that passed an ingress hook, at the egress hook its way leads to next (to a pod
    of this node: to_pod; elsewhere: the uplink's to_netdev): (hook, frame), or None."""
    onward = [(h, f) for h, f, verdict in sent if verdict == "pass" and h in ("from_pod", "from_netdev")]
    if not onward:
        return None
    _, frame = rng.choice(onward)
    flow = parse_flow(frame)
    if flow is None or flow[1] == str(NODE_IP):
        return None                     # for the node itself: delivered, no further hook
    return ("to_pod" if flow[1] in LOCAL_PODS else "to_netdev"), frame


REPLY_HOOKS = {"from_pod": ["from_netdev", "from_pod", "to_pod"], "to_pod": ["from_pod"],
               "from_netdev": ["from_pod", "to_netdev"], "to_netdev": ["from_netdev"]}


def answer(rng, sent: list):
    """A packet answering (or an ICMP error about) one that passed earlier, at a hook where the
    answer can meet it: (hook, description), or None."""
    hook, frame, _ = rng.choice(sent)
    flow = parse_flow(frame)
    if flow is None:
        return None
    src, dst, proto, sport, dport, ip = flow
    back = rng.choice(REPLY_HOOKS[hook] + list(HOOKS))
    if rng.random() < 0.2:
        # an ICMP error about it, from its destination (or a router on the way) to its source
        origin = rng.choice([dst, "10.240.0.254", str(NODE_IP)])
        return back, {"src": origin, "dst": src, "proto": ICMP, "code": rng.choice([3, 4, 1]),
                      "quote": ip[:28].hex(), "ident": 0}
    return back, {"src": dst, "dst": src, "proto": proto, "sport": dport, "dport": sport,
                  "flags": rng.choice([0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x02]),
                  "payload": rng.randbytes(rng.randint(0, 8)), "ident": 0}


DAMAGE = ["options", "first-fragment", "later-fragment", "truncate", "flip", "l4-checksum", "ip-checksum",
          "ethertype", "ihl", "total-length"]


def damage(rng) -> dict | None:
    """Nothing, mostly; else one way a frame can be odd or broken."""
    if rng.random() < 5 / 6:
        return None
    return {"kind": rng.choice(DAMAGE), "at": rng.randint(0, 80), "value": rng.randint(0, 255)}


def apply_damage(frame: bytes, d: dict | None) -> bytes:
    if d is None:
        return frame
    f = bytearray(frame)
    kind, at, value = d["kind"], d["at"], d["value"]
    ip = 14
    if kind == "options" and f[ip] == 0x45:
        words = 1 + value % 3
        opts = bytes([1] * (4 * words - 1) + [0])
        f[ip] = 0x45 + words
        f[ip + 20:ip + 20] = opts
        struct.pack_into("!H", f, ip + 2, struct.unpack_from("!H", f, ip + 2)[0] + 4 * words)
        _ip_checksum(f)
    elif kind in ("first-fragment", "later-fragment"):
        frag = 0x2000 if kind == "first-fragment" else (value % 3 == 0) * 0x2000 | (1 + value % 8)
        struct.pack_into("!H", f, ip + 6, frag)
        _ip_checksum(f)
    elif kind == "truncate":
        del f[max(14, len(f) - 1 - at % max(1, len(f) - 14)):]
    elif kind == "flip" and len(f) > 14:
        f[14 + at % (len(f) - 14)] ^= 1 << (value % 8)
    elif kind == "l4-checksum" and len(f) >= 14 + 20 + 8 and f[ip + 9] in (TCP, UDP, ICMP):
        off = {TCP: 16, UDP: 6, ICMP: 2}[f[ip + 9]]
        at = ip + (f[ip] & 0x0F) * 4 + off
        if at + 2 <= len(f):
            f[at:at + 2] = struct.pack("!H", value * 257)
    elif kind == "ip-checksum":
        f[ip + 10:ip + 12] = struct.pack("!H", value * 257)
    elif kind == "ethertype":
        f[12:14] = struct.pack("!H", [0x86DD, 0x0806, 0x8100][value % 3])
    elif kind == "ihl":
        f[ip] = (f[ip] & 0xF0) | (value % 16)
    elif kind == "total-length":
        struct.pack_into("!H", f, ip + 2, value * 8)
    return bytes(f)


def _ip_checksum(f: bytearray) -> None:
    from ...emulator.packets import checksum
    ihl = (f[14] & 0x0F) * 4
    f[24:26] = b"\0\0"
    f[24:26] = struct.pack("!H", checksum(bytes(f[14:14 + ihl])))


# -- events ----------------------------------------------------------------------------------------

EVENT_KINDS = (["service"] * 4 + ["frame"] * 2 + ["forward"] * 3 + ["answer"] * 3
               + ["advance", "collect", "evict", "update"])


# A case is drawn by hypothesis as a seed (its table, settings and hash seed) and a list of
# events, each one integer: its kind (the low 4 bits) and the seed of its frame or numbers (the
# rest). Hypothesis shrinks them (fewer events, simpler kinds); packets.minimize then shrinks the
# concrete case it recorded. Drawing every field through hypothesis would cost ten times more
# than running the frames.
CASE_SEED = st.integers(0, 2**32 - 1)
EVENTS = st.lists(st.integers(0, 2**36 - 1), min_size=30, max_size=200)
JUMPS = [1, 2, 3, 5, 7, 9, 21, 41, 3600]


def event(value: int) -> tuple:
    """(kind, seed) of a drawn event."""
    return EVENT_KINDS[value & 15], value >> 4
