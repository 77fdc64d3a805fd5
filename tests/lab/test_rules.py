"""`dataplane rules LAB`: what each backend installed, read back from the kernel, for a lab
brought up with `dataplane up` (the process that programmed it has exited)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, SCENARIOS


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "dataplane.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("backend,expected", [
    ("ebpf", ["10.240.0.1:30080/TCP [id", "masq] -> 10.0.1.2:8080, 10.0.2.2:8080",
              "10.240.0.1:30081/TCP from pods", "10.96.0.100:* -> reject"]),
    ("iptables", ["-A KUBE-NODEPORTS", "KUBE-SVC-", "--probability 0.50000000000", "IP-MASQ-AGENT"]),
    ("iptables-legacy", ["-A KUBE-NODEPORTS", "KUBE-SVC-", "-j DNAT --to-destination 10.0.1.2:8080"]),
    ("nftables", ["table ip kube-proxy", "map service-nodeports", "tcp . 30080 : goto external-",
                  "numgen random mod 2"]),
])
def test_rules_show_what_the_backend_installed(backend, expected):
    name = "t-rules"
    cli("up", str(SCENARIOS / "nodeport.yaml"), "--backend", backend, "--name", name)
    try:
        out = cli("rules", name, "--node", "node1").stdout
        assert out.startswith(f"=== {name} node1 ({backend})")
        for text in expected:
            assert text in out, text
        bad = cli("rules", name, "--node", "node9", check=False)
        assert bad.returncode == 2 and "has no node named 'node9'; its nodes: node1, node2, node3" in bad.stderr
    finally:
        cli("down", name)
