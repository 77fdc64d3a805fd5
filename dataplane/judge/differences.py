"""Where the backends may disagree, and only there: one table, rendered into docs/differences.md
and applied to checks.

The backends are held to one behaviour: a scenario's checks must have the same outcome on every
backend. The exceptions are places where kube-proxy's own modes behave differently from each
other; each is a Difference here, naming the situation, the outcome per backend and why. A check
in that situation expects its backend's outcome from this table; every other check expects what
its scenario says, on every backend.

The scenario's own `expect` is the reference datapath's outcome (the emulator backend runs it);
a check that says otherwise in a documented situation fails and names this table.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

REFERENCE = "emulator"


@dataclass(frozen=True)
class Difference:
    key: str
    situation: str
    outcomes: dict          # backend -> outcome
    why: str


DIFFERENCES = (
    Difference(
        "cluster-ip-unserved-port",
        "a new connection to a service's cluster IP on a port or protocol the service does not serve",
        {"ebpf": "refused", "emulator": "refused", "nftables": "refused",
         "iptables": "dropped", "iptables-legacy": "dropped"},
        "kube-proxy's nftables mode rejects whatever is still addressed to a cluster IP after DNAT "
        "(`cluster-ips-check`: `ip daddr @cluster-ips reject`); its iptables mode has no rule for it, so "
        "the packet is routed like any other, out of the node's default route, and ends in an ICMP "
        "network unreachable or in silence (kube-proxy's TestClusterIPGeneral: \"svc1 does not accept "
        "svc2's ports\" has no output). The eBPF dataplane follows the nftables mode.",
    ),
)
BY_KEY = {d.key: d for d in DIFFERENCES}


def situations(spec, table) -> set[str]:
    """The documented situations a check is in, given the services at the time it runs."""
    found = set()
    for svc in table or ():
        if str(svc.cluster_ip) == str(spec.ip) and not any(
                sp.port == spec.port and sp.protocol == spec.protocol for sp in svc.ports):
            found.add("cluster-ip-unserved-port")
    return found


def expectation(spec, table, backend: str):
    """(the check as `backend` must pass it, the Difference applied or None, a conflict message)."""
    for key in sorted(situations(spec, table)):
        diff = BY_KEY[key]
        reference = diff.outcomes[REFERENCE]
        if spec.expect != reference:
            return spec, diff, (f"the scenario expects {spec.expect} where docs/differences.md ({key}) "
                                f"says the reference outcome is {reference}")
        if backend in diff.outcomes:
            return replace(spec, expect=diff.outcomes[backend]), diff, None
    return spec, None, None


def judged(spec, table, backend: str, run):
    """Run a check (`run(spec) -> CheckResult`) with the expectation this table gives `backend`
    in the check's situation; the result names the difference that applied."""
    expected, diff, conflict = expectation(spec, table, backend)
    result = run(expected)
    if conflict:
        return replace(result, passed=False, detail=f"{conflict}; {result.detail}")
    if diff is not None and expected.expect != spec.expect:
        return replace(result, difference=diff.key)
    return result


def markdown_table() -> str:
    backends = ["ebpf", "iptables", "iptables-legacy", "nftables", "emulator"]
    lines = ["| situation | " + " | ".join(f"`{b}`" for b in backends) + " | why |",
             "| --- |" + " --- |" * (len(backends) + 1)]
    for d in DIFFERENCES:
        lines.append(f"| `{d.key}`: {d.situation} | " + " | ".join(d.outcomes[b] for b in backends)
                     + f" | {d.why} |")
    return "\n".join(lines)
