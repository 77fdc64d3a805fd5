"""The scenario fuzzer's judge (dataplane/run/fuzz/scenarios.py) on made-up reports: agreement,
documented differences, disagreements and crashes; a disagreement is saved as a scenario that
loads and replays with the reference's expectations, and makes the command exit 1. Rootless: the
live backends are stood in for by the emulator's own report, edited."""
from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from click.testing import CliRunner

from dataplane import cli as cli_module
from dataplane.backends import CONFORMANCE, get
from dataplane.judge.checks import CheckResult
from dataplane.run.fuzz import scenarios as fz
from dataplane.run.runner import Report, run_live
from dataplane.spec.generate import checks_of, scenario_doc, scenario_text
from dataplane.spec.scenario import load

SEED = 3


@pytest.fixture()
def generated(tmp_path):
    path = tmp_path / "fuzz.yaml"
    path.write_text(scenario_text(SEED, 0))
    scenario = load(path)
    reference = run_live(scenario, get("emulator", seed=1), "unused")
    return scenario, reference


def _same(reference: Report, backends=CONFORMANCE) -> dict:
    return {b: replace(copy.deepcopy(reference), backend=b) for b in backends}


def _flip(report: Report, i: int) -> None:
    """Make check i of `report` come out otherwise."""
    r = report.results[i]
    outcome = "dropped" if "dropped" not in r.outcomes else "reachable"
    report.results[i] = CheckResult(r.name, False, "made up", {outcome: 1}, {}, {})


def test_identical_reports_agree(generated):
    scenario, reference = generated
    assert fz.compare(scenario, _same(reference)) == []


def test_a_different_outcome_is_a_disagreement_naming_every_backend(generated):
    scenario, reference = generated
    reports = _same(reference)
    _flip(reports["iptables"], 1)
    found = fz.compare(scenario, reports)
    assert len(found) == 1
    assert found[0].startswith(scenario.checks[1].name)
    assert all(f"  {b}: " in found[0] for b in CONFORMANCE)


def test_a_crash_and_a_short_report_are_disagreements(generated):
    scenario, reference = generated
    reports = _same(reference, ("ebpf", "emulator"))
    assert fz.compare(scenario, reports, {"nftables": "LabError: boom"}) == ["nftables crashed: LabError: boom"]
    reports["ebpf"].results.pop()
    assert any("reported" in d for d in fz.compare(scenario, reports))


def test_a_documented_difference_is_no_disagreement(generated):
    """cluster-ip-unserved-port: refused on ebpf, nftables and the emulator, dropped on the
    iptables modes, which name the difference."""
    scenario, reference = generated
    reports = _same(reference)
    for b, report in reports.items():
        outcome = "dropped" if b.startswith("iptables") else "refused"
        report.results[0] = CheckResult("x", True, "", {outcome: 1}, {}, {},
                                        difference="cluster-ip-unserved-port" if outcome == "dropped" else None)
    assert fz.compare(scenario, reports) == []
    reports["iptables"].results[0].difference = None            # the same outcomes, undocumented
    assert len(fz.compare(scenario, reports)) == 1


def test_random_choices_are_not_compared(tmp_path):
    """Which of several eligible endpoints answered is not compared, only whether it was eligible."""
    for seed in range(50):
        path = tmp_path / f"fuzz-{seed}.yaml"
        path.write_text(scenario_text(seed, 0))
        scenario = load(path)
        found = [(i, c) for i, c in enumerate(scenario.checks) if c.backends and len(c.backends) > 1]
        if found:
            break
    i, spec = found[0]
    reference = run_live(scenario, get("emulator", seed=1), "unused")
    reports = _same(reference, ("nftables", "emulator"))
    for b, name in zip(reports, spec.backends):
        reports[b].results[i] = CheckResult(spec.name, True, "", {"reachable": 1}, {name: 1}, {})
    assert fz.compare(scenario, reports) == []
    reports["nftables"].results[i] = CheckResult(spec.name, False, "", {"reachable": 1}, {"stranger": 1}, {})
    assert len(fz.compare(scenario, reports)) == 1


def _saved_with(generated, tmp_path, odd_one: str):
    """Reports alike but for `odd_one`'s check 1, saved: (path, reports)."""
    scenario, reference = generated
    reports = _same(reference)
    _flip(reports[odd_one], 1)
    run = fz.ScenarioRun(SEED, 0, scenario_doc(SEED, 0), CONFORMANCE, reports=reports, scenario=scenario)
    run.disagreements = fz.compare(scenario, reports)
    return fz.save(run, str(tmp_path / "saved")), reports


def test_a_saved_disagreement_replays_with_the_references_expectations(generated, tmp_path):
    reference = generated[1]
    path, reports = _saved_with(generated, tmp_path, "ebpf")
    text = open(path).read()
    assert f"seed {SEED}, index 0" in text and "ebpf: " in text and "--seed" in text
    saved = load(path)
    items = checks_of(scenario_doc(SEED, 0))
    assert [c.name for c in saved.checks] == [c["name"] for c in items]
    for check, result in zip(saved.checks, reference.results):
        assert [check.expect] == list(result.outcomes) or check.expect in result.outcomes
    replay = run_live(saved, get("emulator", seed=fz.backend_seed(SEED, 0)), "unused")
    assert replay.passed, [r.detail for r in replay.results if not r.passed]
    # ... and the backend that went its own way does not meet the saved expectation
    assert saved.checks[1].expect not in reports["ebpf"].results[1].outcomes


def test_the_majority_sets_the_expectation_even_against_the_emulator(generated, tmp_path):
    """The emulator alone disagreeing: the saved file expects what the other four saw."""
    reference = generated[1]
    path, reports = _saved_with(generated, tmp_path, "emulator")
    saved = load(path)
    assert saved.checks[1].expect in reference.results[1].outcomes
    assert saved.checks[1].expect not in reports["emulator"].results[1].outcomes


def test_the_command_saves_a_disagreement_and_exits_1(tmp_path, monkeypatch):
    """`dataplane fuzz scenarios` with a stand-in for the live backend that disagrees on one check."""
    def fake_run(path, backend, seed, lab):
        report = run_live(load(path), get("emulator", seed=seed), "unused")
        if backend != "emulator":
            _flip(report, 0)
        return replace(report, backend=backend)

    monkeypatch.setattr(fz, "_run", fake_run)
    monkeypatch.setattr(fz, "ProcessPoolExecutor", lambda n, mp_context=None, initializer=None: ThreadPoolExecutor(n))
    monkeypatch.setattr(cli_module.doctor, "require", lambda *needs: None)
    save = tmp_path / "failures"
    result = CliRunner().invoke(cli_module.cli, ["fuzz", "scenarios", "--count", "2", "--seed", "11",
                                                 "-b", "nftables", "-b", "emulator", "--save", str(save)])
    assert result.exit_code == 1, result.output
    assert "seed 11" in result.output and "DISAGREE" in result.output and "2 disagree" in result.output
    assert sorted(p.name for p in save.iterdir()) == ["fuzz-11-0.yaml", "fuzz-11-1.yaml"]
    load(save / "fuzz-11-0.yaml")


def test_agreement_exits_0_and_prints_a_fresh_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(fz, "_run", lambda path, backend, seed, lab: replace(
        run_live(load(path), get("emulator", seed=seed), "unused"), backend=backend))
    monkeypatch.setattr(fz, "ProcessPoolExecutor", lambda n, mp_context=None, initializer=None: ThreadPoolExecutor(n))
    monkeypatch.setattr(cli_module.doctor, "require", lambda *needs: None)
    result = CliRunner().invoke(cli_module.cli, ["fuzz", "scenarios", "--count", "1", "-b", "nftables",
                                                 "-b", "emulator", "--save", str(tmp_path / "f")])
    assert result.exit_code == 0, result.output
    assert "fuzz scenarios: seed " in result.output and "1 agree, 0 disagree" in result.output
    assert not (tmp_path / "f").exists()
