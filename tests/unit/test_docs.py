"""The documented example of every scenario field is a valid scenario, so the docs stay true."""
from __future__ import annotations

import re
import shutil

from dataplane.spec.scenario import load
from tests.conftest import ROOT, SCENARIOS


def test_scenario_format_example_loads(tmp_path):
    doc = (ROOT / "docs" / "scenario-format.md").read_text()
    example = re.search(r"## Every field\s+```yaml\n(.*?)```", doc, re.S).group(1)
    (tmp_path / "manifests").mkdir()
    shutil.copy(SCENARIOS / "manifests" / "web.yaml", tmp_path / "manifests" / "web.yaml")
    (tmp_path / "demo.yaml").write_text(example)
    sc = load(tmp_path / "demo.yaml")
    shop = sc.services.get("shop")
    assert shop.type == "LoadBalancer" and shop.ports[0].node_port == 30080
    assert shop.session_affinity == "ClientIP" and shop.affinity_timeout == 10
    assert [e.pod for e in shop.endpoints] == ["web-1"]
    assert {s.name for s in sc.services} == {"shop", "web", "legacy-db"}
    assert len(sc.ignored) == 2 and sc.checks[0].backends == ("web-1",)
    from dataplane.spec.scenario import Sleep, Update
    kinds = [type(s).__name__ for s in sc.steps]
    assert kinds == ["CheckSpec", "CheckSpec", "LoadSpec", "Sleep", "EndLoad", "Update", "CheckSpec"]
    assert sc.steps[1].http_get == "/" and sc.steps[1].status == 200
    started = sc.steps[2]
    assert (started.clients, started.ip, started.port, started.rate) == (("client",), shop.cluster_ip, 80, 20.0)
    assert sc.steps[4].load == started and sc.steps[4].max_failed == 0
    after = sc.steps[5].table
    assert after.get("shop").cluster_ip == shop.cluster_ip and after.get("legacy-db") is None
    assert after.get("shop").endpoints == ()
    assert isinstance(sc.steps[3], Sleep) and isinstance(sc.steps[5], Update)


def test_help_examples_name_real_files():
    """Every scenario file an example in `--help` or the README mentions exists."""
    from click.testing import CliRunner
    from dataplane.cli import cli

    texts = [(ROOT / "README.md").read_text()]
    for name, cmd in cli.commands.items():
        out = CliRunner().invoke(cli, [name, "--help"]).output
        assert "Example" in out, f"`dataplane {name} --help` has no example"
        texts.append(out)
    mentioned = set(re.findall(r"scenarios/[\w./-]+\.yaml", "\n".join(texts)))
    assert mentioned
    for rel in mentioned:
        assert (ROOT / rel).exists(), f"{rel} is mentioned in help or README but does not exist"
