"""What a check's capture proves: from the frames seen on the client's and each possible backend's
eth0 (recorded by a live lab's sniffer or by the emulator's links), the translation on the wire
was right: the client only ever sees the address it sent to, and each backend sees its own address
as destination and the expected source."""
from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

L4 = {"TCP": TCP, "UDP": UDP}




def judge(spec, client_ip, backend_ips: dict, frames: dict) -> tuple[list, str]:
    """(problems, summary) of the frames a check's capture recorded."""
    l4 = L4[spec.protocol]
    problems = []
    replies = [f for f in map(Ether, frames.get(spec.client, [])) if IP in f and l4 in f and ICMP not in f
               and f[IP].dst == str(client_ip)]
    if not replies:
        problems.append("capture: no reply reached the client")
    wrong = sorted({f"{f[IP].src}:{f[l4].sport}" for f in replies
                    if (f[IP].src, f[l4].sport) != (str(spec.ip), spec.port)})
    if wrong:
        problems.append(f"capture: the client saw replies from {', '.join(wrong)}, "
                        f"not only from {spec.ip}:{spec.port}")
    seen_at = []
    for name, ip in backend_ips.items():
        got = [f for f in map(Ether, frames.get(name, [])) if IP in f and l4 in f and ICMP not in f
               and f[IP].dst == str(ip)]
        if not got:
            continue
        seen_at.append(name)
        if any(f[IP].dst == str(spec.ip) and str(spec.ip) != str(ip) for f in got):
            problems.append(f"capture: {name} received packets still addressed to {spec.ip}")
        if spec.source is not None:
            srcs = sorted({f[IP].src for f in got} - {str(spec.source)})
            if srcs:
                problems.append(f"capture: {name} saw source {', '.join(srcs)}, expected {spec.source}")
    if not seen_at:
        problems.append("capture: no request reached any backend")
    summary = (f"capture: client saw replies only from {spec.ip}:{spec.port}; "
               f"{', '.join(seen_at)} saw {'their' if len(seen_at) > 1 else 'its'} own address as destination")
    return problems, summary
