"""Judging check results: the one place that decides pass or fail, for every kind of lab."""
from __future__ import annotations

from ipaddress import IPv4Address

from dataplane.judge.checks import evaluate
from dataplane.spec.checks import CheckSpec


def spec(**kw):
    base = dict(name="c", client="client", target="pod/web-1", ip=IPv4Address("10.0.1.3"), port=8080,
                protocol="TCP", expect="reachable")
    base.update(kw)
    return CheckSpec(**base)


def ok(host="web-1", src="10.0.1.2"):
    return {"outcome": "reachable", "hostname": host, "clientip": f"{src}:40000", "error": None}


def test_reachable_with_backend_and_source():
    r = evaluate(spec(backends=("web-1",), source=IPv4Address("10.0.1.2")), [ok()])
    assert r.passed and r.answered == {"web-1": 1} and r.sources == {"10.0.1.2": 1}


def test_wrong_backend_fails():
    r = evaluate(spec(backends=("web-1",), requests=2), [ok(), ok("web-2")])
    assert not r.passed and "answered by web-2, allowed: web-1" in r.detail


def test_wrong_source_fails():
    r = evaluate(spec(source=IPv4Address("10.0.1.2"), source_label="client client"), [ok(src="10.240.0.1")])
    assert not r.passed and "server saw source 10.240.0.1, expected 10.0.1.2" in r.detail


def test_outcome_mismatch_names_the_error():
    r = evaluate(spec(), [{"outcome": "dropped", "hostname": None, "clientip": None, "error": "timeout"}])
    assert not r.passed and r.detail == "expected reachable, got dropped x1 (timeout x1)"


def test_expected_refusal_passes():
    r = evaluate(spec(expect="refused"), [{"outcome": "refused", "hostname": None, "clientip": None,
                                          "error": "ECONNREFUSED"}])
    assert r.passed and r.detail == "refused x1 (ECONNREFUSED)"


def test_missing_results_fail():
    assert not evaluate(spec(requests=3), [ok(), ok()]).passed


def test_one_bad_request_among_many_fails():
    bad = {"outcome": "refused", "hostname": None, "clientip": None, "error": "ECONNREFUSED"}
    assert not evaluate(spec(requests=3), [ok(), bad, ok()]).passed


def test_capture_judge_catches_an_untranslated_reply():
    from scapy.layers.inet import IP as SIP, TCP as STCP
    from scapy.layers.l2 import Ether
    from dataplane.judge.capture import judge
    s = spec(target="service/web", ip=IPv4Address("10.96.0.10"), port=80, source=IPv4Address("10.0.1.2"))
    good_reply = bytes(Ether() / SIP(src="10.96.0.10", dst="10.0.1.2") / STCP(sport=80, dport=40000))
    bad_reply = bytes(Ether() / SIP(src="10.0.2.2", dst="10.0.1.2") / STCP(sport=8080, dport=40001))
    at_backend = bytes(Ether() / SIP(src="10.0.1.2", dst="10.0.2.2") / STCP(sport=40000, dport=8080))
    backends = {"web-2": IPv4Address("10.0.2.2")}
    problems, summary = judge(s, IPv4Address("10.0.1.2"), backends, {"client": [good_reply], "web-2": [at_backend]})
    assert problems == [] and "only from 10.96.0.10:80" in summary
    problems, _ = judge(s, IPv4Address("10.0.1.2"), backends, {"client": [good_reply, bad_reply], "web-2": [at_backend]})
    assert problems == ["capture: the client saw replies from 10.0.2.2:8080, not only from 10.96.0.10:80"]
    masq = bytes(Ether() / SIP(src="10.240.0.1", dst="10.0.2.2") / STCP(sport=40000, dport=8080))
    problems, _ = judge(s, IPv4Address("10.0.1.2"), backends, {"client": [good_reply], "web-2": [masq]})
    assert problems == ["capture: web-2 saw source 10.240.0.1, expected 10.0.1.2"]
    problems, _ = judge(s, IPv4Address("10.0.1.2"), backends, {"client": [], "web-2": []})
    assert "capture: no reply reached the client" in problems and "capture: no request reached any backend" in problems
