"""The datapath contract: what the BPF programs and Python agree on, declared once in bpf/include
and read from there.

Owns: the map encoding of a service table (render: NodeMaps, Ids, render_node), the programs'
constants (consts: counters, flags, lifetimes from consts.h), capacities and conntrack lifetimes
(limits: MapSizes, CtTimeouts), and where the BPF sources are (headers).
May import: spec, errors.
"""
