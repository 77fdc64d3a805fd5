"""IPv4, TCP, UDP and ICMP as the emulator builds and reads them: plain bytes with struct, full
checksums. (scapy would do, at a hundred times the cost per packet; the emulator moves tens of
thousands of frames per scenario.)"""
from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from ..oracle.datapath import csum

TCP, UDP, ICMP = 6, 17, 1
ETH_P_IP = 0x0800
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
FLAGS = {"F": FIN, "S": SYN, "R": RST, "P": PSH, "A": ACK}


checksum = csum     # the Internet checksum, as the oracle computes it


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def ether(src: str, dst: str, ip: bytes) -> bytes:
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ETH_P_IP) + ip


@dataclass
class Ip:
    """An IPv4 packet without options; `offset` in bytes."""
    src: IPv4Address
    dst: IPv4Address
    proto: int
    payload: bytes
    ttl: int = 64
    ident: int = 0
    df: bool = False
    mf: bool = False
    offset: int = 0

    @classmethod
    def parse(cls, data: bytes) -> "Ip | None":
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        ihl = (data[0] & 0x0F) * 4
        total, ident, frag = struct.unpack("!HHH", data[2:8])
        return cls(IPv4Address(data[12:16]), IPv4Address(data[16:20]), data[9], data[ihl:total], data[8], ident,
                   bool(frag & 0x4000), bool(frag & 0x2000), (frag & 0x1FFF) * 8)

    def header(self) -> bytes:
        frag = (0x4000 if self.df else 0) | (0x2000 if self.mf else 0) | (self.offset // 8)
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(self.payload), self.ident, frag, self.ttl,
                           self.proto, 0, self.src.packed, self.dst.packed)
        return head[:10] + struct.pack("!H", checksum(head)) + head[12:]

    def build(self) -> bytes:
        return self.header() + self.payload

    def __len__(self) -> int:
        return 20 + len(self.payload)

    @property
    def fragment(self) -> bool:
        return self.mf or self.offset > 0

    def fragments(self, mtu: int) -> list["Ip"]:
        """This packet cut to fit `mtu` (each piece's data a multiple of 8 bytes, but the last)."""
        size = (mtu - 20) // 8 * 8
        out = []
        for at in range(0, len(self.payload), size):
            chunk = self.payload[at:at + size]
            last = at + size >= len(self.payload)
            out.append(replace(self, payload=chunk, offset=self.offset + at, mf=self.mf or not last))
        return out


def _pseudo(src: IPv4Address, dst: IPv4Address, proto: int, length: int) -> bytes:
    return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)


@dataclass
class Tcp:
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> "Tcp":
        sport, dport, seq, ack, off, flags = struct.unpack("!HHIIBB", data[:14])
        return cls(sport, dport, seq, ack, flags, data[(off >> 4) * 4:])

    def build(self, src: IPv4Address, dst: IPv4Address) -> bytes:
        seg = struct.pack("!HHIIBBHHH", self.sport, self.dport, self.seq & 0xFFFFFFFF, self.ack & 0xFFFFFFFF,
                          5 << 4, self.flags, 65535, 0, 0) + self.payload
        c = checksum(_pseudo(src, dst, TCP, len(seg)) + seg)
        return seg[:16] + struct.pack("!H", c) + seg[18:]


@dataclass
class Udp:
    sport: int
    dport: int
    payload: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> "Udp":
        sport, dport, length = struct.unpack("!HHH", data[:6])
        return cls(sport, dport, data[8:length])

    def build(self, src: IPv4Address, dst: IPv4Address) -> bytes:
        dgram = struct.pack("!HHHH", self.sport, self.dport, 8 + len(self.payload), 0) + self.payload
        c = checksum(_pseudo(src, dst, UDP, len(dgram)) + dgram) or 0xFFFF
        return dgram[:6] + struct.pack("!H", c) + dgram[8:]


def icmp(type_: int, code: int, rest: int, quote: bytes) -> bytes:
    msg = struct.pack("!BBHI", type_, code, 0, rest) + quote
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def tcp_flags(text: str) -> int:
    out = 0
    for ch in text:
        out |= FLAGS[ch]
    return out
