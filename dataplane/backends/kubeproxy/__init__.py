"""What kube-proxy's iptables and nftables modes share: how a service port looks from one node
(view.py, CategorizeEndpoints), chain naming (names.py) and stale UDP conntrack cleanup
(conntrack.py). The two renderers (backends/iptables, backends/nftables) only write rules."""
