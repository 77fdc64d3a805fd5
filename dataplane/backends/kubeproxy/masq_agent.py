"""ip-masq-agent's egress masquerade rules. ip-masq-agent writes iptables rules whichever mode
kube-proxy runs in, so the iptables and nftables backends both apply this text (iptables-restore
--noflush; iptables-nft beside the nftables table)."""
from __future__ import annotations

from ...spec.topology import TopologySpec

MASQ_AGENT_CHAIN = "IP-MASQ-AGENT"


def masq_agent_text(spec: TopologySpec) -> str | None:
    """ip-masq-agent's rules (nat IP-MASQ-AGENT and its POSTROUTING jump), or None when the lab
    has egress masquerade off."""
    m = spec.masquerade
    if m is None or not m.enabled:
        return None
    c = MASQ_AGENT_CHAIN
    local = '"ip-masq-agent: local traffic is not subject to MASQUERADE"'
    cidrs = ([] if m.masq_link_local else ["169.254.0.0/16"]) + [str(x) for x in m.non_masquerade]
    rules = [f"-A {c} -d {cidr} -m comment --comment {local} -j RETURN" for cidr in cidrs]
    rules.append(f'-A {c} -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE '
                 f'(must be last in chain)" -j MASQUERADE --random-fully')
    jump = ('-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all '
            f'non-LOCAL destination traffic to our custom {c} chain" -m addrtype ! --dst-type LOCAL -j {c}')
    return "\n".join(["*nat", f":{c} - [0:0]", *rules, jump, "COMMIT", ""])
