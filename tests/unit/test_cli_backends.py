"""`dataplane backends`: what each backend declares, as users read it, and the options it takes."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dataplane import backends
from dataplane.cli import cli
from dataplane.errors import DataplaneError


def test_backends_lists_each_with_its_capabilities():
    out = CliRunner().invoke(cli, ["backends", "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["name"]: r for r in json.loads(out.output)}
    assert set(rows) == set(backends.BACKENDS)
    assert rows["ebpf"]["options"] == ["--seed", "--map-size", "--ct-timeout"] and rows["ebpf"]["counters"]
    assert rows["emulator"]["simulated"] and not rows["emulator"]["needs"]
    assert rows["nftables"]["health_checks"] and rows["nftables"]["options"] == []
    assert [n for n, r in rows.items() if r["conformance"]] == list(backends.CONFORMANCE)


def test_an_option_for_another_backend_is_an_error():
    with pytest.raises(DataplaneError, match=r"--map-size does not apply to backend iptables \(only to ebpf\)"):
        backends.get("iptables", sizes=object())
    assert backends.get("iptables", strict=False, seed=3).seed is None     # `--backend all`: where it applies


def test_model_is_the_emulator():
    assert backends.get("model", seed=4).name == "emulator"
