"""The address filter: the addresses map summarized for the pod hooks' fast path (bpf/lib/lb.h).

Each address falls in one slot of 2 bits (ADDR_F_FRONTEND, ADDR_F_ENDPOINT), 32 slots per u64
word; a slot holds the OR of the flags of every address of the addresses map in it. The BPF side
reads one word per address (an array lookup the verifier inlines) and takes the full path when the
slot's bit is set, so the filter must never lack a bit the map has: every change of the map
goes through `change`, right after the map's own write (an addition before any service entry can
send a flow there, as the map's; a removal once the sync has decided it, as the map's).

The filter is derived data: user space counts, per slot and bit, the addresses that set it, and
rebuilds the counts (and rewrites every word) from the addresses map when it first touches a
program's filter, so an adopting agent or a repair starts from what the kernel holds.
"""
from __future__ import annotations

import ctypes as ct
import errno
import os
from array import array
from collections import Counter

from ...contract.render import ADDR_F_ENDPOINT, ADDR_F_FRONTEND

BITS = (ADDR_F_FRONTEND, ADDR_F_ENDPOINT)
SLOTS_PER_WORD = 32


def slot_of(addr: int, slots: int) -> int:
    """lb4_address_slot: murmur3's finalizer of the address (an int, host order) masked to
    `slots` (a power of two)."""
    h = addr & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h & (slots - 1)


class AddressFilter:
    """One program's address_filter map, with the record behind its words: the flags of every
    address it summarizes, and per slot and bit how many of them set it."""

    def __init__(self, table, held: dict):
        self.table = table
        self.slots = table.max_entries * SLOTS_PER_WORD
        self.flags: dict = {}                     # address -> the ADDR_F_* bits summarized
        self.counts: Counter = Counter()          # (slot, bit) -> addresses setting it
        self.broken = False                       # a write failed: rebuild before the next use
        for addr, flags in held.items():
            self._count(addr, flags)
        self.words = {}
        for w in {s // SLOTS_PER_WORD for s, _ in self.counts}:
            if v := self._word(w):
                self.words[w] = v
        self.repair()

    def repair(self) -> bool:
        """Every word of the kernel's array read (one batch) and the ones that differ from the
        record rewritten: a filter left with bits of addresses gone (an agent stopped between its
        two writes, a test that emptied the addresses map), or written behind our back, is made
        exact again. True when a word was rewritten."""
        from bcc.libbcc import lib
        t, n = self.table, self.table.max_entries
        keys, leaves = (t.Key * n)(), (t.Leaf * n)()
        token, count = ct.c_uint32(0), ct.c_uint32(n)
        if lib.bpf_lookup_batch(t.map_fd, None, ct.byref(token), ct.byref(keys), ct.byref(leaves),
                                ct.byref(count)) != 0 and ct.get_errno() != errno.ENOENT:
            err = ct.get_errno()
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH of address_filter: {os.strerror(err)}")
        have = array("Q", bytes(leaves))
        want = array("Q", bytes(8 * n))
        for w, v in self.words.items():
            want[w] = v
        if count.value == n and have == want:
            return False
        wrong = [w for w in range(n) if w >= count.value or have[w] != want[w]]
        update_batch(t, [(t.Key(w), t.Leaf(want[w])) for w in wrong])
        return bool(wrong)

    def _count(self, addr: int, new: int) -> set:
        """The record of `addr` set to `new`; the words it touched."""
        old = self.flags.get(addr, 0)
        if old == new:
            return set()
        slot = slot_of(addr, self.slots)
        for bit in BITS:
            if new & bit and not old & bit:
                self.counts[(slot, bit)] += 1
            elif old & bit and not new & bit:
                self.counts[(slot, bit)] -= 1
                if self.counts[(slot, bit)] <= 0:
                    del self.counts[(slot, bit)]
        if new:
            self.flags[addr] = new
        else:
            del self.flags[addr]
        return {slot // SLOTS_PER_WORD}

    def _word(self, w: int) -> int:
        value = 0
        for i in range(SLOTS_PER_WORD):
            slot = w * SLOTS_PER_WORD + i
            for bit in BITS:
                if (slot, bit) in self.counts:
                    value |= bit << (2 * i)
        return value

    def change(self, now: dict) -> int:
        """now: address -> the flags the addresses map holds for it now (0: gone), as just
        written there. The difference from the record is summarized, whatever the caller thought
        the map held before (a repair of drift behind our back included), and the words whose
        value changed are written. Returns how many. A failed write leaves the filter marked
        broken: the next filter_of rebuilds it from the addresses map and repairs every word."""
        touched = set()
        try:
            for addr, flags in now.items():
                touched |= self._count(addr, flags)
            write = {}
            for w in touched:
                v = self._word(w)
                if v != self.words.get(w, 0):
                    write[w] = v
            update_batch(self.table, [(self.table.Key(w), self.table.Leaf(v)) for w, v in write.items()])
        except BaseException:
            self.broken = True
            raise
        for w, v in write.items():
            if v:
                self.words[w] = v
            else:
                self.words.pop(w, None)
        return len(write)


def update_batch(table, pairs):
    from . import maps         # (maps imports this module; its update_batch, counted by the tests)
    maps.update_batch(table, pairs)


def filter_of(prog) -> AddressFilter:
    """The program's filter, built from its addresses map on first use (and after a failure)."""
    f = getattr(prog, "address_filter", None)
    if f is None or f.broken:
        from .maps import read_addresses
        f = prog.address_filter = AddressFilter(prog.table("address_filter"), read_addresses(prog))
    return f
