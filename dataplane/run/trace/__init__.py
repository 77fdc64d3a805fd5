"""`dataplane trace LAB`: what the dataplane decides about each packet, live.

Three sources, each one module, merged into one stream of events by time:
  bpf        the eBPF programs' own events (a ring buffer per node, lib/trace.h)
  netfilter  nftables' `meta nftrace` (and iptables-nft's TRACE) read with `nft monitor trace`
  drops      the kernel's drops of lab packets, with its drop reason (skb:kfree_skb)

Owns: the readers, their setup in the lab and their cleanup.
May import: spec, lab, contract, backends, errors.
"""
