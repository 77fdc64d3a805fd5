"""Setup and comparison for BPF fixtures: the BPF program (BPF_PROG_TEST_RUN) and the oracle
run the same frame from the same state (dataplane.run.fuzz.twin); every result must agree byte
for byte."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from dataplane.backends.ebpf.program import NodeProgram
from dataplane.contract.limits import CtTimeouts
from dataplane.contract.render import NodeConfig
from dataplane.run.fuzz.twin import Twin, first_difference

NODE_IP = IPv4Address("10.240.0.1")


class Pair(Twin):
    """A Twin for fixtures: every frame must agree (send), states compared whole
    (assert_same_state), and sockets of the node's own opened in the fixture namespace."""

    def __init__(self, prog: NodeProgram, table, node: str = "node1", seed: int = 7, timeouts=None,
                 config=None, netns: str | None = None):
        self.sockets: list = []          # what open_socket opened, as the oracle sees it
        self._held: list = []
        config = config or NodeConfig(NODE_IP, IPv4Network("10.0.0.0/16"), masquerade=True,
                                      non_masquerade=(IPv4Network("10.0.0.0/16"),))
        super().__init__(prog, table, config, node=node, seed=seed, timeouts=CtTimeouts(**(timeouts or {})),
                         netns=netns, node_sockets=self._socket_holds)

    def _socket_holds(self, proto: int, remote, rport: int, port: int) -> bool:
        """What the BPF side's socket lookup finds in the fixture namespace, for the oracle: the
        sockets the test opened there (`open_socket`)."""
        return any(s["proto"] == proto and s["port"] == port and s["remote"] in ((IPv4Address(remote), rport), None)
                   for s in self.sockets)

    def open_socket(self, proto: int, port: int, remote: tuple | None = None):
        """A socket of the node's own in the fixture namespace, on node IP:port: connected to
        remote (ip, port), or (remote None) listening. Kept until close_sockets()."""
        import socket as so
        from dataplane.lab import netns
        with netns.inside(self.netns):
            kind = so.SOCK_STREAM if proto == 6 else so.SOCK_DGRAM
            if remote is not None:
                # a connected socket needs a route to its peer: the peer's address, here too
                from pyroute2 import IPRoute
                with IPRoute() as ipr:
                    lo = ipr.link_lookup(ifname="lo")[0]
                    if not ipr.get_addr(address=str(remote[0])):
                        ipr.addr("add", index=lo, address=str(remote[0]), prefixlen=32)
            if remote is not None and proto == 6:
                # ... and, for TCP, a listener there
                server = so.socket(so.AF_INET, so.SOCK_STREAM)
                server.setsockopt(so.SOL_SOCKET, so.SO_REUSEADDR, 1)
                server.bind((str(remote[0]), remote[1]))
                server.listen(8)
                self._held.append(server)
            s = so.socket(so.AF_INET, kind)
            self._held.append(s)
            s.setsockopt(so.SOL_SOCKET, so.SO_REUSEADDR, 1)
            s.bind((str(NODE_IP), port))
            if remote is not None:
                s.connect((str(remote[0]), remote[1]))
            elif proto == 6:
                s.listen(8)
        self.sockets.append({"proto": proto, "port": port,
                             "remote": (IPv4Address(remote[0]), remote[1]) if remote else None})

    def close_sockets(self) -> None:
        for s in self._held:
            s.close()
        self._held.clear()
        self.sockets.clear()

    def send(self, hook: str, frame) -> tuple:
        """Run `frame` at `hook` on both; assert they agree; return both."""
        got, want = self.run(hook, bytes(frame))
        assert got.verdict == want.verdict, f"verdict: bpf {got.verdict}, oracle {want.verdict} ({want.why})"
        assert got.data == want.data, (f"bytes differ at {first_difference(got.data, want.data)}:\n"
                                       f" bpf    {got.data.hex()}\n oracle {want.data.hex()}\n {want.why}")
        return got, want

    def assert_same_state(self) -> None:
        assert self.differences() == []
