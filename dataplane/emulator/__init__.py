"""The emulator: a scenario's lab simulated in Python, with the oracle at the hooks where the BPF
programs sit (`dataplane run --backend emulator`, no root needed).

Owns: the simulated network (net: routing, links, MTUs, timers), hosts' TCP and UDP (transport),
packets (packets).
May import: spec, lab (the plan and the workload's protocol), contract, oracle, errors.
"""
