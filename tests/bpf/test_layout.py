"""The layout Python relies on: sizes and offsets of bcc's generated Key/Leaf types of every map,
pinned here. A change to bpf/include/types.h must change this file too, deliberately."""
from __future__ import annotations

import ctypes

import pytest

from dataplane.contract import consts

LAYOUT = {
    # map: (key size, {key field: offset}, leaf size, {leaf field: offset})
    "services": (12, {"vip": 0, "port": 4, "proto": 6, "scope": 7, "slot": 8, "pad1": 10},
                 16, {"backend_id": 0, "count": 4, "flags": 6, "affinity_timeout": 8, "svc_id": 12}),
    "backends": (4, {}, 8, {"addr": 0, "port": 4, "pad0": 6}),
    "conntrack": (16, {"saddr": 0, "daddr": 4, "sport": 8, "dport": 10, "proto": 12, "dir": 13, "pad0": 14},
                  32, {"expires": 0, "nat_addr": 8, "nat_port": 12, "flags": 14, "snat_addr": 16,
                       "snat_port": 20, "pad0": 22, "backend_id": 24, "svc_id": 28}),
    "affinity": (8, {"client": 0, "svc_id": 4}, 16, {"last_used": 0, "backend_id": 8, "pad0": 12}),
    "affinity_match": (8, {"svc_id": 0, "backend_id": 4}, 1, {}),
    "sock_revnat": (16, {"cookie": 0, "addr": 8, "port": 12, "pad0": 14}, 8,
                    {"addr": 0, "port": 4, "proto": 6, "pad0": 7}),
    "frags": (12, {"saddr": 0, "daddr": 4, "id": 8, "proto": 10, "pad0": 11}, 4, {"sport": 0, "dport": 2}),
    "nosnat": (16, {"saddr": 0, "daddr": 4, "sport": 8, "dport": 10, "proto": 12, "dir": 13, "pad0": 14},
               8, {"expires": 0}),
    "config": (4, {}, 56, {"clock_offset": 0, "seed": 8, "node_ip": 12, "ct_syn": 16, "ct_tcp": 20,
                            "ct_close": 24, "ct_udp": 28, "ct_close_wait": 32, "cluster_net": 36,
                            "cluster_mask": 40, "snat_lo": 44, "snat_hi": 46, "masquerade": 48,
                            "masq_link_local": 49, "pad0": 50, "pad1": 52}),
    "nonmasq": (8, {"prefixlen": 0, "addr": 4}, 1, {}),
    "lb_sources": (12, {"prefixlen": 0, "svc_id": 4, "addr": 8}, 1, {}),
    # per-CPU: bcc's Leaf is one value per CPU; sLeaf (checked below) is struct trace_event
    "trace_scratch": (4, {}, None, {}),
    "trace_control": (4, {}, 4, {}),
}

TRACE_EVENT = (80, {"time": 0, "ifindex": 8, "counted": 12, "verdict": 16, "hook": 20, "drop": 21, "proto": 22,
                    "tcp_flags": 23, "saddr": 24, "daddr": 28, "sport": 32, "dport": 34, "new_saddr": 36,
                    "new_daddr": 40, "new_sport": 44, "new_dport": 46, "new_proto": 48, "ct_dir": 49,
                    "ct_flags": 50, "svc_id": 52, "backend_id": 56, "hash": 60, "slot": 64, "count": 66,
                    "snat_port": 68, "snat_tries": 70, "pad0": 71, "ct_remaining": 72, "pad1": 76})


def _offsets(t) -> dict:
    return {name: getattr(t, name).offset for name, _ in getattr(t, "_fields_", [])}


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_generated_types_match_the_pinned_layout(program, name):
    ksize, koffs, lsize, loffs = LAYOUT[name]
    t = program.table(name)
    assert ctypes.sizeof(t.Key) == ksize
    if lsize is not None:
        assert ctypes.sizeof(t.Leaf) == lsize
        assert _offsets(t.Leaf) == loffs
    if koffs:
        assert _offsets(t.Key) == koffs


def test_trace_event_layout(program):
    """struct trace_event, as the trace reader decodes it (run/trace/bpf.py reads bcc's type of
    trace_scratch's value)."""
    size, offsets = TRACE_EVENT
    t = program.table("trace_scratch").sLeaf
    assert ctypes.sizeof(t) == size
    assert _offsets(t) == offsets


def test_metrics_map_has_one_counter_per_reason(program):
    """The compiled M_MAX (the metrics map's size) against the names read from the header."""
    assert len(program.table("metrics")) == len(consts.METRICS)
