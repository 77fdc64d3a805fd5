"""The emulated hosts' transport: TCP and UDP endpoints of the test servers and clients.

Servers behave like dataplane.lab.workload.netexec (and the health-check servers), clients like
dataplane.lab.workload.client, speaking dataplane.lab.workload.protocol over real segments: a TCP connection
is a handshake, data segments no larger than the path allows, ACKs and FINs in both directions,
so the datapath sees what a kernel would send. It is not a full TCP: no windows, no loss
recovery except a retransmission after an ICMP fragmentation-needed; what it sends and receives
is enough for every check (half-closed connections, delayed answers, large answers).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from ..lab.workload.protocol import answer, first_line, http_request, padded, parse_udp, udp_request
from .packets import ACK, FIN, ICMP, RST, SYN, TCP, UDP, Ip, Tcp, Udp, icmp, tcp_flags

EPHEMERAL = (32768, 60999)


@dataclass
class Socket:
    """A client's socket: TCP, or a connected UDP socket."""
    proto: int
    local: tuple          # (ip, port)
    remote: tuple         # (ip, port)
    received: bytes = b""         # TCP: the byte stream received
    datagrams: list = field(default_factory=list)   # UDP: payloads received
    error: str | None = None
    established: bool = False
    peer_fin: bool = False
    seq: int = 1000       # next sequence number to send
    ack: int = 0          # next sequence number expected
    bound: bool = False   # bound to a fixed port (the lab client's --source-port)


@dataclass
class Conn:
    """A server's side of an accepted TCP connection."""
    server: str           # the server's name, or "" for a health-check port
    local_ip: IPv4Address # the address the client reached
    port: int
    client: tuple         # (ip, port) as the server sees it
    buffer: bytes = b""
    sent: bytes = b""     # every data byte sent, from sequence number 7001 on
    peer_fin: bool = False
    fin_sent: bool = False
    seq: int = 7000
    ack: int = 0
    pending: int = 0      # answers scheduled but not sent yet
    busy_until: int = 0   # ns: answers leave in order, the next after the previous


def _result(outcome, hostname=None, clientip=None, error=None) -> dict:
    return {"outcome": outcome, "hostname": hostname, "clientip": clientip, "error": error, "ms": 0.0}


def parse_responses(data: bytes) -> tuple[list, bytes]:
    """Complete HTTP responses in a byte stream: ([(status, body)], the rest)."""
    out = []
    while b"\r\n\r\n" in data:
        head, rest = data.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        if len(rest) < length:
            break
        out.append((int(head.split(b" ", 2)[1]), rest[:length].decode(errors="replace")))
        data = rest[length:]
    return out, data


def _parse_requests(data: bytes) -> tuple[list, bytes]:
    """Complete HTTP requests: ([(path, headers)], the rest)."""
    out = []
    while b"\r\n\r\n" in data:
        head, data = data.split(b"\r\n\r\n", 1)
        lines = head.decode(errors="replace").split("\r\n")
        parts = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        out.append((parts[1] if len(parts) > 1 else "/", headers))
    return out, data


class Transport:
    """Mixed into SimNet: needs self.ns, self.now, self.rng, self.events, self.cookies (sockets
    opened so far), originate(), run()."""

    # -- receiving ------------------------------------------------------------------------------------

    def _local(self, sim, ip: Ip) -> None:
        if ip.proto == TCP:
            self._tcp_in(sim, ip)
        elif ip.proto == UDP:
            self._udp_in(sim, ip)
        elif ip.proto == ICMP:
            self._icmp_in(sim, ip)

    def _segment(self, sim, src, dst, sport, dport, flags: str, seq, ack, payload=b"") -> None:
        src, dst = IPv4Address(src), IPv4Address(dst)
        seg = Tcp(sport, dport, seq, ack, tcp_flags(flags), payload).build(src, dst)
        self.originate(sim, Ip(src, dst, TCP, seg, df=True))

    def _tcp_in(self, sim, ip: Ip) -> None:
        t = Tcp.parse(ip.payload)
        src, flags, payload = ip.src, t.flags, t.payload
        sock = sim.sockets.get((6, t.dport))
        if sock is not None and (src, t.sport) == (IPv4Address(sock.remote[0]), sock.remote[1]):
            self._client_segment(sim, sock, t, flags, payload)
            return
        key = (t.dport, src, t.sport)
        conn = sim.conns.get(key)
        if conn is not None:
            self._server_segment(sim, key, conn, t, flags, payload)
            return
        if flags & RST:
            return
        if key in sim.closed and not (flags & SYN and not flags & ACK):
            return                                  # a late segment of a closed connection
        if flags & SYN and not flags & ACK:
            sim.closed.discard(key)
            server = sim.listeners.get((6, t.dport))
            if server is None and t.dport not in sim.health:
                self._segment(sim, ip.dst, ip.src, t.dport, t.sport, "RA", 0, t.seq + 1)
                return
            conn = sim.conns[key] = Conn(server or "", ip.dst, t.dport, (str(src), t.sport), ack=t.seq + 1)
            self._segment(sim, ip.dst, ip.src, t.dport, t.sport, "SA", conn.seq, conn.ack)
            conn.seq += 1
            return
        # a segment of no connection here: reset, as a kernel answers it
        self._segment(sim, ip.dst, ip.src, t.dport, t.sport, "R", t.ack, 0)

    def _client_segment(self, sim, sock: Socket, t, flags: int, payload: bytes) -> None:
        if flags & RST:
            sock.error = "ECONNRESET" if sock.established else "ECONNREFUSED"
            return
        if flags & SYN and flags & ACK:
            if not sock.established:
                sock.established, sock.ack = True, t.seq + 1
            self._segment(sim, sock.local[0], sock.remote[0], sock.local[1], sock.remote[1], "A", sock.seq,
                          sock.ack)
            return
        sock.received += _take(sock, t, flags)
        if t.payload or flags & FIN:
            self._segment(sim, sock.local[0], sock.remote[0], sock.local[1], sock.remote[1], "A", sock.seq,
                          sock.ack)

    def _server_segment(self, sim, key, conn: Conn, t, flags: int, payload: bytes) -> None:
        host, peer = conn.local_ip, (IPv4Address(conn.client[0]), conn.client[1])
        if flags & RST:
            del sim.conns[key]
            return
        if flags & SYN and not flags & ACK:
            # a SYN on a connection that exists: a challenge ACK, as a kernel sends
            self._segment(sim, host, peer[0], conn.port, peer[1], "A", conn.seq, conn.ack)
            return
        conn.buffer += _take(conn, t, flags)
        if t.payload or flags & FIN:
            self._segment(sim, host, peer[0], conn.port, peer[1], "A", conn.seq, conn.ack)
        if conn.peer_fin and conn.fin_sent:
            self._forget(sim, key)
            return
        requests, conn.buffer = _parse_requests(conn.buffer)
        for path, headers in requests:
            status, body, close = self._http_answer(sim, conn, path, headers)
            delay = _seconds(headers.get("x-delay"))
            at = max(self.now, conn.busy_until) + int(delay * 1e9)
            conn.busy_until = at
            conn.pending += 1
            response = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\nContent-Type: text/plain\r\n"
                        f"Content-Length: {len(body.encode())}\r\n\r\n{body}").encode()
            self.schedule(at, lambda c=conn, r=response, cl=close: self._send_answer(sim, key, c, r, cl))
        if conn.peer_fin and not conn.pending and not conn.fin_sent:
            self._server_fin(sim, key, conn)

    def _http_answer(self, sim, conn: Conn, path: str, headers: dict):
        """(status, body, close after) as netexec or a health-check server answers."""
        close = headers.get("connection", "").lower() == "close"
        if not conn.server:
            svc_key, count = sim.health[conn.port]
            ns, _, svc = svc_key.partition("/")
            body = json.dumps({"service": {"namespace": ns, "name": svc}, "localEndpoints": count,
                               "serviceProxyHealthy": True})
            return (200 if count > 0 else 503), body, close
        text = answer(conn.server, path, conn.client)
        if text is None:
            return 404, "not found", close
        return 200, padded(text, headers.get("x-pad")), close

    def _send_answer(self, sim, key, conn: Conn, response: bytes, close: bool) -> None:
        if sim.conns.get(key) is not conn:
            return                                  # reset meanwhile
        conn.pending -= 1
        host, peer = conn.local_ip, (conn.client[0], conn.client[1])
        conn.sent += response
        for chunk in self._chunks(sim, peer[0], response):
            self._segment(sim, host, peer[0], conn.port, peer[1], "PA", conn.seq, conn.ack, chunk)
            conn.seq += len(chunk)
        if (close or conn.peer_fin) and not conn.pending and not conn.fin_sent:
            self._server_fin(sim, key, conn)

    def _server_fin(self, sim, key, conn: Conn) -> None:
        conn.fin_sent = True
        self._segment(sim, conn.local_ip, conn.client[0], conn.port, conn.client[1], "FA",
                      conn.seq, conn.ack)
        conn.seq += 1
        if conn.peer_fin:
            self._forget(sim, key)

    @staticmethod
    def _forget(sim, key) -> None:
        """Closed both ways: the connection ends; its tuple stays known (TIME_WAIT), so that late
        ACKs are absorbed, and a new SYN on it is a new connection."""
        sim.conns.pop(key, None)
        sim.closed.add(key)

    def _chunks(self, sim, dst, data: bytes) -> list:
        """Data cut into segments that fit the path: the route's MTU, or what path MTU discovery
        learned for `dst`, less 40 bytes of headers."""
        mss = self.path_mtu(sim, IPv4Address(dst)) - 40
        return [data[i:i + mss] for i in range(0, len(data), mss)] or [b""]

    def _udp_in(self, sim, ip: Ip) -> None:
        u = Udp.parse(ip.payload)
        sock = sim.sockets.get((17, u.dport))
        if sock is not None and (ip.src, u.sport) == (IPv4Address(sock.remote[0]), sock.remote[1]):
            sock.datagrams.append(u.payload)
            return
        name = sim.listeners.get((17, u.dport))
        if name is None:
            self.originate(sim, Ip(ip.dst, ip.src, ICMP, icmp(3, 3, 0, ip.build()[:28])))
            return
        request, options = parse_udp(u.payload)
        text = answer(name, request, (str(ip.src), u.sport))
        if text is None:
            return
        data = Udp(u.dport, u.sport, padded(text, options.get("pad")).encode()).build(ip.dst, ip.src)
        at = self.now + int(options.get("delay", 0.0) * 1e9)
        self.schedule(at, lambda: self.originate(sim, Ip(ip.dst, ip.src, UDP, data)))

    def _icmp_in(self, sim, ip: Ip) -> None:
        if len(ip.payload) < 8 + 28 or ip.payload[0] != 3:
            return
        code, nexthop_mtu = ip.payload[1], struct.unpack("!H", ip.payload[6:8])[0]
        quote = ip.payload[8:]
        proto = quote[9]
        src, dst = IPv4Address(quote[12:16]), IPv4Address(quote[16:20])
        sport, dport = struct.unpack("!HH", quote[20:24])
        if code == 4:                              # fragmentation needed: learn the path MTU
            mtu = nexthop_mtu or 576
            sim.pmtu[dst] = min(self.path_mtu(sim, dst), mtu)
            self._retransmit_after_pmtu(sim, proto, src, sport, dst, dport, quote)
            return
        sock = sim.sockets.get((proto, sport))
        if sock is None or (src, dst, dport) != (IPv4Address(sock.local[0]), IPv4Address(sock.remote[0]),
                                                 sock.remote[1]):
            return                            # the quoted packet is not this socket's
        sock.error = {3: "ECONNREFUSED", 0: "ENETUNREACH", 1: "EHOSTUNREACH"}.get(code, "EHOSTUNREACH")

    def _retransmit_after_pmtu(self, sim, proto, src, sport, dst, dport, quote) -> None:
        """A server's answer segment was too big for the path: send its data again, smaller (what
        a kernel does on fragmentation needed). Only answers are ever larger than a segment."""
        if proto != 6:
            return
        conn = sim.conns.get((sport, dst, dport))
        if conn is None or conn.client[0] != str(dst):
            return
        seq = struct.unpack("!I", quote[24:28])[0]
        offset = seq - 7001
        if not 0 <= offset < len(conn.sent):
            return
        seq_now = seq
        for chunk in self._chunks(sim, dst, conn.sent[offset:]):
            self._segment(sim, src, dst, sport, dport, "PA", seq_now, conn.ack, chunk)
            seq_now += len(chunk)

    @staticmethod
    def socket_holds(sim, proto: int, remote, rport: int, port: int) -> bool:
        """Does a socket of this namespace hold remote:rport <-> port: a connection with that
        peer, or a listener on the port (what the kernel's socket lookup finds)?"""
        sock = sim.sockets.get((proto, port))
        if sock is not None and (IPv4Address(sock.remote[0]), sock.remote[1]) == (IPv4Address(remote), rport):
            return True
        if proto == TCP and (port, IPv4Address(remote), rport) in sim.conns:
            return True
        return (proto, port) in sim.listeners or (proto == TCP and port in sim.health)

    # -- the lab client, emulated ------------------------------------------------------------------

    def _open(self, sim, proto: int, dst: IPv4Address, port: int, source_port):
        """A client socket bound as the lab client binds it, or an error result."""
        sport = source_port or self.rng.randint(*EPHEMERAL)
        while (proto, sport) in sim.sockets:
            sport = self.rng.randint(*EPHEMERAL)
        # the cgroup connect hook runs before the kernel routes the socket (as connect4 in
        # inet_stream_connect / udp connect): a translated socket is routed to its backend
        dst, port = self.socket_destination(sim, proto, dst, port)
        if dst is None:
            return None, _result("refused", error="ECONNREFUSED")
        route = sim.route(dst)
        if route is None and dst not in sim.local_ips():
            return None, _result("dropped", error="ENETUNREACH")
        src = dst if dst in sim.local_ips() else self.source_for(sim, route)
        sock = Socket(proto, (src, sport), (dst, port), bound=bool(source_port))
        sim.sockets[(proto, sport)] = sock
        return sock, None

    def socket_destination(self, sim, proto: int, dst, port: int):
        """Where a socket of `sim` really connects: a node's own processes are in the node's
        cgroup, where the dataplane's socket hooks may point them at a backend; (None, None) if
        the connect() is refused."""
        if sim.role != "node" or sim.datapath is None:
            return dst, port
        self.cookies += 1                          # the socket's cookie
        where = sim.datapath.sock_connect(proto, IPv4Address(dst), port, self.cookies, self.now)
        return (None, None) if where == "refused" else where

    def _connect(self, sim, sock: Socket, deadline: int) -> dict | None:
        """The TCP handshake; None once established, else the failed result."""
        self._segment(sim, sock.local[0], sock.remote[0], sock.local[1], sock.remote[1], "S", sock.seq, 0)
        sock.seq += 1
        self.run(until=deadline, done=lambda: sock.established or sock.error)
        if sock.established:
            return None
        if sock.error == "ECONNREFUSED":
            return _result("refused", error="ECONNREFUSED")
        return _result("dropped", error=sock.error or "timeout")

    def _send(self, sim, sock: Socket, data: bytes, fin: bool = False) -> None:
        chunks = self._chunks(sim, sock.remote[0], data) if data else []
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            self._segment(sim, sock.local[0], sock.remote[0], sock.local[1], sock.remote[1],
                          "FPA" if fin and last else "PA", sock.seq, sock.ack, chunk)
            sock.seq += len(chunk)
        if fin and not chunks:
            self._segment(sim, sock.local[0], sock.remote[0], sock.local[1], sock.remote[1], "FA", sock.seq,
                          sock.ack)
        if fin:
            sock.seq += 1

    def _responses(self, sim, sock: Socket, count: int, deadline: int):
        """Wait for `count` complete responses on the socket: (responses, error or None)."""
        self.run(until=deadline, done=lambda: sock.error or len(parse_responses(sock.received)[0]) >= count
                 or sock.peer_fin)
        responses, _ = parse_responses(sock.received)
        if len(responses) >= count:
            return responses[:count], None
        return responses, sock.error or ("ECONNRESET" if sock.peer_fin else "timeout")

    def request(self, client_ns: str, dst: IPv4Address, port: int, protocol: str, source_port=None,
                http_get=None, half_close: bool = False, delay: float = 0.0, size: int = 0,
                timeout: float = 2.0) -> dict:
        """One request as dataplane.lab.workload.client makes it; the same result format."""
        sim = self.ns[client_ns]
        self.now += 1_000_000     # 1 ms per request
        deadline = self.now + int(timeout * 1e9)
        proto = 6 if protocol == "TCP" else 17
        sock, failed = self._open(sim, proto, dst, port, source_port)
        if failed:
            return failed
        try:
            if proto == 17:
                return self._udp_request(sim, sock, delay, size, deadline)
            failed = self._connect(sim, sock, deadline)
            if failed:
                return failed
            host = str(dst)
            if http_get is not None:
                self._send(sim, sock, http_request(http_get, host, close=True))
                responses, error = self._responses(sim, sock, 1, deadline)
                self._send(sim, sock, b"", fin=True)
                self.run(until=deadline)
                if error:
                    return _result("dropped" if error == "timeout" else "refused", error=error)
                out = _result("reachable")
                out["status"], out["body"] = responses[0]
                return out
            reqs = [http_request("/hostname", host, delay, size), http_request("/clientip", host, 0.0, size)]
            if half_close:
                self._send(sim, sock, b"".join(reqs), fin=True)
                responses, error = self._responses(sim, sock, 2, deadline)
            else:
                responses, error = [], None
                for i, req in enumerate(reqs):
                    self._send(sim, sock, req)
                    responses, error = self._responses(sim, sock, i + 1, deadline)
                    if error:
                        break
            if not error and any(status != 200 for status, _ in responses):
                error = "HTTP error"
            self._finish(sim, sock, source_port, half_close, deadline)
            if error == "timeout":
                return _result("dropped", error="timeout")
            if error:
                return _result("refused" if error in ("ECONNREFUSED", "ECONNRESET") else "error", error=error)
            return _result("reachable", first_line(responses[0][1]), first_line(responses[1][1]))
        finally:
            del sim.sockets[(proto, sock.local[1])]

    def _finish(self, sim, sock: Socket, source_port, half_closed: bool, deadline: int) -> None:
        """Close as the lab client does: with a RST when it bound a fixed port (SO_LINGER 0, so
        that the next request can reuse the tuple at once), else with a FIN."""
        if source_port:
            self._segment(sim, sock.local[0], sock.remote[0], sock.local[1], sock.remote[1], "R", sock.seq, 0)
        elif not half_closed:
            self._send(sim, sock, b"", fin=True)
        self.run(until=deadline)

    def _udp_request(self, sim, sock: Socket, delay: float, size: int, deadline: int) -> dict:
        src, dst = IPv4Address(sock.local[0]), IPv4Address(sock.remote[0])
        for i, req in enumerate(("hostname", "clientip")):
            data = Udp(sock.local[1], sock.remote[1], udp_request(req, delay if i == 0 else 0.0, size)).build(src, dst)
            self.originate(sim, Ip(src, dst, UDP, data))
            self.run(until=deadline, done=lambda n=i + 1: sock.error or len(sock.datagrams) >= n)
            if sock.error:
                break
        if len(sock.datagrams) == 2:
            a, b = (first_line(d.decode(errors="replace")) for d in sock.datagrams)
            return _result("reachable", a, b)
        if sock.error == "ECONNREFUSED":
            return _result("refused", error="ECONNREFUSED")
        return _result("dropped", error=sock.error or "timeout")

    def hold(self, client_ns: str, dst: IPv4Address, port: int, source_port, timeout: float):
        """Open a TCP connection and keep it: (socket, None), or (None, the failed result)."""
        sim = self.ns[client_ns]
        sock, failed = self._open(sim, 6, dst, port, source_port)
        if failed:
            return None, failed
        failed = self._connect(sim, sock, self.now + int(timeout * 1e9))
        if failed:
            del sim.sockets[(6, sock.local[1])]
            return None, failed
        return (client_ns, sock), None

    def release(self, held, timeout: float) -> dict:
        """Use a held connection once (GET /hostname), then close it: the result."""
        client_ns, sock = held
        sim = self.ns[client_ns]
        deadline = self.now + int(timeout * 1e9)
        try:
            self._send(sim, sock, http_request("/hostname", str(sock.remote[0])))
            responses, error = self._responses(sim, sock, 1, deadline)
            self._finish(sim, sock, sock.local[1] if sock.bound else None, False, deadline)
            if error:
                return _result("dropped" if error == "timeout" else "refused", error=error)
            return _result("reachable", first_line(responses[0][1]))
        finally:
            sim.sockets.pop((6, sock.local[1]), None)


def _in_order(seq: int, expected: int, payload: bytes) -> bytes:
    """What of a segment's data is new and in order: a retransmission's old part is dropped, a
    segment beyond a gap is dropped whole (its sender sends it again)."""
    if not payload or seq > expected or seq + len(payload) <= expected:
        return b""
    return payload[expected - seq:]


def _take(end, t, flags: int) -> bytes:
    """One end (a client Socket or a server Conn) receives segment t: the new in-order data, its
    ack moved past it, and the peer's FIN noted once everything before it arrived."""
    data = _in_order(t.seq, end.ack, t.payload)
    end.ack += len(data)
    if flags & FIN and t.seq + len(t.payload) == end.ack:
        end.peer_fin = True
        end.ack += 1
    return data


def _seconds(value) -> float:
    try:
        return min(max(float(value), 0.0), 600.0) if value else 0.0
    except ValueError:
        return 0.0
