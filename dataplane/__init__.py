"""dataplane: a kube-proxy replacement's hot path in eBPF, on a lab cluster of network namespaces.

Layers, each importing only those below it (docs/architecture.md; tests/unit/test_layers.py):
  face      cli.py, report.py, doctor.py
  run       run/ (scenarios on a lab or the emulator, benchmarks)
  judge     judge/ (checks, captures, documented differences)
  backends  backends/ (ebpf, iptables, iptables-legacy, nftables, emulator, none)
  emulator  emulator/ (a simulated lab with the oracle at the hooks)
  oracle    oracle/ (the reference datapath)
  contract  contract/ (the BPF programs' map encoding, constants, sizes and lifetimes)
  lab       lab/ (namespaces, links, cgroups, the test workload)
  spec      spec/ (scenarios, services, topology, checks, endpoint policy: pure data)

Owns: the version and errors.py (errors a user can act on).
May import: every layer (the face only).
"""

__version__ = "0.1.0"
