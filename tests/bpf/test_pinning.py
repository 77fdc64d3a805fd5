"""Pinned maps across builds (what `dataplane reload` stands on): a second build of the programs
reuses the first one's maps, entries and all; a build whose map layout differs is refused before
it touches them, naming what changed. Real loads, real bpffs pins."""
from __future__ import annotations

import os
import shutil

import pytest

from dataplane.backends.ebpf.layout import LayoutMismatch
from dataplane.backends.ebpf.program import MAP_NAMES, NodeProgram, be16, be32
from dataplane.contract.limits import MapSizes

PINS = f"/sys/fs/bpf/dp-t-pin{os.getpid()}"


@pytest.fixture
def pin_dir():
    if os.geteuid() != 0:
        pytest.skip("loading BPF needs root")
    shutil.rmtree(PINS, ignore_errors=True)
    yield os.path.join(PINS, "node1")
    shutil.rmtree(PINS, ignore_errors=True)


def build(pin_dir, layout_file, sizes=None) -> NodeProgram:
    prog = NodeProgram("node1", "", "10.240.0.1", sizes=sizes or MapSizes(conntrack=4096))
    prog.reused = prog.load(seed=1, pin_dir=pin_dir, layout_file=layout_file)
    return prog


def test_a_second_build_reuses_the_pinned_maps_with_their_entries(pin_dir, tmp_path):
    layout = str(tmp_path / "layout.json")
    first = build(pin_dir, layout)
    try:
        assert first.reused is False and sorted(os.listdir(pin_dir)) == sorted(MAP_NAMES)
        t = first.table("backends")
        leaf = t.Leaf()
        leaf.addr, leaf.port = be32("10.0.1.2"), be16(8080)
        t[t.Key(7)] = leaf
        second = build(pin_dir, layout)
        try:
            assert second.reused is True
            got = second.table("backends")[second.table("backends").Key(7)]
            assert (got.addr, got.port) == (be32("10.0.1.2"), be16(8080))
            # one map, two programs: a write through either is seen by both
            second.table("backends").pop(second.table("backends").Key(7))
            assert len(first.table("backends")) == 0
        finally:
            second.release()
    finally:
        first.release()


def test_a_build_of_another_layout_is_refused_and_leaves_the_pins_alone(pin_dir, tmp_path):
    layout = str(tmp_path / "layout.json")
    first = build(pin_dir, layout)
    try:
        before = sorted(os.listdir(pin_dir))
        other = NodeProgram("node1", "", "10.240.0.1", sizes=MapSizes(conntrack=4096, services=1000))
        with pytest.raises(LayoutMismatch) as err:
            other.load(seed=1, pin_dir=pin_dir, layout_file=layout)
        assert "services (max_entries 524288 -> 1000)" in str(err.value)
        assert "affinity_match (max_entries 524288 -> 1000)" in str(err.value)
        assert other.bpf is None and sorted(os.listdir(pin_dir)) == before
    finally:
        first.release()


def test_pins_without_a_stamp_are_refused(pin_dir, tmp_path):
    first = build(pin_dir, str(tmp_path / "layout.json"))
    try:
        t = first.table("layout")
        t[t.Key(0)] = t.Leaf(0)            # as maps pinned before stamps existed
        with pytest.raises(LayoutMismatch, match="carry no layout stamp"):
            build(pin_dir, str(tmp_path / "layout.json"))
    finally:
        first.release()
