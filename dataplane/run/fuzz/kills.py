"""`dataplane fuzz kills`: SIGKILL `dataplane run` and `up` at random moments, then `down --all`,
and read from the kernel and /proc whether anything of a lab is left.

Each round picks a command (`run` or `up`), a live backend, a phase (build, program, check,
teardown; `up` also: its agent, killed after the lab is up) and a delay; it starts the command as
a user would, waits for the phase's progress line on stderr, sleeps the delay, and SIGKILLs the
command (only it: its servers and agent live on, as after a real crash). Then `dataplane down
--all`, and the audit (dataplane.lab.audit): no namespace, record, pin, cgroup, mount or lab
process may be left, and the root namespace's links, addresses, routes, rules, nftables ruleset and
iptables rules must be as before the round. Rounds are seeded: `--seed` replays the choices (not
the kernel's timing).
"""
from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from ...errors import DataplaneError
from ...lab import audit
from ...lab.lab import all_labs

LIVE = ("ebpf", "iptables", "iptables-legacy", "nftables")
# phase -> the progress lines (on the command's stderr) that say it has begun
PHASES = {
    "build": ("creating ", "wiring ", "addressing: ", "starting test servers"),
    "program": ("programming backend", "agent "),
    "check": ("check 1/",),
    "teardown": ("tearing down lab",),
    "agent": (),                  # `up` finished: its agent is killed
}
RUN_PHASES = ("build", "program", "check", "teardown")
UP_PHASES = ("build", "program", "agent")
PHASE_TIMEOUT = 300.0


@dataclass
class KillRound:
    index: int
    command: str
    backend: str
    phase: str
    delay: float
    reached: bool = True            # the phase began before the command ended
    left: list = field(default_factory=list)      # what down --all did not remove
    root_changed: list = field(default_factory=list)
    down_failed: str = ""

    @property
    def clean(self) -> bool:
        return not (self.left or self.root_changed or self.down_failed)

    def describe(self) -> str:
        what = (f"round {self.index}: {self.command} on {self.backend}, SIGKILL {self.delay:.2f}s into "
                f"{self.phase}{'' if self.reached else ' (the command ended first)'}")
        if self.clean:
            return what + ": clean"
        problems = self.left + [f"root namespace {k} changed" for k in self.root_changed]
        if self.down_failed:
            problems.append(f"down --all failed: {self.down_failed}")
        return what + ": LEFT " + "; ".join(problems)


def _dataplane(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "dataplane.cli", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(proc, markers, timeout: float) -> bool:
    """Read the command's progress until a line starts (after "» ") with a marker: True; False if
    it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                return False
            continue
        line = proc.stderr.readline()
        if not line:
            return False
        text = line.split("» ", 1)[-1]
        if any(text.startswith(m) for m in markers):
            return True
    return False


def kill_round(index: int, rng: random.Random, scenario: str, backends=LIVE) -> KillRound:
    command = rng.choice(("run", "up"))
    phase = rng.choice(RUN_PHASES if command == "run" else UP_PHASES)
    r = KillRound(index, command, rng.choice(backends), phase, round(rng.uniform(0.0, 1.5), 2))
    before = audit.root_snapshot()
    lab = f"k{os.getpid()}-{index}"
    proc = _dataplane(command, scenario, "--name", lab, "--backend", r.backend)
    try:
        if phase == "agent":
            r.reached = proc.wait(timeout=PHASE_TIMEOUT) == 0
            time.sleep(r.delay)
            from ...lab import state
            for pid in state.agent_pids(lab):
                os.kill(pid, signal.SIGKILL)
        else:
            r.reached = _wait_for(proc, PHASES[phase], PHASE_TIMEOUT)
            time.sleep(r.delay)
            proc.kill()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    down = subprocess.run([sys.executable, "-m", "dataplane.cli", "down", "--all"], capture_output=True, text=True,
                          timeout=600)
    if down.returncode != 0:
        r.down_failed = (down.stderr or down.stdout).strip()[-300:]
    r.left = _settled(audit.leftovers)
    r.root_changed = audit.changed(before, audit.root_snapshot())
    return r


def _settled(read, timeout: float = 5.0) -> list:
    """What is left once processes signalled by the teardown had time to exit."""
    deadline = time.monotonic() + timeout
    while True:
        left = read()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def fuzz_kills(count: int, seed: int, scenario: str, backends=LIVE, progress=print) -> list[KillRound]:
    """`count` rounds; stops at the first round that left something (the machine is not clean
    for the next one), and says so."""
    existing = all_labs()
    if existing or audit.leftovers():
        raise DataplaneError("fuzz kills ends every round with `down --all`, which would remove the labs on "
                             f"this machine ({', '.join(existing) or ', '.join(audit.leftovers()[:5])}): "
                             "remove them first")
    rng = random.Random(seed)
    rounds = []
    for i in range(count):
        r = kill_round(i, rng, scenario, backends)
        rounds.append(r)
        progress(r.describe())
        if not r.clean:
            break
    by = Counter((r.command, r.phase) for r in rounds)
    progress(f"fuzz kills: seed {seed}, {len(rounds)} rounds, "
             f"{sum(r.clean for r in rounds)} clean; killed: "
             + ", ".join(f"{c} {p} {n}" for (c, p), n in sorted(by.items())))
    return rounds
