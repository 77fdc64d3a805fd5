"""`trace --drops` (dataplane.run.trace.drops): the kernel's drops of lab packets, with its reason.

The offsets the program reads at come from a walk of the running kernel's BTF: pinned here against
a second route to the same numbers, a C compiler laying out bpftool's `format c` dump of that BTF.
Then real drops, caused in namespaces of the test's own (a veth between two, a third on its own,
10.250.0.0/30 only inside them, nothing in the root namespace): a UDP datagram to a closed port
(NO_SOCKET), a SYN an nft rule drops (NETFILTER_DROP), and a drop in a namespace the reader does
not watch, which it never reports. close() leaves no program attached."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from dataplane.lab import netns
from dataplane.run.trace import drops
from dataplane.run.trace.drops import OFFSETS, Btf, KernelDrops

LAB = f"dp-droptest{os.getpid()}"           # a lab name of its own: concurrent sessions never meet
A, B, C = f"{LAB}.a", f"{LAB}.b", f"{LAB}.c"
A_IP, B_IP = "10.250.0.1", "10.250.0.2"
DEADLINE = 10.0


@pytest.fixture(scope="module")
def btf():
    if os.geteuid() != 0:
        pytest.skip("reading the kernel's BTF with bpftool needs root")
    return drops.load_btf()


@pytest.fixture(scope="module")
def labns():
    """A and B joined by a veth (A_IP, B_IP /30), C alone with its loopback up: name -> inode."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    try:
        for name in (A, B, C):
            netns.remove(name)                    # a leftover of a killed run
            netns.create(name)
        _wire()
        yield {name: os.stat(netns.path(name)).st_ino for name in (A, B, C)}
    finally:
        for name in (A, B, C):
            netns.remove(name)


def _wire() -> None:
    peer = os.open(netns.path(B), os.O_RDONLY)
    try:
        with netns.ipr(A) as ipr:                 # created in A, its peer placed straight into B
            ipr.link("add", ifname="va", kind="veth", peer={"ifname": "vb", "net_ns_fd": peer})
    finally:
        os.close(peer)
    for name, ifname, ip in ((A, "va", A_IP), (B, "vb", B_IP), (C, None, None)):
        with netns.ipr(name) as ipr:
            for link in ipr.get_links():
                ipr.link("set", index=link["index"], state="up")
            if ifname:
                ipr.addr("add", index=ipr.link_lookup(ifname=ifname)[0], address=ip, prefixlen=30)


def _python(ns: str, code: str) -> None:
    done = netns.run(ns, [sys.executable, "-c", textwrap.dedent(code)], timeout=20)
    assert done.returncode == 0, done.stderr


def _udp(ns: str, dst: str, port: int) -> None:
    _python(ns, f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"drop me", ({dst!r}, {port}))
    """)


def _syn(ns: str, dst: str, port: int) -> None:
    # Non-blocking: the SYN leaves at connect; the process need not wait for the answer never coming.
    _python(ns, f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(({dst!r}, {port}))
    """)


def _wait_for(reader: KernelDrops, match) -> tuple[dict, list[dict]]:
    """The first event `match` accepts, and every event polled until it, within DEADLINE."""
    seen = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        for event in reader.poll(100):
            seen.append(event)
            if match(event):
                return event, seen
    pytest.fail(f"no matching drop within {DEADLINE}s; saw {seen}")


# --- offsets and names from the running kernel -------------------------------------------------

def test_btf_offsets_agree_with_a_compiler_laying_out_the_same_btf(btf, tmp_path):
    """bpftool's `format c` of the same BTF, laid out by gcc: offsetof for every define the program
    uses (through sk_buff's anonymous unions and struct_group), and a bitfield's bit found by
    setting it in a zeroed struct."""
    assert shutil.which("gcc"), "gcc lays out vmlinux.h here; make setup installs it"
    header = subprocess.run(["bpftool", "btf", "dump", "file", drops.BTF_VMLINUX, "format", "c"],
                            capture_output=True, text=True, check=True).stdout
    (tmp_path / "vmlinux.h").write_text(header)
    prints = "\n".join(f'    printf("{define} %zu\\n", __builtin_offsetof(struct {s}, {path}));'
                       for define, (s, path) in OFFSETS.items())
    (tmp_path / "layout.c").write_text(textwrap.dedent("""\
        #include "vmlinux.h"
        int printf(const char *, ...);
        static struct sk_buff skb;
        static int first_bit(const unsigned char *p, int n) {
            for (int i = 0; i < n * 8; i++) if (p[i / 8] >> (i % 8) & 1) return i;
            return -1;
        }
        int main(void) {
        """) + prints + textwrap.dedent("""
            skb.fclone = 3;
            printf("fclone %d\\n", first_bit((const unsigned char *)&skb, sizeof(skb)));
            return 0;
        }
        """))
    built = subprocess.run(["gcc", "-w", "-O0", "-o", str(tmp_path / "layout"), str(tmp_path / "layout.c")],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    out = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True, check=True).stdout
    by_gcc = dict((k, int(v)) for k, v in (line.split() for line in out.splitlines()))

    walked = {define: btf.field(s, path).offset for define, (s, path) in OFFSETS.items()}
    assert walked == {k: v for k, v in by_gcc.items() if k in OFFSETS}
    fclone = btf.field("sk_buff", "fclone")          # a 2-bit bitfield (x86: little-endian bit order)
    assert (fclone.bit_offset, fclone.bitfield) == (by_gcc["fclone"], 2)
    with pytest.raises(drops.DataplaneError, match="bitfield"):
        fclone.offset


def test_the_walk_resolves_anonymous_members_typedefs_and_old_style_bitfields():
    """A small BTF of the shapes the kernel's has: a typedef'd struct holding a pointer (possible_net_t),
    a member inside an anonymous union inside an anonymous struct, and a bitfield given by its INT
    type (a struct without kind_flag)."""
    types = [
        {"id": 1, "kind": "INT", "name": "int", "size": 4, "bits_offset": 0, "nr_bits": 32},
        {"id": 2, "kind": "PTR", "name": "(anon)", "type_id": 1},
        {"id": 3, "kind": "STRUCT", "name": "(anon)", "size": 8, "members": [
            {"name": "net", "type_id": 2, "bits_offset": 0}]},
        {"id": 4, "kind": "TYPEDEF", "name": "possible_net_t", "type_id": 3},
        {"id": 5, "kind": "UNION", "name": "(anon)", "size": 8, "members": [
            {"name": "dev", "type_id": 2, "bits_offset": 0}, {"name": "scratch", "type_id": 1, "bits_offset": 0}]},
        {"id": 6, "kind": "STRUCT", "name": "(anon)", "size": 16, "members": [
            {"name": "next", "type_id": 2, "bits_offset": 0}, {"name": "(anon)", "type_id": 5, "bits_offset": 64}]},
        {"id": 7, "kind": "INT", "name": "int", "size": 4, "bits_offset": 3, "nr_bits": 2},
        {"id": 8, "kind": "CONST", "name": "(anon)", "type_id": 4},
        {"id": 9, "kind": "STRUCT", "name": "thing", "size": 40, "members": [
            {"name": "(anon)", "type_id": 6, "bits_offset": 64},
            {"name": "nd_net", "type_id": 8, "bits_offset": 192},
            {"name": "flags", "type_id": 7, "bits_offset": 256}]},
        {"id": 10, "kind": "FWD", "name": "thing", "fwd_kind": "struct"},
    ]
    btf = Btf({"types": types})
    assert btf.field("thing", "dev").offset == 16                 # 8 (anon struct) + 8 (anon union in it)
    assert btf.field("thing", "next").offset == 8
    assert btf.field("thing", "nd_net.net").offset == 24           # through CONST and TYPEDEF
    assert btf.field("thing", "nd_net.net").size == 8
    flags = btf.field("thing", "flags")
    assert (flags.bit_offset, flags.bitfield) == (259, 2)
    with pytest.raises(drops.DataplaneError, match="no member"):
        btf.field("thing", "nd_net.nope")


def test_reason_names_are_the_ones_the_tracepoint_prints(btf):
    """The BTF enum, prefixes stripped, names each reason as the tracepoint's own print format does."""
    layout = drops.layout_from(btf)
    printed = {int(v): name for v, name in re.findall(r'\{\s*(\d+),\s*"(\w+)"\s*\}', drops.tracepoint_format())}
    assert printed, "the format file has no __print_symbolic table"
    assert {v: layout.reasons[v] for v in printed} == printed
    assert {"NO_SOCKET", "NETFILTER_DROP", "IP_NOPROTO", "NOT_SPECIFIED"} <= set(layout.reasons.values())


# --- real drops ----------------------------------------------------------------------------------

def test_a_udp_datagram_to_a_closed_port_is_a_no_socket_drop_in_its_namespace(labns):
    with KernelDrops({labns[A]: "a", labns[B]: "b"}) as reader:
        _udp(A, B_IP, 4141)
        event, _ = _wait_for(reader, lambda e: e["proto"] == "udp" and e["dport"] == 4141)
    assert event["reason"] == "NO_SOCKET"
    assert (event["netns"], event["src"], event["dst"]) == ("b", A_IP, B_IP)
    assert isinstance(event["sport"], int) and event["sport"] > 0
    assert re.fullmatch(r"\w+\+0x[0-9a-f]+", event["location"]), event["location"]
    assert "udp" in event["location"], event["location"]
    assert abs(event["time"] - time.clock_gettime(time.CLOCK_MONOTONIC)) < DEADLINE


def test_a_syn_dropped_by_an_nft_rule_is_a_netfilter_drop(labns):
    assert shutil.which("nft"), "make setup installs nft"
    rules = """
        table inet droptest {
            chain input { type filter hook input priority 0; policy accept; tcp dport 4242 drop; }
        }
    """
    done = netns.run(B, ["nft", "-f", "-"], timeout=10, input=textwrap.dedent(rules))
    assert done.returncode == 0, done.stderr
    try:
        with KernelDrops({labns[B]: "b"}, addresses={B_IP}) as reader:
            _syn(A, B_IP, 4242)
            event, _ = _wait_for(reader, lambda e: e["proto"] == "tcp" and e["dport"] == 4242)
    finally:
        netns.run(B, ["nft", "delete", "table", "inet", "droptest"], timeout=10)
    assert (event["reason"], event["netns"], event["src"], event["dst"]) == ("NETFILTER_DROP", "b", A_IP, B_IP)


def test_a_drop_before_the_packet_has_a_device_is_placed_by_its_socket(labns, monkeypatch):
    """An nft OUTPUT drop comes before ip_output gives the skb a device: only its socket
    (sock.__sk_common.skc_net) says where it is. With the device route made to miss (DEV_NET at
    a wrong offset), the drop is still placed in A: the socket route works on its own."""
    assert shutil.which("nft"), "make setup installs nft"
    rules = """
        table inet droptest {
            chain output { type filter hook output priority 0; policy accept; udp dport 4646 drop; }
        }
    """
    done = netns.run(A, ["nft", "-f", "-"], timeout=10, input=textwrap.dedent(rules))
    assert done.returncode == 0, done.stderr
    real = drops.kernel_layout()
    monkeypatch.setattr(drops, "kernel_layout",
                        lambda: dataclasses.replace(real, offsets={**real.offsets, "DEV_NET": 8}))
    try:
        with KernelDrops({labns[A]: "a", labns[B]: "b"}) as reader:
            # sendto fails with EPERM when netfilter drops on output: expected here
            _python(A, f"""
                import socket
                try:
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ({B_IP!r}, 4646))
                except PermissionError:
                    pass
            """)
            event, _ = _wait_for(reader, lambda e: e["dport"] == 4646)
    finally:
        netns.run(A, ["nft", "delete", "table", "inet", "droptest"], timeout=10)
    assert (event["reason"], event["netns"], event["src"], event["dst"]) == ("NETFILTER_DROP", "a", A_IP, B_IP)
    assert event["location"].startswith("nft_do_chain+"), event["location"]


def test_a_drop_in_a_namespace_not_watched_is_never_reported(labns):
    """The same drop (UDP to a closed port) in C, then in B: the reader watching only B reports
    B's, and C's (which happened first) never; a reader watching C does see C's, so the first
    reader's silence is its filter and not a drop that did not happen."""
    with KernelDrops({labns[A]: "a", labns[B]: "b"}) as watching_b, KernelDrops({labns[C]: "c"}) as watching_c:
        _udp(C, "127.0.0.1", 4343)
        _udp(A, B_IP, 4344)
        _, seen = _wait_for(watching_b, lambda e: e["dport"] == 4344)
        in_c, _ = _wait_for(watching_c, lambda e: e["dport"] == 4343)
        seen += watching_b.poll(0)
    assert in_c["netns"] == "c" and in_c["reason"] == "NO_SOCKET"
    assert {e["netns"] for e in seen} <= {"a", "b"}
    assert not [e for e in seen if e["dport"] == 4343]


def _ours() -> tuple[set[int], set[int]]:
    """Ids of the kfree_skb programs loaded, and of those attached by this process."""
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, text=True,
                                      check=True).stdout)
    loaded = {p["id"] for p in progs if p.get("type") == "tracepoint" and "kfree_skb" in p.get("name", "")}
    perf = json.loads(subprocess.run(["bpftool", "-j", "perf", "list"], capture_output=True, text=True,
                                     check=True).stdout)
    attached = {p["prog_id"] for p in perf if p.get("pid") == os.getpid() and p.get("tracepoint") == "kfree_skb"}
    return loaded, attached


def test_close_detaches_and_frees_the_program(labns):
    before, _ = _ours()
    reader = KernelDrops({labns[B]: "b"})
    try:
        loaded, attached = _ours()
        mine = loaded - before
        assert mine and attached == mine, (loaded, attached, before)
    finally:
        reader.close()
    loaded, attached = _ours()
    assert not attached and not (mine & loaded)
    reader.close()                                 # idempotent
    with pytest.raises(drops.DataplaneError, match="closed"):
        reader.poll(0)
