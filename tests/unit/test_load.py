"""Background loads: the `load`/`endLoad` steps' errors, the judge of a load's summaries, and
loads on the emulator (a rollout with none failed; an outage counted and listed)."""
from __future__ import annotations

import pytest

from dataplane.backends import get
from dataplane.errors import ScenarioError
from dataplane.judge.load import evaluate_load
from dataplane.run.runner import run_simulated
from dataplane.spec.load import EndLoad, LoadSpec
from dataplane.spec.scenario import load
from tests.conftest import SCENARIOS
from tests.helpers import BASE, write

SERVICE = "services:\n  - {name: web, clusterIP: 10.96.0.10, selector: {app: web}, " \
          "ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, targetPort: 8080, protocol: UDP}]}\n"
START = "  - load: {name: l, from: pod/client, to: service/web, port: 80, rate: 10}\n"
END = "  - endLoad: {name: l}\n"

ERRORS = {   # case: (checks, field, message)
    "endLoad of no running load": (
        START + END + "  - endLoad: {name: l}\n", "checks[2].endLoad.name", "no running load named 'l'"),
    "a load that never ends": (
        START + "  - sleep: 1\n", "checks[0].load", "load 'l' never ends: add {endLoad: {name: l}}"),
    "two running loads of one name": (
        START + START + END, "checks[1].load.name", "load names must be unique in a scenario: a load 'l' was "
                                                    "started at "),
    "a load name used again after it ended": (
        START + END + START + END, "checks[2].load.name", "load names must be unique in a scenario"),
    "an unknown client in a list": (
        START.replace("pod/client", "[pod/client, pod/nobody]") + END, "checks[0].load.from[1]",
        "no pod named 'nobody'"),
    "a mapping in the list of clients": (
        START.replace("pod/client", "[{pod: client}]") + END, "checks[0].load.from[0]",
        "expected a reference such as pod/NAME, got {'pod': 'client'}"),
    "a capture during a load": (
        START + "  - {from: pod/client, to: service/web, port: 80, capture: true}\n" + END, "checks[1].capture",
        "a check with capture cannot run while a background load runs (l)"),
    "too many requests in flight": (
        START.replace("rate: 10", "rate: 500, timeout: 5") + END, "checks[0].load.timeout",
        "rate x timeout is 2500 requests in flight per client"),
    "rate zero": (
        START.replace("rate: 10", "rate: 0") + END, "checks[0].load.rate", "from 1 to 500, got 0"),
    "rate missing": (
        START.replace(", rate: 10", "") + END, "checks[0].load", "missing required field 'rate'"),
    "unknown client": (
        START.replace("pod/client", "pod/nobody") + END, "checks[0].load.from", "no pod named 'nobody'"),
    "a client listed twice": (
        START.replace("pod/client", "[pod/client, pod/client]") + END, "checks[0].load.from",
        "a client is listed twice"),
    "a port the service does not serve": (
        START.replace("port: 80", "port: 81") + END, "checks[0].load.port", "service default/web serves no port 81"),
    "unknown endLoad field": (
        START + "  - endLoad: {name: l, maxFailures: 1}\n", "checks[1].endLoad.maxFailures",
        "did you mean 'maxFailed'?"),
    "negative maxFailed": (
        START + "  - endLoad: {name: l, maxFailed: -1}\n", "checks[1].endLoad.maxFailed", "0 or more"),
    "a load's check named like a check": (
        START + "  - {name: load l, from: pod/client, to: service/web, port: 80}\n" + END,
        "checks[2].endLoad.name", "duplicate check name 'load l'"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_load_errors_name_the_field(tmp_path, case):
    checks, field, message = ERRORS[case]
    path = write(tmp_path, BASE + SERVICE + "checks:\n" + checks)
    with pytest.raises(ScenarioError) as err:
        load(path)
    assert len(getattr(err.value, "errors", [err.value])) == 1, f"one mistake, several errors: {err.value}"
    assert err.value.field == field, str(err.value)
    assert message in err.value.message, str(err.value)
    assert err.value.file.startswith(f"{path}:"), str(err.value)


ALONE = {   # one mistake that must not bring a second, false error about the loads
    "an invalid load, then its endLoad": START.replace("rate: 10", "rate: 0") + END,
    "a load without a name, then an endLoad": START.replace("name: l, ", "") + END,
    "a load step that is not a mapping, then an endLoad": "  - load: l\n" + END,
    "an endLoad that is not a mapping": START + "  - endLoad: l\n",
    "an invalid update cutting the steps short": START + "  - update: {name: u, pods: [{name: nobody}]}\n" + END,
}


@pytest.mark.parametrize("case", sorted(ALONE))
def test_one_mistake_one_error(tmp_path, case):
    with pytest.raises(ScenarioError) as err:
        load(write(tmp_path, BASE + SERVICE + "checks:\n" + ALONE[case]))
    assert len(getattr(err.value, "errors", [err.value])) == 1, str(err.value)


def test_a_load_resolves_its_clients_and_destination(tmp_path):
    path = write(tmp_path, BASE + SERVICE + "checks:\n"
                 "  - load: {name: l, from: [pod/client, host/ext], to: service/web, port: 53, rate: 2.5}\n"
                 "  - endLoad: {name: l, maxFailed: 3}\n")
    started, ended = load(path).steps
    assert started.clients == ("client", "ext") and str(started.ip) == "10.96.0.10"
    assert (started.port, started.protocol, started.rate, started.timeout) == (53, "UDP", 2.5, 1.0)
    assert ended.load == started and ended.max_failed == 3 and ended.check == "load l"


SPEC = LoadSpec(name="l", clients=("a", "b"), target="service/web", ip=None, port=80, protocol="TCP",
                rate=10.0, timeout=1.0)


def _summary(requests, failures=(), due=None, answered=None):
    failed = len(failures)
    return {"t0": 100.0, "requests": requests, "skipped": (due or requests) - requests, "due": due or requests, "seconds": requests / 10,
            "outcomes": {"reachable": requests - failed, **({"refused": failed} if failed else {})},
            "answered": answered or {"web-1": requests - failed}, "failures": list(failures),
            "ms": {"p50": 1.0, "p99": 2.0, "max": 3.0}}


def _fail(at):
    return {"seq": int(at * 10), "at": at, "late": 0.0, "outcome": "refused", "error": "ECONNREFUSED", "ms": 0.3}


JUDGED = {   # case: (max_failed, summaries, passed, text in the detail)
    "none failed": (0, {"a": _summary(50), "b": _summary(50)}, True, "100 requests (10/s from 2 clients"),
    "failures within maxFailed": (2, {"a": _summary(50, [_fail(1.2)]), "b": _summary(50)}, True,
                                  "1 failed (at most 2)"),
    "failures listed in time order": (0, {"a": _summary(50, [_fail(2.5)]), "b": _summary(50, [_fail(1.0)])},
                                      False, "2 of 100 requests failed (at most 0): b at 1.00 s (before any "
                                             "update): refused (ECONNREFUSED); a at 2.50 s"),
    "a generator that fell behind": (0, {"a": _summary(30, due=50), "b": _summary(50)}, False,
                                     "a sent 30 of the 50 requests due in 3 s"),
    "a few requests skipped": (0, {"a": _summary(45, due=50), "b": _summary(50)}, True,
                               "95 requests (10/s from 2 clients, TCP to service/web:80), 0 failed, 5 skipped by a "
                               "late generator"),
    "counts stay beside another problem": (0, {"a": "the load generator failed (exit 1): boom", "b": _summary(50)},
                                           False, "a: the load generator failed (exit 1): boom; 50 requests"),
    "a generator that gave no summary": (0, {"a": "the load generator did not start: boom", "b": _summary(50)},
                                         False, "a: the load generator did not start: boom"),
}


@pytest.mark.parametrize("case", sorted(JUDGED))
def test_the_judge_of_a_load(case):
    max_failed, summaries, passed, text = JUDGED[case]
    result = evaluate_load(EndLoad("l", "load l", max_failed, SPEC), summaries)
    assert result.passed is passed, result.detail
    assert text in result.detail
    assert result.to_json()["failed"] == sum(len(s["failures"]) for s in summaries.values() if isinstance(s, dict))


def test_failures_are_placed_against_the_updates():
    updates = [(101.0, 101.2, "one"), (103.0, 103.5, "two")]
    result = evaluate_load(EndLoad("l", "load l", 0, SPEC), {"a": _summary(50, [_fail(0.5), _fail(1.1), _fail(2.0),
                                                                                 _fail(3.25), _fail(3.75)]),
                                                             "b": _summary(50)}, updates)
    assert [f["when"] for f in result.failures] == [
        "before any update", "during update 'one'", "0.80 s after update 'one'", "during update 'two'",
        "0.25 s after update 'two'"]


def test_failure_times_share_one_origin():
    """Generators start one after another: times are printed from the first one's start."""
    late = dict(_summary(50, [_fail(1.0)]), t0=100.5)
    result = evaluate_load(EndLoad("l", "load l", 0, SPEC), {"a": late, "b": _summary(50, [_fail(1.2)])})
    assert [(f["client"], f["at"]) for f in result.failures] == [("b", 1.2), ("a", 1.5)]


def test_more_failures_than_listed_are_counted():
    result = evaluate_load(EndLoad("l", "load l", 0, SPEC), {"a": _summary(50, [_fail(i / 10) for i in range(25)]),
                                                             "b": _summary(50)})
    assert "25 of 100 requests failed" in result.detail and "and 15 more" in result.detail
    assert len(result.to_json()["failures"]) == 25


def test_the_rolling_update_loses_nothing_on_the_emulator():
    report = run_simulated(load(SCENARIOS / "rolling-update.yaml"), get("emulator", seed=1))
    loads = [r for r in report.results if r.name.startswith("load ")]
    assert len(loads) == 4 and all(r.passed for r in report.results), [r.detail for r in report.results]
    # 1 at the start, 20/s through 7 sleeps of 1 s, 1 after each of the 6 updates
    assert {r.requests for r in loads} == {1 + 7 * 20 + 6}
    assert all(r.outcomes == {"reachable": r.requests} for r in loads)


def test_an_outage_under_load_is_counted_and_listed(tmp_path):
    """The check can fail: every endpoint stops being ready for 1 s under a load of 10/s."""
    path = write(tmp_path, BASE + SERVICE + "checks:\n" + START +
                 "  - sleep: 1\n"
                 "  - update: {name: down, pods: [{name: web-1, ready: false}, {name: web-2, ready: false}]}\n"
                 "  - sleep: 1\n"
                 "  - update: {name: up, pods: [{name: web-1, ready: true}, {name: web-2, ready: true}]}\n"
                 "  - sleep: 1\n" + END)
    (result,) = run_simulated(load(path), get("emulator", seed=1)).results
    assert not result.passed
    # refused from the update that took the endpoints away until the one that gave them back
    assert result.outcomes == {"reachable": 22, "refused": 11}, result.outcomes
    assert [f["at"] for f in result.failures] == pytest.approx([1.0 + 0.1 * i for i in range(11)], abs=0.02)
    assert result.detail.startswith("11 of 33 requests failed (at most 0): client at 1.00 s (during update "
                                    "'down'): refused")
    assert result.failures[1]["when"] == "0.10 s after update 'down'"


def test_the_emulator_keeps_a_loads_rhythm_across_short_sleeps(tmp_path):
    """Forty sleeps of 0.05 s at 10/s: about 2 s of load, 21 requests, not one per sleep."""
    path = write(tmp_path, BASE + SERVICE + "checks:\n" + START + "  - sleep: 0.05\n" * 40 + END)
    (result,) = run_simulated(load(path), get("emulator", seed=1)).results
    assert result.passed and result.requests == 21, result.detail
