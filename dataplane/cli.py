"""The `dataplane` command: build lab clusters of network namespaces and run scenarios on them."""
from __future__ import annotations

import json
import os
import sys
import time

import click

from . import backends, doctor
from .errors import DataplaneError, LabError, PrerequisiteError

EPILOG_RUN = """\b
Examples:
  sudo dataplane run scenarios/flat.yaml
  sudo dataplane run scenarios/nodeport.yaml --backend iptables
  sudo dataplane run scenarios/multiport.yaml --backend all     # every backend, one table
  sudo dataplane run scenarios/island.yaml --json > report.json
  sudo dataplane run scenarios/flat.yaml --keep --name demo   # then: dataplane exec demo client -- sh
"""


def _progress(enabled: bool):
    def say(msg: str) -> None:
        if enabled:
            click.echo(click.style("» ", fg="cyan") + msg, err=True)
    return say


def backend_options(command):
    """--seed, --map-size and --ct-timeout: declared once, for every command that starts a backend.
    Each applies only to the backends that take it (backends.takers)."""
    for option in reversed((
        click.option("--seed", type=click.IntRange(0, 2**32 - 1),
                     help="Seed of the backend's choices (printed with every run): the same seed replays the "
                          f"same choices ({', '.join(backends.takers('seed'))}; kube-proxy's modes choose with "
                          "the kernel's random)."),
        click.option("--map-size", "map_sizes", multiple=True, metavar="NAME=ENTRIES",
                     help="eBPF map capacity: services, backends, conntrack (default: 2 entries per flow of "
                          "kube-proxy's max(131072, 32768 x CPUs)), affinity or nosnat (repeatable; "
                          f"{', '.join(backends.takers('sizes'))})."),
        click.option("--ct-timeout", "ct_timeouts", multiple=True, metavar="NAME=SECONDS",
                     help="Conntrack lifetime: syn (unanswered), tcp (established, default 24 h), close_wait "
                          "(closed one way, 1 h), close (closed both ways or reset, 10 s) or udp (repeatable; "
                          f"{', '.join(backends.takers('timeouts'))})."),
    )):
        command = option(command)
    return command


def _agent_periods(command):
    for option in reversed((
        click.option("--reconcile-period", default=2.0, show_default=True, type=click.FloatRange(0.2, 3600),
                     help="Seconds between the agent's checks for rules or map entries changed behind its back."),
        click.option("--collect-period", default=10.0, show_default=True, type=click.FloatRange(0.2, 3600),
                     help="Seconds between garbage collections of expired conntrack and affinity entries (eBPF)."),
    )):
        command = option(command)
    return command


def _backend_settings(seed, map_sizes, ct_timeouts) -> dict:
    """The options given on the command line (None: not given)."""
    return backends.settings(seed, map_sizes, ct_timeouts)


def _load(path):
    from .spec.scenario import load
    return load(path)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dataplane")
def cli():
    """A Kubernetes-shaped lab cluster of network namespaces, and the service dataplanes to
    compare on it.

    \b
    Typical session:
      sudo dataplane doctor                          # is this machine ready?
      sudo dataplane run scenarios/flat.yaml   # build, check, tear down
      sudo dataplane up scenarios/island.yaml --name lab1
      sudo dataplane exec lab1 client -- curl -s 10.0.2.2:8080/hostname
      sudo dataplane down lab1
    """


@cli.command(epilog=EPILOG_RUN)
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--backend", "-b", default=backends.DEFAULT, show_default=True,
              type=click.Choice(sorted(backends.BACKENDS) + sorted(backends.ALIASES) + ["all"]),
              help="The dataplane that serves services; `all` runs the scenario on each of "
                   + ", ".join(backends.CONFORMANCE) + " in turn and prints one table.")
@click.option("--name", "lab_name", help="Lab name (default: the scenario's name).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--keep", is_flag=True, help="Leave the lab up after the checks (remove it with `down`).")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages on stderr.")
@click.option("--explain", "explain_failures", is_flag=True,
              help="Under each failing check, the path one of its connections takes on this backend "
                   "(`dataplane explain`: the reference model for ebpf, the installed rules for kube-proxy's modes).")
@backend_options
def run(scenario, backend, lab_name, as_json, keep, quiet, explain_failures, seed, map_sizes, ct_timeouts):
    """Build the lab of SCENARIO, program a backend, run its checks, tear down.

    Prints a table of checks (or, with --json, {"scenario", "backend", "passed", "checks": [...]})
    and exits 0 only if every check passed. The lab is removed however the run ends (failure,
    Ctrl-C, SIGTERM) unless --keep is given.
    """
    from . import report
    from .run.runner import run_live
    sc = _load(scenario)
    settings = _backend_settings(seed, map_sizes, ct_timeouts)
    progress = _progress(not quiet)
    if backend == "all":
        if keep:
            raise click.UsageError("--keep needs one backend (with `all`, each backend's lab replaces the last)")
        chosen = [backends.get(name, strict=False, **settings) for name in backends.CONFORMANCE]
        for be in chosen:
            doctor.require(*be.needs)
        reps = [run_live(sc, be, lab_name or sc.name, progress=progress, explain=explain_failures) for be in chosen]
        click.echo(report.matrix_json(reps) if as_json else report.matrix(reps))
        if explain_failures and not as_json:
            for rep in reps:
                for r in rep.results:
                    if r.explanation:
                        click.echo(f"FAIL on {rep.backend}: {r.name}")
                        click.echo("\n".join(f"  {line}" for line in r.explanation))
        sys.exit(0 if all(r.passed for r in reps) else 1)
    be = backends.get(backend, **settings)
    doctor.require(*be.needs)
    rep = run_live(sc, be, lab_name or sc.name, keep=keep, progress=progress, explain=explain_failures)
    click.echo(report.as_json(rep) if as_json else report.table(rep))
    sys.exit(0 if rep.passed else 1)


@cli.command(epilog="""\b
Examples:
  sudo dataplane up scenarios/flat.yaml
  sudo dataplane up scenarios/island.yaml --name lab2     # a second lab beside the first
  dataplane up scenarios/island.yaml --dry-run            # print the plan, build nothing
""")
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--name", "lab_name", help="Lab name (default: the scenario's name).")
@click.option("--backend", "-b", default=backends.DEFAULT, show_default=True,
              type=click.Choice(sorted(backends.BACKENDS) + sorted(backends.ALIASES)))
@click.option("--dry-run", is_flag=True, help="Print every namespace, link, address and route; create nothing.")
@backend_options
@_agent_periods
def up(scenario, lab_name, backend, dry_run, seed, map_sizes, ct_timeouts, reconcile_period, collect_period):
    """Build the lab of SCENARIO and leave it running (its test servers too).

    Look inside with `dataplane exec LAB NAME -- CMD`, list labs with `dataplane status`,
    remove with `dataplane down LAB`.
    """
    from .lab.plan import make_plan
    from .lab.lab import Lab
    from .run import agent
    from .run.agent.desired import scenario_digest
    sc = _load(scenario)
    name = lab_name or sc.name
    if dry_run:
        click.echo(make_plan(sc.topology, name, sc.frontend_routes).describe())
        return
    be = backends.get(backend, **_backend_settings(seed, map_sizes, ct_timeouts))
    if be.simulated:
        raise click.UsageError(f"backend {backend} is simulated: there is no lab to bring up (use `run`)")
    doctor.require(*be.needs)
    say = _progress(True)
    say(f"building lab {name} from {sc.file}")
    lab = Lab.create(sc.topology, name, sc.file, say, be.name, sc.frontend_routes)
    try:
        rec = lab.record
        rec.scenario = os.path.abspath(sc.file)
        rec.scenario_sha256 = scenario_digest(sc.file)
        rec.agent = {"options": {"seed": be.seed, "map_size": list(map_sizes), "ct_timeout": list(ct_timeouts)},
                     "reconcile_period": reconcile_period, "collect_period": collect_period}
        rec.save()
        for line in agent.start(name, progress=say):
            say(line)
    except BaseException:
        lab.teardown()
        raise
    topo = sc.topology
    click.echo(f"lab {name} is up: {topo.network} model, {len(topo.nodes)} nodes, {len(topo.pods)} pods, "
               f"{len(topo.hosts)} outside hosts; backend {be.name}, served by agent {agent.running(name)[0]}")
    for obj in (*topo.nodes, *topo.pods, *topo.hosts):
        click.echo(f"  {obj.name:<14} {str(obj.ip):<15} netns {lab.record.objects[obj.name]}")
    click.echo(f"change it with: dataplane apply {name} FILE...; remove it with: dataplane down {name}")


@cli.command(name="import", epilog="""\b
Examples:
  kubectl get svc,endpointslices -A -o yaml > dump.yaml
  dataplane import dump.yaml -o mycluster.yaml        # then: sudo dataplane run mycluster.yaml
  dataplane import tests/data/kubectl-dump.yaml       # the scenario on stdout, notes on stderr
""")
@click.argument("dump", type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the scenario here (default: stdout).")
@click.option("--name", "scenario_name", help="The scenario's name (default: the dump's file name).")
@click.option("--model", type=click.Choice(["flat", "island", "air-gapped"]), default="island", show_default=True,
              help="The lab's network model.")
def import_cmd(dump, output, scenario_name, model):
    """Turn a cluster's services (`kubectl get svc,endpointslices -A -o yaml`) into a scenario.

    Nodes come from the endpoints' nodeName, pods from the endpoint addresses (named after their
    targetRef, with their conditions and ports), pod CIDRs from the addresses, and the services
    are kept as they are. Names too long for the lab are shortened, and everything the lab cannot
    hold (IPv6, SCTP, headless, endpoints without a node, ...) is listed on stderr and at the top
    of the scenario. The scenario has no checks: add some, or use it for `up` and benchmarks.
    """
    from .spec.importer import import_dump
    imported = import_dump(dump, scenario_name, model)
    text = imported.text(dump)
    if output:
        with open(output, "w") as f:
            f.write(text)
        click.echo(f"wrote {output}: {len(imported.scenario['topology']['nodes'])} nodes, "
                   f"{len(imported.scenario['topology']['pods'])} pods, {len(imported.scenario['services'])} "
                   f"services", err=True)
    else:
        click.echo(text, nl=False)
    for k, v in sorted(imported.renamed.items()):
        click.echo(f"renamed: {k} -> {v}", err=True)
    for note in imported.notes:
        click.echo(f"not represented: {note}", err=True)


@cli.command(epilog="""\b
Examples:
  sudo dataplane up scenarios/clusterip.yaml --name demo
  sudo dataplane apply demo scenarios/changes/new-service.yaml     # an update document
  sudo dataplane apply demo scenarios/changes/web-nodeport.yaml    # a Kubernetes manifest
  kubectl get svc,endpointslices -A -o yaml > dump.yaml && sudo dataplane apply demo dump.yaml
""")
@click.argument("lab")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
def apply(lab, files):
    """Apply FILES to the running LAB: Kubernetes manifests (Service, EndpointSlice, or a List of
    them; a Service replaces the one of its name, as `kubectl apply`), or update documents (the
    body of a scenario `update:` step: services:, deleteServices:, pods:).

    Every file is validated first, with the same errors as `run` (file, line, field); if one is
    invalid, or the backend refuses the result (a full map), nothing changes. Prints what changed
    in the services and in the backend.
    """
    from .run import agent
    doctor.require("root")
    answer = agent.request(lab, "apply", files=[os.path.abspath(f) for f in files])
    for line in answer["lines"]:
        click.echo(line)


@cli.command(epilog="""\b
Examples:
  sudo dataplane delete demo service/default/web
  sudo dataplane delete demo service/web            # namespace default
""")
@click.argument("lab")
@click.argument("what", metavar="service/[NAMESPACE/]NAME")
def delete(lab, what):
    """Delete a service from the running LAB (its rules or map entries go; clients are refused)."""
    from .run import agent
    kind, _, key = what.partition("/")
    if kind not in ("service", "svc") or not key:
        raise click.UsageError(f"expected service/NAMESPACE/NAME or service/NAME, got {what!r}")
    doctor.require("root")
    answer = agent.request(lab, "delete", service=key)
    for line in answer["lines"]:
        click.echo(line)


@cli.command(epilog="""\b
Examples:
  sudo dataplane reload demo                        # new agent, programs replaced, maps kept
  sudo dataplane reload demo --ct-timeout udp=30    # the same, with another UDP lifetime
  sudo dataplane reload demo --seed 7               # new flows hash with another seed
""")
@click.argument("lab")
@backend_options
def reload(lab, seed, map_sizes, ct_timeouts):
    """Restart LAB's agent (or start one after it was killed); the new one adopts the dataplane.

    On the eBPF backend the programs are rebuilt from bpf/ and swapped into the same TC filters
    and cgroup hooks while the pinned maps are kept: established connections, UDP flows,
    masquerade mappings, affinities and counters carry on. Maps of another layout (a changed
    struct, map declaration or --map-size) are refused before anything changes. kube-proxy's modes
    re-render and re-apply their rules; the kernel's conntrack keeps their flows. Options given
    here replace the lab's; options not given stay as they were.
    """
    from .lab import state
    from .errors import LabError
    from .run import agent
    doctor.require("root")
    rec = state.load(lab)
    if rec is None or not rec.ready:
        raise LabError(f"no complete lab named {lab!r} (see `dataplane status`)")
    be = backends.get(rec.backend, **_backend_settings(seed, map_sizes, ct_timeouts))
    doctor.require(*be.needs)
    old = dict(rec.agent.get("options", {}))
    new = dict(old)
    if seed is not None:
        new["seed"] = seed
    if map_sizes:
        new["map_size"] = list(map_sizes)
    if ct_timeouts:
        new["ct_timeout"] = list(ct_timeouts)
    say = _progress(True)
    stopped = agent.stop(lab)
    if stopped:
        say(f"stopped agent {', '.join(map(str, stopped))}; the dataplane keeps serving")
    rec = state.load(lab)
    rec.agent["options"] = new
    rec.save()
    try:
        lines = agent.start(lab, adopt=True, progress=say)
    except BaseException as exc:
        rec = state.load(lab)
        if rec is not None and new != old:
            rec.agent["options"] = old
            rec.save()
        if not isinstance(exc, LabError) and not isinstance(exc, DataplaneError):
            raise
        say(f"reload refused: {exc}")
        say("starting an agent with the lab's previous settings")
        agent.start(lab, adopt=True, progress=say)
        raise
    for line in lines:
        click.echo(line)
    click.echo(f"lab {lab} reloaded: agent {agent.running(lab)[0]}")


@cli.command(epilog="""\b
Examples:
  dataplane status                 # every lab
  sudo dataplane status demo       # one lab's agent: last sync, drift repaired, garbage collected
  dataplane status --json | jq '.[].name'
""")
@click.argument("lab", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(lab, as_json):
    """List labs on this machine: namespaces present, servers alive, agent, and whether each is
    complete. With LAB: that lab's agent in detail (its last sync and how long it took, drift it
    found and repaired, expired state it collected)."""
    from .lab import netns, state
    from .lab.lab import all_labs, namespaces_of
    from .run import agent
    if lab:
        _lab_status(lab, as_json)
        return
    out = []
    for name in all_labs():
        rec = state.load(name)
        present = [ns for ns in namespaces_of(name) if netns.exists(ns)]
        servers = {o: pid for o, pid in (rec.servers if rec else {}).items() if os.path.exists(f"/proc/{pid}")}
        if rec is None:
            health = "orphaned (no record): dataplane down " + name
        elif not rec.ready:
            alive = rec.owner_pid and os.path.exists(f"/proc/{rec.owner_pid}")
            health = "building" if alive else "incomplete (its run died): dataplane down " + name
        elif len(present) != len(rec.namespaces):
            health = f"damaged ({len(rec.namespaces) - len(present)} namespaces missing)"
        else:
            health = "up"
        agents = agent.running(name)
        out.append({"name": name, "status": health, "scenario": rec.scenario if rec else "",
                    "network": rec.network if rec else "", "backend": rec.backend if rec else "",
                    "namespaces": len(present), "servers": len(servers), "agent": agents[0] if agents else None,
                    "age_s": round(time.time() - rec.created) if rec and rec.created else None})
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    if not out:
        click.echo("no labs")
        return
    click.echo(f"{'LAB':<20} {'NETWORK':<11} {'BACKEND':<15} {'NETNS':>5} {'SERVERS':>7} {'AGENT':>7}  STATUS")
    for o in out:
        click.echo(f"{o['name']:<20} {o['network']:<11} {o['backend']:<15} {o['namespaces']:>5} "
                   f"{o['servers']:>7} {o['agent'] or '-':>7}  {o['status']}")


def _lab_status(name: str, as_json: bool) -> None:
    from .errors import LabError
    from .lab import state
    from .run import agent
    if state.load(name) is None:
        raise LabError(f"no lab named {name!r} (see `dataplane status`)")
    live = bool(agent.running(name))
    st = agent.request(name, "status")["status"] if live else agent.last_status(name)
    if as_json:
        click.echo(json.dumps({"lab": name, "agent_running": live, "agent": st}, indent=2))
        return
    if not live:
        click.echo(f"lab {name}: no agent running; the dataplane serves what it last programmed "
                   f"(`dataplane reload {name}` starts one)")
        if st is None:
            return
        click.echo("the last agent's state:")
    ago = lambda t: f"{time.time() - t:.0f}s ago" if t else "never"  # noqa: E731
    last = st.get("last_sync") or {}
    click.echo(f"agent {st['pid']} ({st['backend']}), started {ago(st['started'])}"
               f"{' by adopting the running dataplane' if st.get('adopted') else ''}")
    click.echo(f"services: {st['services']}; syncs: {st['syncs']}; last sync ({last.get('what', '-')}): "
               f"{ago(last.get('at'))}, took {last.get('duration_ms', 0):.1f} ms")
    for line in last.get("lines") or []:
        click.echo(f"  {line}")
    click.echo(f"reconciles: {st['reconciles']}; drift found and repaired {st['repairs']} times")
    for d in st.get("drift", [])[-5:]:
        click.echo(f"  {ago(d['at'])}: " + "; ".join(d["repaired"]))
    lc = st.get("last_collect") or {}
    click.echo(f"garbage collected: {st['collected']} expired entries (last: {ago(lc.get('at'))}, "
               f"{lc.get('removed', 0)} removed)")
    for e in st.get("errors", [])[-5:]:
        click.echo(f"  error {ago(e['at'])}: {e['error']}")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
             epilog="""\b
Examples:
  sudo dataplane exec demo client -- curl -s 10.0.2.2:8080/clientip
  sudo dataplane exec demo node1 -- ip route
  sudo dataplane exec demo underlay -- bridge link
  sudo dataplane exec demo client                  # an interactive shell
""")
@click.argument("lab")
@click.argument("obj", metavar="NAME")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def exec(lab, obj, command):  # noqa: A001 - the command is called exec
    """Run COMMAND in the network namespace of pod, node or outside host NAME of LAB
    ("underlay" is the network between nodes). Without a command, starts $SHELL. On a node the
    command also joins the node's cgroup, as the node's own processes do: what it connects to
    is served as for a host-network process (the eBPF backend's socket hooks)."""
    from .lab import netns, state
    from .errors import LabError
    rec = state.load(lab)
    if rec is None:
        raise LabError(f"no lab named {lab!r} (see `dataplane status`)")
    if obj not in rec.objects:
        raise LabError(f"lab {lab} has no pod, node or host named {obj!r}; it has: {', '.join(sorted(rec.objects))}")
    doctor.require("root")
    argv = list(command)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    argv = argv or [os.environ.get("SHELL", "/bin/sh")]
    if obj in rec.cgroups:
        from .lab import cgroups
        cgroups.join(rec.cgroups[obj])      # a node's process: its socket hooks apply
    netns.enter(rec.objects[obj])
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        raise LabError(f"command not found: {argv[0]}") from None


@cli.command(epilog="""\b
Examples:
  sudo dataplane down demo
  sudo dataplane down --all      # also cleans up after runs that were killed
""")
@click.argument("lab", required=False)
@click.option("--all", "all_", is_flag=True, help="Remove every lab on this machine.")
def down(lab, all_):
    """Remove LAB: its processes, namespaces (with every link, route, filter and rule in them),
    pinned BPF objects and its record."""
    from .lab.lab import all_labs, teardown
    if bool(lab) == bool(all_):
        raise click.UsageError("give either a LAB name or --all")
    doctor.require("root")
    names = all_labs() if all_ else [lab]
    if all_ and not names:
        click.echo("no labs to remove")
    for name in names:
        removed = teardown(name, _progress(True))
        nss = sum(r.startswith("netns ") for r in removed)
        procs = sum(r.startswith("process ") for r in removed)
        if not removed:
            click.echo(f"no lab named {name}")
            if not all_:
                sys.exit(1)
        else:
            click.echo(f"removed lab {name}: {nss} namespaces, {procs} processes")


@cli.command(epilog="""\b
Examples:
  sudo dataplane up scenarios/nodeport.yaml --backend iptables --name np
  sudo dataplane rules np --node node1             # iptables-save of node1
  sudo dataplane rules np | grep KUBE-SVC          # every node
\b
  sudo dataplane up scenarios/nodeport.yaml --backend ebpf --name np2
  sudo dataplane rules np2 --node node1            # the BPF maps as frontend -> endpoints
""")
@click.argument("lab")
@click.option("--node", "nodes", multiple=True, metavar="NODE", help="Only this node (repeatable; default: every node).")
def rules(lab, nodes):
    """Print what LAB's backend installed on its nodes, to read backends side by side:
    iptables-save for iptables and iptables-legacy, `nft list table ip kube-proxy` for nftables,
    the pinned BPF maps in service terms (frontend -> endpoints, flags) for ebpf.
    """
    from .lab import state
    from .errors import LabError
    doctor.require("root")
    rec = state.load(lab)
    if rec is None:
        raise LabError(f"no lab named {lab!r} (see `dataplane status`)")
    all_nodes = sorted(o for o, r in rec.roles.items() if r == "node")
    for node in nodes:
        if node not in all_nodes:
            raise LabError(f"lab {lab} has no node named {node!r}; its nodes: {', '.join(all_nodes)}")
    be = backends.class_of(rec.backend)()
    for node in nodes or all_nodes:
        text = be.dump(rec, node)
        click.echo(f"=== {lab} {node} ({rec.backend})")
        click.echo(text, nl=False)


@cli.command(epilog="""\b
Examples:
  dataplane explain scenarios/clusterip.yaml --from pod/client --to service/web          # offline, every backend
  dataplane explain scenarios/nodeport.yaml --from host/ext --to node/node2:30081 --backend nftables
  sudo dataplane explain demo --from pod/client --to service/web:dns                     # a running lab's rules
  dataplane explain scenarios/clusterip.yaml --from pod/client --to 10.96.0.10:81 --json
""")
@click.argument("lab_or_scenario", metavar="LAB|SCENARIO")
@click.option("--from", "client", required=True, metavar="pod/NAME", help="The client: pod/NAME, node/NAME or host/NAME.")
@click.option("--to", "to", required=True, metavar="service/NAME[:PORT]",
              help="service/NAME[:PORT] (a port's name or number; default its first port), or ADDRESS:PORT. "
                   "From a host outside the cluster, the service's node port (or LB/external IP).")
@click.option("--protocol", type=click.Choice(["TCP", "UDP"]), default=None,
              help="For ADDRESS:PORT (default TCP); with a service port, it must match.")
@click.option("--backend", "backend", default="all", show_default=True,
              type=click.Choice(["all", "ebpf", "iptables", "iptables-legacy", "nftables"]),
              help="Which backend's path; `all`: eBPF (reference model) and kube-proxy's two rule sets side by side. "
                   "On a lab: its own backend unless given.")
@click.option("--seed", type=int, default=None, help="The eBPF flow-hash seed (default: the lab's, offline 0).")
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per backend.")
def explain(lab_or_scenario, client, to, protocol, backend, seed, as_json):
    """Explain the path one new connection would take, step by step: for eBPF from the reference
    model (the frontend met, its candidates in hash order, the backend the hash picks, each hook's
    rewrite, the reply's reverse NAT), for kube-proxy's iptables and nftables modes a chain-by-chain
    walk of the rules (KUBE-SERVICES -> KUBE-SVC-... -> KUBE-SEP-..., probabilities, DNAT, the
    masquerade mark), as kube-proxy's own packet tracer does.

    LAB|SCENARIO: a running lab (its installed rules are walked; needs root) or a scenario file
    (offline: rules rendered from it, no lab, no root).
    """
    import json as _json
    import os as _os
    from .run import explain as ex
    if _os.path.exists(lab_or_scenario) and not _os.path.isdir(lab_or_scenario):
        scenario = _load(lab_or_scenario)
        table, live, lab_backend, lab_seed = scenario.services, None, None, 0
    else:
        from .run.trace import session
        doctor.require("root")
        rec, table, _ = session.lab_and_table(lab_or_scenario)
        scenario = _load(rec.scenario)
        lab_backend, lab_seed = rec.backend, _lab_seed(rec)
        live = _live_rules(rec)
    target = ex.resolve(scenario, table, client, to, protocol)
    if backend == "all":
        chosen = ex.BACKENDS if lab_backend is None else (lab_backend,) if lab_backend in ex.BACKENDS + (
            "iptables-legacy",) else ex.BACKENDS
    else:
        chosen = (backend,)
    if live is not None and any(b != lab_backend and b != "ebpf" for b in chosen):
        raise DataplaneError(f"lab {lab_or_scenario} runs {lab_backend}: its rules are the only ones installed; "
                             f"explain another backend offline, on the scenario file {rec.scenario}")
    out = ex.explain(scenario, table, target, chosen, seed if seed is not None else lab_seed, live)
    if as_json:
        click.echo(_json.dumps([e.as_dict() for e in out], indent=1))
    else:
        click.echo(ex.format_text(out), nl=False)


def _lab_seed(rec) -> int:
    """The seed the lab's eBPF programs hash with (0 for other backends)."""
    if rec.backend != "ebpf":
        return 0
    from .backends.ebpf.inspect import NodeMapsView
    node = sorted(o for o, r in rec.roles.items() if r == "node")[0]
    return NodeMapsView(rec.name, node, {}).config()["seed"]


def _live_rules(rec):
    """node, backend -> (the rules installed there, where they were read)."""
    def read(node: str, b: str):
        be = backends.class_of(rec.backend)()
        ns = rec.objects[node]
        if rec.backend == "nftables":
            return be.rules(ns), f"installed in {ns} (nft list table ip kube-proxy)"
        return be.rules(ns), f"installed in {ns} ({be.save})"
    return read


@cli.command(name="maps", epilog="""\b
Examples:
  sudo dataplane maps demo                        # every map of every node
  sudo dataplane maps demo --node node1 conntrack # node1's flows: tuple, backend, state, time left
  sudo dataplane maps demo services --json        # frontends and their backends, as JSON
\b
The same maps raw, as the kernel holds them:
  sudo bpftool map dump pinned /sys/fs/bpf/dp-demo/node1/conntrack
""")
@click.argument("lab")
@click.argument("map_name", metavar="[MAP]", required=False,
                type=click.Choice(["services", "conntrack", "snat", "nosnat", "affinity", "affinity_match", "sock_revnat",
                                   "frags", "lb_sources", "nonmasq", "addresses", "config", "metrics"]))
@click.option("--node", "nodes", multiple=True, metavar="NODE", help="Only this node (repeatable; default: every node).")
@click.option("--json", "as_json", is_flag=True, help="JSON: {node: {map: entries}}.")
def maps_cmd(lab, map_name, nodes, as_json):
    """Print LAB's eBPF maps in service terms: frontends and their backends (slot order),
    conntrack entries as flows (tuple, translation, state, lifetime left, service), masquerade
    mappings (both halves), UDP flows never masqueraded, session affinity and its eligible
    backends, node sockets sent to backends, fragments in flight, source ranges, non-masquerade
    CIDRs, config and counters. Read while traffic runs; each map is one bpftool read.
    """
    import json as _json
    from .backends.ebpf import inspect
    from .run.trace import session
    doctor.require("root")
    rec, table, _ = session.lab_and_table(lab)
    if rec.backend != "ebpf":
        raise LabError(f"lab {lab} runs backend {rec.backend!r}, which has no BPF maps; "
                       f"`dataplane rules {lab}` prints its rules")
    sel = session.select(rec, table, nodes)
    frontends = session.TraceSession(rec, table, sel).frontends
    chosen = (map_name,) if map_name else inspect.SECTIONS
    out = {}
    for node in sel.nodes or sorted(o for o, r in rec.roles.items() if r == "node"):
        out[node] = inspect.read(lab, node, frontends, chosen)
        if not as_json:
            click.echo(inspect.format_text(node, f"/sys/fs/bpf/dp-{lab}/{node}", out[node]), nl=False)
    if as_json:
        click.echo(_json.dumps(out, indent=1, sort_keys=True))


@cli.command(epilog="""\b
Examples:
  sudo dataplane up scenarios/clusterip.yaml --name demo          # ebpf
  sudo dataplane trace demo                                  # every decision, until Ctrl-C
  sudo dataplane trace demo --pod client --service web       # one client's flows to one service
  sudo dataplane trace demo --drops --seconds 10 --json      # and the kernel's drops, as JSON lines
\b
  sudo dataplane up scenarios/clusterip.yaml --name nft --backend nftables
  sudo dataplane trace nft --node node1                      # chains and rules netfilter walked
\b
In another terminal, make traffic:
  sudo dataplane exec demo client -- curl -s 10.96.0.10/hostname
See docs/debugging.md for a worked demo.
""")
@click.argument("lab")
@click.option("--node", "nodes", multiple=True, metavar="NODE", help="Only this node (repeatable; default: every node).")
@click.option("--pod", "pods", multiple=True, metavar="POD", help="Only packets from or to this pod (repeatable).")
@click.option("--service", "services", multiple=True, metavar="[NS/]NAME",
              help="Only this service's flows: its frontends and endpoints (repeatable).")
@click.option("--drops", is_flag=True, help="Also the kernel's drops of lab packets with the kernel's drop reason "
              "(skb:kfree_skb): what dies outside the dataplane (no route, no socket, rp_filter, a full queue).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of text.")
@click.option("--seconds", type=click.FloatRange(min=0.1), default=None, help="Stop after this long (default: Ctrl-C).")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many events.")
def trace(lab, nodes, pods, services, drops, as_json, seconds, count):
    """Stream what LAB's dataplane decides about each packet, one line per decision.

    \b
    ebpf          the programs' own events: hook, packet before and after,
                  the frontend met, the backend chosen and why (hash and slot,
                  affinity, the conntrack entry of a known flow), the port taken
                  on the node's address, every rejection and drop by its reason.
                  While no trace runs, a byte test per note (docs/benchmarks.md).
    nftables,     netfilter's trace (`nft monitor trace`): every chain and rule
    iptables      the packet met, with their verdicts.
    iptables-legacy  no netfilter trace inside a namespace (see docs/debugging.md);
                  --drops still works.
    """
    import json as _json
    from .run.trace import session
    doctor.require("root")
    rec, table, topology = session.lab_and_table(lab)
    sel = session.select(rec, table, nodes, pods, services, topology)

    def emit(e):
        click.echo(_json.dumps(e, sort_keys=True) if as_json else e["text"])

    def started(lines):
        for line in lines:
            click.echo(f"# tracing {line}" + ("" if seconds or count else "; Ctrl-C ends"), err=True)

    import signal
    from .run.runner import Terminated, on_terminate
    old = on_terminate()          # SIGTERM, SIGHUP: stop as Ctrl-C does, every reader closed
    lost = 0
    try:
        _, lost = session.run(rec, table, sel, drops, emit, seconds=seconds, count=count, started=started)
    except (KeyboardInterrupt, Terminated):
        pass
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if lost:
        click.echo(f"# {lost} events lost: the ring buffer was full (the reader fell behind; "
                   f"counted as M_TRACE_LOST)", err=True)


@cli.group(epilog="""\b
Examples:
  sudo dataplane bench all --quick --out bench-out          # every figure, 3 backends, about 7 minutes
  sudo dataplane bench all --out bench-out --json > run.json # the full run (docs/benchmarks.md)
  sudo dataplane bench connect -b ebpf -b iptables --services 1,1000,10000
  sudo dataplane bench sync --services-from cluster.yaml --scale 20
  sudo dataplane bench kernel --quick
""")
def bench():
    """Benchmarks: numbers, measured on this machine, printed with how, where and when they were
    measured. Tests assert behaviour; speed is only ever measured here.

    \b
    all         every figure below, per backend on one lab each, then the kernel's
    sync        apply N services, change one, endpoint churn, kernel memory per service
    connect     connect() latency p50/p99/p999 through a service (the last one, random ones)
                and straight to the pod, against the number of services
    rr          round trips on a kept connection, through a service and direct
    throughput  iperf3 TCP (same node, across nodes) and connections per second
    nodeport    64-byte UDP from an outside host through a node port, and direct
    kernel      ns per packet of each BPF path (BPF_PROG_TEST_RUN), against map fill

    Traffic is native (dpperf, built from dataplane/lab/workload/perf.c on first use, and iperf3)
    and stays inside the lab; each figure is repeated (--reps) and shown as the median with its
    spread; via-service and direct figures interleave in one run, so their ratio holds on a noisy
    machine. --out writes results.json and a PNG per bench. docs/benchmarks.md has the method and
    a full run.
    """


LAB_BACKENDS = ["ebpf", "iptables", "iptables-legacy", "nftables"]


def _int_list(text: str | None, what: str, lo: int, hi: int) -> tuple | None:
    if text is None:
        return None
    try:
        values = tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, such as 1,1000,10000; got {text!r}",
                                 param_hint=what) from None
    bad = [v for v in values if not lo <= v <= hi]
    if not values or bad:
        raise click.BadParameter(f"each from {lo:,} to {hi:,}" + (f"; got {bad[0]:,}" if bad else ""), param_hint=what)
    return tuple(sorted(set(values)))


def bench_options(command):
    """The options every bench shares: declared once."""
    for option in reversed((
        click.option("--backend", "-b", "names", multiple=True, type=click.Choice(LAB_BACKENDS),
                     help="Backend to measure (repeatable; default: ebpf, iptables, iptables-legacy, nftables; "
                          "--quick: ebpf, iptables, nftables)."),
        click.option("--services", "sizes", metavar="N,N,...",
                     help="Filler services installed, one figure per size (default 1,1000,10000; --quick 1,1000; "
                          "with --services-from: 1)."),
        click.option("--reps", type=click.IntRange(1, 20), default=None, help="Repeats of every figure (default 3)."),
        click.option("--quick", is_flag=True, help="Fewer backends, sizes and samples: bench all in about 7 minutes on 2 cores."),
        click.option("--services-from", "dump", type=click.Path(exists=True, dir_okay=False),
                     help="A `kubectl get svc,endpointslices -A -o yaml` dump: its services installed beside the "
                          "fillers (see `dataplane import`)."),
        click.option("--scale", type=click.IntRange(1, 1000), default=1, show_default=True,
                     help="With --services-from: install that many copies of the dump's services."),
        click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=1, show_default=True,
                     help="Seed of the random targets and changes."),
        click.option("--json", "as_json", is_flag=True, help="Print the run as JSON (rows, machine, parameters)."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False),
                     help="Directory for results.json, results.txt, results.md and a PNG plot per bench."),
    )):
        command = option(command)
    return command


def _bench(benches, names, sizes, reps, quick, dump, scale, seed, as_json, out_dir, **extra):
    from .run.bench import suite
    from . import bench_report
    if scale != 1 and not dump:
        raise click.UsageError("--scale multiplies the services of --services-from: give a dump too")
    sizes = _int_list(sizes, "--services", 1, 65000)      # every option checked before anything runs
    lab_benches = [b for b in benches if b in suite.LAB_BENCHES]
    imported = None
    if dump:
        from .run.bench.imported import from_dump
        try:
            imported = from_dump(dump, scale)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--scale") from None
    doctor.require("root", "bpf")
    if "kernel" in benches:
        doctor.require("bcc", "bcc-compile")
    if lab_benches:
        doctor.require("gcc", "iperf3")
    params = suite.quick_or_full(
        quick, backends=tuple(names) or None, services=sizes or ((1,) if dump else None), reps=reps, seed=seed,
        imported=imported, source=f"{os.path.basename(dump)} x{scale}" if dump else None, **extra)
    if lab_benches:
        for name in params.backends:
            doctor.require(*backends.get(name).needs)
    say = _progress(True)
    if imported is not None:
        for note in imported.notes:
            say(f"import: {note}")
    from .run.runner import on_terminate
    import signal
    old = on_terminate()         # SIGTERM, SIGHUP: an exception, so every lab and namespace is removed
    try:
        run = suite.run(benches, params, progress=say)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    report = bench_report.text(run)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(run.to_json(), f, indent=1)
        with open(os.path.join(out_dir, "results.txt"), "w") as f:
            f.write(report + "\n")
        with open(os.path.join(out_dir, "results.md"), "w") as f:
            f.write(bench_report.markdown(run))
        for path in bench_report.plots(run, out_dir):
            say(f"wrote {path}")
    if as_json:
        click.echo(json.dumps(run.to_json(), indent=1))
    else:
        click.echo(report)
    if run.errors:
        raise SystemExit(1)


@bench.command(name="all", epilog="""\b
Examples:
  sudo dataplane bench all --quick --out bench-out     # 3 backends, 1 and 1,000 services: about 7 minutes
  sudo dataplane bench all --out bench-out             # 4 backends, up to 10,000 services, 65,536 in the kernel
""")
@bench_options
def bench_all(**kw):
    """Every figure: sync, connect, rr, throughput (and connection rate), nodeport per backend,
    then the kernel's ns per packet."""
    from .run.bench.suite import BENCHES
    _bench(BENCHES, **kw)


@bench.command(name="sync", epilog="""\b
Examples:
  sudo dataplane bench sync -b ebpf --services 1000,10000
  sudo dataplane bench sync --services-from cluster.yaml --scale 50 -b ebpf -b nftables
""")
@bench_options
def bench_sync(**kw):
    """Apply N services from none, change one (a tracked change), endpoint churn (one change per
    sync, then 100), and the kernel's memory per service; method in dataplane/run/bench/sync.py."""
    _bench(("sync",), **kw)


@bench.command(name="connect", epilog="""\b
Examples:
  sudo dataplane bench connect --services 1,1000,10000
  sudo dataplane bench connect -b ebpf -b iptables-legacy --services 1,60000 --reps 5
""")
@bench_options
def bench_connect(**kw):
    """connect() latency (SYN to SYN-ACK, then a reset) p50/p99/p999 from a pod: to the last
    filler service, to random ones, and to the pod directly; method in dataplane/run/bench/traffic.py."""
    _bench(("connect",), **kw)


@bench.command(name="rr", epilog="""\b
Examples:
  sudo dataplane bench rr -b ebpf -b nftables --services 10000
""")
@bench_options
def bench_rr(**kw):
    """Round trips of one byte on a kept TCP connection, through a service and direct."""
    _bench(("rr",), **kw)


@bench.command(name="throughput", epilog="""\b
Examples:
  sudo dataplane bench throughput --quick
""")
@bench_options
def bench_throughput(**kw):
    """iperf3 TCP through a service and direct, on one node and across nodes; and new
    connections per second (connect, a byte each way, reset) from 2 client processes."""
    _bench(("throughput",), **kw)


@bench.command(name="nodeport", epilog="""\b
Examples:
  sudo dataplane bench nodeport -b ebpf -b iptables -b nftables
""")
@bench_options
def bench_nodeport(**kw):
    """64-byte frames of UDP from an outside host through node1's node port (16 flows), counted
    by the receiving pod; beside the same flood straight to the pod."""
    _bench(("nodeport",), **kw)


@bench.command(name="kernel", epilog="""\b
Examples:
  sudo dataplane bench kernel --quick                     # 1, 1,000 and 10,000 services
  sudo dataplane bench kernel                             # up to 65,536 services, 20,000 calls per path
  sudo dataplane bench kernel --services 1,65536 --json
""")
@click.option("--services", "fills", default=None, metavar="N,N,...",
              help="Map fills to measure (default 1,1000,10000,65536; --quick: 1,1000,10000).")
@click.option("--calls", type=click.IntRange(100, 45535), default=None,
              help="Packets per path and fill, one per BPF_PROG_TEST_RUN call (default 20,000; --quick 3,000).")
@click.option("--quick", is_flag=True, help="Fewer fills and calls: under a minute.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Directory for results and kernel.png.")
def bench_kernel(fills, calls, quick, seed, as_json, out_dir):
    """Nanoseconds per packet of each BPF path (new flow, established, reply, node port,
    masquerade, traffic not for a service) against the number of services installed, beside a
    trivial program as the floor. One packet per BPF_PROG_TEST_RUN call, timed by the kernel;
    see dataplane/run/bench/kernel.py for the method."""
    fills = _int_list(fills, "--services", 1, 65536)
    _bench(("kernel",), names=(), sizes=None, reps=1, quick=quick, dump=None, scale=1, seed=seed,
           as_json=as_json, out_dir=out_dir, kernel_fills=fills, kernel_calls=calls)


from .run.bench.profile import PROFILED as PROFILED_PATHS      # noqa: E402 (stdlib only: the CLI loads fast)


@bench.command(name="profile", epilog="""\b
Examples:
  sudo dataplane bench profile not-service                  # at 10,000 services, 3 s of samples
  sudo dataplane bench profile established new-flow --services 65536 --seconds 5
  sudo dataplane bench profile --json > profile.json       # every path
\b
Reading it: `share` is of the samples taken in the program (with what it called); `ns` is that
share of the program's own time per packet (median kernel duration - the floor's). A kernel
function's row is the call to it (a helper, a map lookup, memcpy below a helper counted in it).
""")
@click.argument("paths", nargs=-1, type=click.Choice(PROFILED_PATHS), metavar="[PATH]...")
@click.option("--services", type=click.IntRange(1, 65536), default=10000, show_default=True,
              help="Services installed (ClusterIP, two endpoints each, as `bench kernel`).")
@click.option("--seconds", type=click.FloatRange(1, 60), default=3, show_default=True,
              help="Sampling time per path.")
@click.option("--top", type=click.IntRange(1, 200), default=15, show_default=True, help="Sites shown per path.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print every site as JSON.")
def bench_profile(paths, services, seconds, top, seed, as_json):
    """Where a BPF path's time goes: its packets run in a loop (BPF_PROG_TEST_RUN, one per call)
    on one CPU while `perf record -e cpu-clock -g` samples it; each sample in the program is
    given to the kernel function it called (or the program's own code) and to the source line
    of the call, from the program's BTF line info. PATHS: any of the `bench kernel` paths
    (default: all). See dataplane/run/bench/profile.py for the method and its limits."""
    from dataclasses import asdict
    from .run.bench.profile import profile_paths, text
    doctor.require("root", "bpf", "bcc", "bcc-compile", "perf")
    try:
        profiles = profile_paths(paths or PROFILED_PATHS, services, seconds, seed=seed, progress=_progress(True))
    except DataplaneError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([asdict(p) for p in profiles], indent=1))
    else:
        click.echo(text(profiles, top))


@cli.group(epilog="""\b
Examples:
  sudo dataplane fuzz packets --count 20000 --seed 1        # 20,000 frames: BPF against the oracle
  sudo dataplane fuzz packets --replay fuzz-failures/packets-seed1-....json
  sudo dataplane fuzz scenarios --count 3 --seed 1          # 3 generated scenarios, 5 backends each
  sudo dataplane fuzz scenarios --count 200                 # a long run, with a fresh seed (printed)
  sudo dataplane fuzz kills --count 100 --seed 1            # SIGKILL runs at random moments, then down --all
""")
def fuzz():
    """Search for bugs instead of listing them: generated inputs, each judged by an independent
    judge, a seed printed with every run (the same seed replays it).

    \b
    packets    generated frames through the BPF programs (BPF_PROG_TEST_RUN) and through the
               oracle, which decides from the service table, not the maps: verdict, bytes, state
    scenarios  whole generated scenarios on every backend; kube-proxy's iptables and nftables
               modes judge the eBPF dataplane and the emulator, and each other, check by check
    kills      `run` and `up` SIGKILLed at random moments, then `down --all`: the kernel and /proc
               must hold nothing of a lab, the root namespace must be as before

    A finding is saved as a file that replays it, and the command exits 1 (docs/testing.md).
    """


@fuzz.command(name="scenarios", epilog="""\b
Examples:
  sudo dataplane fuzz scenarios --count 3 --seed 1
  sudo dataplane fuzz scenarios --count 20 -b ebpf -b nftables -b emulator
\b
A disagreement is saved as fuzz-failures/fuzz-SEED-INDEX.yaml; replay it with:
  sudo dataplane run fuzz-failures/fuzz-1-2.yaml --backend all
""")
@click.option("--count", "-n", default=3, show_default=True, type=click.IntRange(1, 100000),
              help="How many scenarios to generate and run.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1),
              help="Seed of the generator (default: a fresh one, printed): the same seed generates the same "
                   "scenarios.")
@click.option("--start", default=0, show_default=True, type=click.IntRange(0), help="Index of the first scenario.")
@click.option("--backend", "-b", "names", multiple=True, default=backends.CONFORMANCE, show_default=True,
              type=click.Choice(list(backends.CONFORMANCE)), help="A backend to compare (repeatable; at least two).")
@click.option("--save", "save_dir", default="fuzz-failures", show_default=True, type=click.Path(file_okay=False),
              help="Where scenarios the backends disagree on are saved.")
def fuzz_scenarios(count, seed, start, names, save_dir):
    """Generate COUNT scenarios (dataplane/spec/generate.py: every network model, every service
    type and policy, pods ready, unready and terminating, updates, sleeps across affinity
    lifetimes, every kind of check) and run each on every chosen backend, the live ones side by
    side on labs of their own; every check must show the same outcome on all of them, except where
    docs/differences.md documents the difference.

    Prints one line per scenario and a summary. A disagreement (or a backend that crashes) is saved
    under --save as a scenario with what most backends saw as expectations, which `dataplane run`
    replays; the command then exits 1.
    """
    from .run.fuzz.scenarios import fresh_seed, fuzz as run_fuzz
    names = tuple(dict.fromkeys(names))
    if len(names) < 2:
        raise click.UsageError("give at least two backends to compare (or none: all of them)")
    for name in names:
        doctor.require(*backends.get(name).needs)
    from .run.runner import Terminated
    seed = fresh_seed() if seed is None else seed
    try:
        runs = run_fuzz(count, seed, names, save_dir, progress=click.echo, start=start)
    except (KeyboardInterrupt, Terminated):
        click.echo(f"fuzz scenarios: interrupted (seed {seed}); every lab it built is removed", err=True)
        sys.exit(130)
    sys.exit(0 if all(r.agree for r in runs) else 1)


@fuzz.command(name="packets", epilog="""\b
Examples:
  sudo dataplane fuzz packets --count 20000 --seed 1
  sudo dataplane fuzz packets --count 1000000              # the long run (docs/testing.md)
  sudo dataplane fuzz packets --replay fuzz-failures/packets-seed1-1796000487.json
""")
@click.option("--count", "-n", default=20000, show_default=True, type=click.IntRange(1, 10**9),
              help="Run at least this many frames.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1),
              help="Seed of the search (default: a fresh one, printed): the same seed runs the same cases.")
@click.option("--save", "save_dir", default="fuzz-failures", show_default=True, type=click.Path(file_okay=False),
              help="Where a mismatch's reproducer is written.")
@click.option("--replay", "replay_file", type=click.Path(dir_okay=False, exists=True),
              help="Run a saved reproducer again instead of searching.")
def fuzz_packets(count, seed, save_dir, replay_file):
    """Generate cases (a service table and masquerade settings for one node, then up to 200
    events: frames at the four TC hooks, answers to what passed, ICMP errors quoting it, IPv4
    options, fragments, truncated and damaged frames, clock jumps, garbage collection, evicted
    flows, service updates) and run every frame through the BPF program (BPF_PROG_TEST_RUN) and
    through the oracle. Verdict and bytes must match for every frame; conntrack, affinities and
    counters after every update and at the end of every case.

    Prints frames per second as it goes and, at the end, what ran (verdicts and the counters the
    frames reached). A mismatch is shrunk to a minimal case, printed, saved as JSON under --save
    and replayable with --replay; the command then exits 1. Runs in a network namespace of its own,
    removed however the run ends.
    """
    import random as _random
    from pathlib import Path
    from .run.fuzz import packets as fuzz_mod
    doctor.require(*backends.get("ebpf").needs)
    if replay_file:
        outcome = fuzz_mod.replay(Path(replay_file))
        click.echo(fuzz_mod.summary(outcome, None))
        sys.exit(1 if outcome.mismatch else 0)
    from .run.runner import Terminated
    seed = _random.SystemRandom().randrange(2**32) if seed is None else seed
    click.echo(f"fuzz packets: seed {seed}, at least {count:,} frames", err=True)
    try:
        outcome = fuzz_mod.fuzz(count, seed, Path(save_dir), progress=lambda m: click.echo(m, err=True))
    except (KeyboardInterrupt, Terminated):
        click.echo(f"fuzz packets: interrupted (seed {seed}); its namespace and programs are removed", err=True)
        sys.exit(130)
    click.echo(fuzz_mod.summary(outcome, seed))
    sys.exit(1 if outcome.mismatch else 0)


@fuzz.command(name="kills", epilog="""\b
Examples:
  sudo dataplane fuzz kills --count 10 --seed 1
  sudo dataplane fuzz kills --count 100 -b ebpf            # the long run, one backend
""")
@click.option("--count", "-n", default=100, show_default=True, type=click.IntRange(1, 100000), help="Rounds.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1),
              help="Seed of the choices (command, backend, phase, delay; default: a fresh one, printed).")
@click.option("--backend", "-b", "names", multiple=True, default=("ebpf", "iptables", "iptables-legacy", "nftables"),
              show_default=True, type=click.Choice(["ebpf", "iptables", "iptables-legacy", "nftables"]),
              help="Backends to choose from (repeatable).")
@click.option("--scenario", default="scenarios/clusterip.yaml", show_default=True,
              type=click.Path(dir_okay=False, exists=True), help="The scenario every round runs.")
def fuzz_kills(count, seed, names, scenario):
    """SIGKILL `dataplane run` and `dataplane up` at random moments (while building the lab,
    programming the backend, running a check, tearing down; or `up`'s agent once the lab is up),
    then run `dataplane down --all`, and read from the kernel and /proc that nothing of a lab is
    left: namespaces (with their links), records, pins, cgroups, the lab's cgroup2 mount, lab
    processes (agents, servers), and no change to the root namespace's links, addresses, routes,
    rules, nftables or iptables rules. Refuses to start while labs exist (`down --all` would
    remove them). Stops at the first round that left something, and exits 1.
    """
    import random as _random
    from .run.fuzz.kills import fuzz_kills as run_kills
    doctor.require("root", "netns")
    seed = _random.SystemRandom().randrange(2**32) if seed is None else seed
    scenario = os.path.abspath(scenario)
    click.echo(f"fuzz kills: seed {seed}, {count} rounds of {scenario} on {', '.join(names)}", err=True)
    rounds = run_kills(count, seed, scenario, names, progress=lambda m: click.echo(m, err=True))
    sys.exit(0 if all(r.clean for r in rounds) else 1)


@cli.command(name="backends")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def backends_cmd(as_json):
    """List the backends and what each can do: live (a lab of namespaces) or simulated, the options
    that apply to it, packet counters, kube-proxy's health-check node ports, what it needs.

    \b
    Example:
      dataplane backends
    """
    rows = [{"name": cls.name, "description": cls.description, "simulated": cls.simulated,
             "options": [backends.OPTION_FLAGS[o] for o in cls.options], "counters": cls.has_counters,
             "health_checks": cls.serves_health_checks, "needs": list(cls.needs),
             "conformance": cls.name in backends.CONFORMANCE} for cls in backends.BACKENDS.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        traits = ["simulated" if r["simulated"] else "live"] + (["counters"] if r["counters"] else []) \
            + (["health checks"] if r["health_checks"] else []) + (["in --backend all"] if r["conformance"] else [])
        click.echo(f"{r['name']:<16} {r['description']}")
        click.echo(f"{'':<16} {', '.join(traits)}; options: {' '.join(r['options']) or 'none'}; "
                   f"needs: {', '.join(r['needs']) or 'nothing'}")
    aliases = ", ".join(f"{a} = {n}" for a, n in backends.ALIASES.items())
    click.echo(f"aliases: {aliases}")


@cli.command(name="doctor")
def doctor_cmd():
    """Check every prerequisite and say how to fix what is missing.

    \b
    Example:
      sudo dataplane doctor
    """
    results = doctor.run_all()
    for r in results:
        mark = click.style(" ok ", fg="green") if r.ok else click.style("FAIL", fg="red")
        click.echo(f"[{mark}] {r.name:<16} {r.detail}")
        if not r.ok:
            click.echo(f"       {'':<16} fix: {r.fix}")
    sys.exit(0 if all(r.ok for r in results) else 1)


def main():
    try:
        cli(standalone_mode=True)
    except PrerequisiteError as exc:
        click.echo(click.style("error: ", fg="red") + str(exc), err=True)
        sys.exit(3)
    except DataplaneError as exc:
        click.echo(click.style("error: ", fg="red") + str(exc), err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BaseException as exc:
        from .run.runner import Terminated
        if not isinstance(exc, Terminated):
            raise
        click.echo("terminated", err=True)
        sys.exit(143)


if __name__ == "__main__":
    main()
