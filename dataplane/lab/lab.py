"""A live lab: build a LabPlan in the kernel, run test servers in it, tear it all down.

Teardown is driven by the lab record and the namespace names, not by this object's memory, so the
same code cleans up after a finished run, an exception, Ctrl-C, or a process killed with SIGKILL
(`dataplane down`).
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from ..errors import LabError
from . import cgroups, netns, state
from .plan import LabPlan, make_plan
from ..spec.topology import TopologySpec
from .names import lab_of_netns, pin_dir, pinned_labs

NUD_PERMANENT = 0x80
SCOPE_LINK = 253
SERVER_START_TIMEOUT = 15.0


def _quiet(msg: str) -> None:
    pass


@dataclass
class Lab:
    plan: LabPlan
    record: state.LabRecord
    progress: callable = _quiet
    _servers: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.plan.lab

    @property
    def spec(self) -> TopologySpec:
        return self.plan.spec

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def create(cls, spec: TopologySpec, name: str, scenario: str = "", progress=_quiet,
               backend: str = "none", frontends=()) -> "Lab":
        """Build the lab and start its servers. On any failure, what was built is removed."""
        check_free(name)
        plan = make_plan(spec, name, frontends)
        record = state.LabRecord(
            name=name, scenario=scenario, network=spec.network, backend=backend, created=time.time(),
            owner_pid=os.getpid(), namespaces=[ns.name for ns in plan.namespaces],
            objects={ns.obj: ns.name for ns in plan.namespaces},
            addresses=_addresses(spec), roles={ns.obj: ns.role for ns in plan.namespaces})
        record.save()  # first, so that even a SIGKILL from here on leaves something to clean up
        lab = cls(plan, record, progress)
        try:
            lab._build()
            lab._make_cgroups()
            lab._start_servers()
        except BaseException:
            teardown(name, progress)
            raise
        record.ready = True
        record.save()
        return lab

    def teardown(self) -> list[str]:
        return teardown(self.name, self.progress)

    # -- building --------------------------------------------------------------------------------

    def _build(self) -> None:
        plan = self.plan
        self.progress(f"creating {len(plan.namespaces)} namespaces ({plan.spec.network} model)")
        for ns in plan.namespaces:
            netns.create(ns.name)
        for ns, key, value in plan.sysctls:
            netns.sysctl(ns, key, value)

        self.progress(f"wiring {len(plan.veths)} veth pairs and {len(plan.bridges)} bridges")
        mtu = plan.spec.mtu
        for ns in plan.namespaces:
            with netns.ipr(ns.name) as ipr:
                for v in (v for v in plan.veths if v.ns == ns.name):
                    # Created here with the peer placed straight into `v.peer_ns`: neither end
                    # ever exists in the root namespace.
                    peer_fd = os.open(netns.path(v.peer_ns), os.O_RDONLY)
                    try:
                        ipr.link("add", ifname=v.ifname, kind="veth", address=v.mac, mtu=v.mtu or mtu,
                                 peer={"ifname": v.peer_ifname, "address": v.peer_mac,
                                       "net_ns_fd": peer_fd, "mtu": v.peer_mtu or mtu})
                    finally:
                        os.close(peer_fd)

        self.progress(f"addressing: {len(plan.addresses)} addresses, {len(plan.routes)} routes")
        for ns in plan.namespaces:
            mine = lambda items: [x for x in items if x.ns == ns.name]  # noqa: E731
            with netns.ipr(ns.name) as ipr:
                for b in mine(plan.bridges):
                    ipr.link("add", ifname=b.ifname, kind="bridge", mtu=b.mtu or mtu)
                    master = _index(ipr, b.ifname)
                    for port in b.ports:
                        ipr.link("set", index=_index(ipr, port), master=master)
                for link in ipr.get_links():
                    ipr.link("set", index=link["index"], state="up")
                for a in mine(plan.addresses):
                    ip, prefix = a.cidr.split("/")
                    ipr.addr("add", index=_index(ipr, a.ifname), address=ip, prefixlen=int(prefix))
                for n in mine(plan.neighbours):
                    ipr.neigh("add", dst=n.ip, lladdr=n.mac, ifindex=_index(ipr, n.ifname),
                              state=NUD_PERMANENT)
                # Link-scope routes first: the gateways of the others are reached through them.
                for r in sorted(mine(plan.routes), key=lambda r: r.gateway is not None):
                    kw = {"dst": "0.0.0.0/0" if r.dst == "default" else r.dst,
                          "oif": _index(ipr, r.ifname)}
                    if r.gateway:
                        kw["gateway"] = r.gateway
                    else:
                        kw["scope"] = SCOPE_LINK
                    ipr.route("add", **kw)

    def _make_cgroups(self) -> None:
        """One cgroup v2 per node, for the node's own processes (see cgroups.py)."""
        nodes = [n.name for n in self.spec.nodes]
        root, mounted = cgroups.ensure_root()
        if mounted:
            self.progress(f"mounted a cgroup2 hierarchy at {root} for the lab's node processes")
        self.record.cgroup_dir = cgroups.lab_dir(root, self.name)
        self.record.save()                 # before creating: teardown finds it after any failure
        self.record.cgroups = cgroups.create(root, self.name, nodes)
        self.record.save()

    def cgroup_of(self, obj: str) -> str | None:
        """The cgroup a process of this object joins: a node's own, None for pods and hosts."""
        return self.record.cgroups.get(obj)

    def _start_servers(self) -> None:
        spec = self.spec
        objs = [o for o in (*spec.pods, *spec.nodes, *spec.hosts) if o.ports]
        if not objs:
            return
        self.progress(f"starting test servers in {len(objs)} namespaces")
        logdir = state.lab_files(self.name, create=False)
        os.makedirs(logdir, exist_ok=True)
        started = {}
        for obj in objs:
            argv = [sys.executable, "-m", "dataplane.lab.workload.netexec", "--name", obj.name]
            for p in obj.ports:
                argv += ["--tcp" if p.protocol == "TCP" else "--udp", str(p.port)]
            log = open(os.path.join(logdir, obj.name + ".log"), "w")
            proc = netns.popen(self.record.objects[obj.name], argv, stdout=subprocess.PIPE,
                               stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                               cgroup=self.cgroup_of(obj.name))
            log.close()
            started[obj.name] = proc
            self.record.servers[obj.name] = proc.pid
        self.record.save()
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        for name, proc in started.items():
            line = _read_line(proc, deadline)
            if line.strip() != "ready":
                raise LabError(f"test server in {name} did not start: "
                               f"{line.strip() or 'no answer'} (log: {logdir}/{name}.log)")
            proc.stdout.close()
        self._servers = started  # held so the Popen objects outlive this call quietly


def _read_line(proc, deadline) -> str:
    fd = proc.stdout.fileno()
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return buf.decode()
        chunk = os.read(fd, 256)
        if not chunk:
            break
        buf += chunk
    return buf.decode()


def _index(ipr, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"link {ifname} not found")
    return found[0]


def _addresses(spec: TopologySpec) -> dict[str, str]:
    out = {o.name: str(o.ip) for o in (*spec.nodes, *spec.pods, *spec.hosts)}
    out["underlay"] = str(spec.node_gateway)
    return out


# -- finding and removing labs -------------------------------------------------------------------

def namespaces_of(name: str) -> list[str]:
    """Every namespace of a lab: from its record, and from the names present on the machine."""
    rec = state.load(name)
    found = set(rec.namespaces if rec else ())
    found.update(ns for ns in netns.list_all() if lab_of_netns(ns) == name)
    return sorted(found)


def check_free(name: str) -> None:
    if state.load(name) is not None or namespaces_of(name) or os.path.isdir(pin_dir(name)):
        raise LabError(f"a lab named {name!r} already exists; remove it with "
                       f"`dataplane down {name}` or choose another name with --name")


def all_labs() -> list[str]:
    names = set(state.all_names())
    names.update(filter(None, (lab_of_netns(ns) for ns in netns.list_all())))
    names.update(cgroups.labs_in(cgroups.mounted_root()))
    names.update(state.agents().values())
    names.update(pinned_labs())
    return sorted(names)


def teardown(name: str, progress=_quiet) -> list[str]:
    """Remove every trace of lab `name`: processes, namespaces (and with them every link, address,
    route, TC filter and rule inside them), pinned BPF objects, the record. Returns what was removed.
    Safe to call on a half-built or already removed lab."""
    removed = []
    # A second Ctrl-C must not leave a half-removed lab behind.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
    try:
        rec = state.load(name)
        # the agent first: it would otherwise repair what is being removed
        for pid in netns.stop(state.agent_pids(name), grace=30.0):
            removed.append(f"agent {pid}")
        nss = namespaces_of(name)
        if nss:
            progress(f"tearing down lab {name}: {len(nss)} namespaces")
        for ns in nss:
            for pid in netns.kill_all_in(ns):
                removed.append(f"process {pid} in {ns}")
        for pin in sorted({*(rec.pinned if rec else ()), *([pin_dir(name)] if os.path.isdir(pin_dir(name)) else [])}):
            if os.path.lexists(pin):
                _unpin(pin)
                removed.append(f"pinned {pin}")
        for ns in nss:
            netns.remove(ns)
            removed.append(f"netns {ns}")
        root = cgroups.mounted_root()
        for cg in {rec.cgroup_dir if rec else "", cgroups.lab_dir(root, name) if root else ""} - {""}:
            if os.path.isdir(cg):
                if cgroups.remove(cg):
                    removed.append(f"cgroup {cg}")
                else:
                    progress(f"cgroup {cg} still has processes; `dataplane down {name}` again removes it")
        if cgroups.unmount_if_unused():
            removed.append(f"mount {cgroups.LAB_MOUNT}")
        if rec is not None:
            rec.delete()
            removed.append(f"record {rec.path}")
        logdir = state.lab_files(name, create=False)
        if os.path.isdir(logdir):
            shutil.rmtree(logdir, ignore_errors=True)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    return removed


def _unpin(p: str) -> None:
    if os.path.isdir(p) and not os.path.islink(p):
        for child in os.listdir(p):
            _unpin(os.path.join(p, child))
        os.rmdir(p)
    else:
        os.unlink(p)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()

