"""The oracle: the pure-Python reference datapath (docs/datapath.md), bytes in, verdict, bytes and
why out. It judges the BPF programs packet by packet (tests/bpf) and is the packet engine of the
emulator.

Owns: datapath.py, the reference datapath of every hook.
May import: spec, contract (for now: issue 11 makes it decide from the spec alone), errors.
"""
