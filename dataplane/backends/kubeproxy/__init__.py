"""What kube-proxy's iptables and nftables modes share: how a service port looks from one node
(view.py, CategorizeEndpoints), chain naming (names.py), stale UDP conntrack cleanup
(conntrack.py), ip-masq-agent's rules (masq_agent.py) and the sync loop (backend.py). The two
renderers (backends/iptables, backends/nftables) only write rules.

Owns: kube-proxy's loop and bookkeeping.
May import: spec, lab, errors, backends.base.
"""
