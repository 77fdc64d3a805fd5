"""kube-proxy's deterministic chain names (pkg/proxy/iptables/proxier.go, pkg/proxy/nftables).

iptables chains are capped at 28 characters, so service and endpoint chains carry a hash:
the first 16 characters of base32(sha256(port name + protocol [+ endpoint])). Checked against
kube-proxy's own test vectors in tests/unit/test_kubeproxy_names.py.
"""
from __future__ import annotations

import base64
import hashlib


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def port_proto_hash(port_name: str, protocol: str) -> str:
    return _hash(port_name + protocol)


def svc_chain(port_name: str, protocol: str) -> str:
    return "KUBE-SVC-" + port_proto_hash(port_name, protocol)


def svl_chain(port_name: str, protocol: str) -> str:
    return "KUBE-SVL-" + port_proto_hash(port_name, protocol)


def ext_chain(port_name: str, protocol: str) -> str:
    return "KUBE-EXT-" + port_proto_hash(port_name, protocol)


def fw_chain(port_name: str, protocol: str) -> str:
    return "KUBE-FW-" + port_proto_hash(port_name, protocol)


def sep_chain(port_name: str, protocol: str, endpoint: str) -> str:
    """endpoint: "ip:port"."""
    return "KUBE-SEP-" + _hash(port_name + protocol + endpoint)


# nftables mode (pkg/proxy/nftables/proxier.go): names up to 256 bytes, so the readable service
# name stays in the chain name, behind an 8-character hash of it.
NFT_NAME_MAX = 256 - 16


def _hash_and_truncate(name: str) -> str:
    name = _hash(name)[:8] + "-" + name
    return name if len(name) <= NFT_NAME_MAX else name[:NFT_NAME_MAX - 3] + "..."


def nft_service_base(namespace: str, name: str, protocol: str, port_name: str) -> str:
    """"ns/name/proto/portname" (an unnamed port keeps the trailing slash)."""
    return _hash_and_truncate(f"{namespace}/{name}/{protocol}/{port_name}")


def nft_endpoint_base(namespace: str, name: str, protocol: str, port_name: str, ip: str, port: int) -> str:
    return _hash_and_truncate(f"{namespace}/{name}/{protocol}/{port_name}__{ip}/{port}")
