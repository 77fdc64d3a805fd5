"""The oracle: the pure-Python reference datapath (docs/datapath.md), bytes in, verdict, bytes and
why out, deciding from the service table in Kubernetes' terms. It judges the BPF programs packet
by packet (tests/bpf, `dataplane fuzz packets`) and is the packet engine of the emulator.

Owns: frontends.py, what a node intercepts and who may receive it, from the service table;
datapath.py, the reference datapath of every hook.
May import: spec, errors. Never contract/ or a backend: it knows nothing of the map encoding, so a
wrong rendering disagrees with it.
"""
