"""Write rendered NodeMaps into a node's BPF maps, as diffs applied with batched updates.

Conversion to the kernel's layout goes through the Key/Leaf ctypes bcc generates from
bpf/include/types.h; nothing here restates a struct. Order of a change keeps every packet safe
mid-update: new backends, then new slots, then the service entries pointing at them; removals
in the reverse order. The addresses map (the pod hooks' fast path) is written around them by the
sync: what it adds before anything could send a flow there (grow_addresses), what it removes only
after the flush, and never while a live flow names the address (settle_addresses); each of its
writes is followed by the address filter's (address_filter.py), the map's summary for the BPF side.
"""
from __future__ import annotations

import ctypes as ct
import errno
import os
import socket
from dataclasses import dataclass, field

from .address_filter import filter_of
from .program import NodeProgram, be16, be32, from_be32
from ...contract.render import BackendValue, NodeMaps, SvcKey, SvcValue


def _svc_key(t, k: SvcKey):
    key = t.Key()
    key.vip, key.port, key.proto, key.slot, key.scope = be32(k.vip), be16(k.port), k.proto, k.slot, k.scope
    return key


def _svc_leaf(t, v: SvcValue):
    leaf = t.Leaf()
    leaf.backend_id, leaf.count, leaf.flags = v.backend_id, v.count, v.flags
    leaf.affinity_timeout, leaf.svc_id = v.affinity_timeout, v.svc_id
    return leaf


def _backend_leaf(t, v: BackendValue):
    leaf = t.Leaf()
    leaf.addr, leaf.port = be32(v.addr), be16(v.port)
    return leaf


def _match_key(t, svc_id: int, backend_id: int):
    key = t.Key()
    key.svc_id, key.backend_id = svc_id, backend_id
    return key


def _source_key(t, svc_id: int, net):
    key = t.Key()
    key.prefixlen, key.svc_id, key.addr = 32 + net.prefixlen, svc_id, be32(net.network_address)
    return key


def batch_items(table, chunk: int = 4096, first_chunk: int = 64):
    """Every (key, value) of a hash map, read per BPF_MAP_LOOKUP_BATCH call: a conntrack table
    of 40,000 entries in about 40 ms, where bcc's items() (two syscalls per entry) takes about
    450 ms, and bcc's own batch read allocates room for the whole capacity first (2 ms for an
    empty 262,144-entry table). The first call reads up to FIRST_CHUNK entries, each next one
    twice as many up to CHUNK: a sync walks conntrack and affinity tables on every node, mostly
    small, and zeroed buffers for 4,096 entries cost about 0.3 ms each. Each chunk has buffers
    of its own, so the entries stay valid after the next is read. A map changing meanwhile may be
    read with an entry missed or repeated, as with any walk of a live hash map."""
    from bcc.libbcc import lib
    token, count = ct.c_uint32(0), ct.c_uint32(0)
    first = True
    size = min(first_chunk, chunk)
    while True:
        keys, values = (table.Key * size)(), (table.Leaf * size)()
        count.value = size
        res = lib.bpf_lookup_batch(table.map_fd, None if first else ct.byref(token), ct.byref(token),
                                   ct.byref(keys), ct.byref(values), ct.byref(count))
        err = ct.get_errno()
        if res != 0 and err == errno.ENOSPC and count.value == 0:
            size *= 2              # a hash bucket holds more than the buffer: again, larger
            continue
        for i in range(count.value):
            yield keys[i], values[i]
        if res != 0:
            if err != errno.ENOENT:
                raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
            return
        first = False
        size = min(size * 2, chunk)


def update_batch(table, pairs: list) -> None:
    """One BPF_MAP_UPDATE_BATCH syscall for all pairs (no-op when empty)."""
    if not pairs:
        return
    keys = (table.Key * len(pairs))(*(k for k, _ in pairs))
    leaves = (table.Leaf * len(pairs))(*(v for _, v in pairs))
    table.items_update_batch(keys, leaves)


def delete_batch(table, keys: list) -> None:
    if not keys:
        return
    arr = (table.Key * len(keys))(*keys)
    # items_delete_batch yields nothing but must be consumed to run
    for _ in table.items_delete_batch(arr) or ():
        pass


@dataclass
class Change:
    """What one sync changed in one node's maps."""
    upserted: int = 0
    deleted: int = 0
    removed_backends: set = field(default_factory=set)   # BackendValue no longer in any slot

    def __bool__(self):
        return bool(self.upserted or self.deleted)


def apply(prog: NodeProgram, current: NodeMaps, desired: NodeMaps, addresses: bool = True) -> Change:
    """The difference written. With `addresses` False the addresses map is left to the sync
    (grow_addresses, settle_addresses); True (a repair, a read-back's restore) writes it as given."""
    svc_t, be_t, addr_t = prog.table("services"), prog.table("backends"), prog.table("addresses")
    flt = filter_of(prog) if addresses else None    # (built from the map as it was: before the write)
    ch = Change()
    new_addr = [(addr_t.Key(socket.htonl(a)), addr_t.Leaf(f)) for a, f in desired.addresses.items()
                if current.addresses.get(a) != f] if addresses else []
    update_batch(addr_t, new_addr)
    if addresses:
        flt.change({a: f for a, f in desired.addresses.items() if current.addresses.get(a) != f})
    new_be = [(be_t.Key(i), _backend_leaf(be_t, v)) for i, v in desired.backends.items()
              if current.backends.get(i) != v]
    changed = {k: v for k, v in desired.services.items() if current.services.get(k) != v}
    slots = [(_svc_key(svc_t, k), _svc_leaf(svc_t, v)) for k, v in changed.items() if k.slot]
    heads = [(_svc_key(svc_t, k), _svc_leaf(svc_t, v)) for k, v in changed.items() if not k.slot]
    match_t = prog.table("affinity_match")
    matched = desired.affinity_match - current.affinity_match
    update_batch(be_t, new_be)
    update_batch(svc_t, slots)
    update_batch(match_t, [(_match_key(match_t, *pair), match_t.Leaf(1)) for pair in matched])
    update_batch(svc_t, heads)
    gone_svc = [k for k in current.services if k not in desired.services]
    # heads first (count shrinks before its slots go), then slots, then backends
    delete_batch(svc_t, [_svc_key(svc_t, k) for k in sorted(gone_svc, key=lambda k: k.slot)])
    unmatched = current.affinity_match - desired.affinity_match
    delete_batch(match_t, [_match_key(match_t, *pair) for pair in unmatched])
    gone_be = [i for i in current.backends if i not in desired.backends]
    delete_batch(be_t, [be_t.Key(i) for i in gone_be])
    src_t = prog.table("lb_sources")
    added = desired.lb_sources - current.lb_sources
    for sid, net in added:
        src_t[_source_key(src_t, sid, net)] = src_t.Leaf(1)
    removed = current.lb_sources - desired.lb_sources
    for sid, net in removed:
        src_t.pop(_source_key(src_t, sid, net), None)
    gone_addr = [a for a in current.addresses if a not in desired.addresses] if addresses else []
    delete_batch(addr_t, [addr_t.Key(socket.htonl(a)) for a in gone_addr])
    if gone_addr:
        flt.change({a: 0 for a in gone_addr})
    ch.upserted = len(new_be) + len(slots) + len(heads) + len(added) + len(matched) + len(new_addr)
    ch.deleted = len(gone_svc) + len(gone_be) + len(unmatched) + len(removed) + len(gone_addr)
    live = set(desired.backends.values())
    ch.removed_backends = {v for v in current.backends.values() if v not in live}
    return ch


def grow_addresses(prog: NodeProgram, held: dict, wanted: dict) -> int:
    """Before a sync writes anything else: every bit `wanted` adds to what the addresses map holds
    (`held`, updated in place), written, so no flow can reach an address the fast path does not
    know. Nothing is removed here. Returns the entries written."""
    t, flt = prog.table("addresses"), filter_of(prog)
    grown = {a: held.get(a, 0) | f for a, f in wanted.items() if f & ~held.get(a, 0)}
    update_batch(t, [(t.Key(socket.htonl(a)), t.Leaf(f)) for a, f in grown.items()])
    flt.change(grown)
    held.update(grown)          # only once written: `held` never claims what the kernel lacks
    return len(grown)


def settle_addresses(prog: NodeProgram, held: dict, wanted: dict, used: set, among) -> tuple[int, int]:
    """After a sync's flush: each address of `among` holds what `wanted` gives it, and what it held
    besides while a conntrack entry that outlived the flush still names it (`used`: a UDP flow of
    a deleted service lives on until it expires, and its packets must still find it). `held` is
    updated in place. Returns (entries written, entries deleted)."""
    t, flt = prog.table("addresses"), filter_of(prog)
    write, gone = {}, []
    for a in among:
        h = held.get(a, 0)
        target = wanted.get(a, 0) | (h if a in used else 0)
        if target == h:
            continue
        if target:
            write[a] = target
        else:
            gone.append(a)
    # each half recorded only once written; a failure leaves `held` claiming at most bits the
    # kernel still has (a removal not done yet), never bits it lacks
    update_batch(t, [(t.Key(socket.htonl(a)), t.Leaf(f)) for a, f in write.items()])
    flt.change(write)
    held.update(write)
    delete_batch(t, [t.Key(socket.htonl(a)) for a in gone])
    flt.change({a: 0 for a in gone})
    for a in gone:
        del held[a]
    return len(write), len(gone)


def read_node_maps(prog: NodeProgram) -> NodeMaps:
    """What the maps hold, in rendered form: the state an adopting agent starts its diffs from,
    and what reconcile compares with the desired rendering."""
    from ipaddress import IPv4Network
    out = read_services(prog)
    out.affinity_match = {(k.svc_id, k.backend_id) for k in prog.table("affinity_match").keys()}
    out.lb_sources = {(k.svc_id, IPv4Network(f"{from_be32(k.addr)}/{k.prefixlen - 32}"))
                      for k in prog.table("lb_sources").keys()}
    out.addresses = read_addresses(prog)
    return out


def read_addresses(prog: NodeProgram) -> dict:
    """The addresses map: address (an int, host order) -> ADDR_F_* bits. (A batch read's array of
    a plain C type hands back ints, not c_uint objects.)"""
    return {socket.ntohl(k): v for k, v in batch_items(prog.table("addresses"))}


def read_services(prog: NodeProgram) -> NodeMaps:
    """The services and backends maps read back in rendered form (for tests and `dataplane maps`)."""
    out = NodeMaps()
    for k, v in prog.table("services").items():
        out.services[SvcKey(from_be32(k.vip), be16(k.port), k.proto, k.slot, k.scope)] = SvcValue(
            v.backend_id, v.count, v.flags, v.affinity_timeout, v.svc_id)
    for k, v in prog.table("backends").items():
        out.backends[k.value] = BackendValue(from_be32(v.addr), be16(v.port))
    return out
