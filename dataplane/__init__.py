"""dataplane: a kube-proxy replacement's hot path in eBPF, on a lab cluster of network namespaces."""

__version__ = "0.1.0"
