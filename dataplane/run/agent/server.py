"""The agent's process: owns a running lab's backend (as kube-proxy's Proxier owns its rules),
syncs it to the desired state, collects expired state, reconciles drift, and answers the CLI on
a Unix socket beside the lab's record (one JSON request per connection, one JSON answer).

Stopping it (SIGTERM: `reload`, `down`) leaves the dataplane as it is; SIGKILL does too. The next
agent adopts what is installed (Backend.adopt)."""
from __future__ import annotations

import fcntl
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback

from ... import backends
from ...errors import DataplaneError
from ...lab import state
from ...lab.lab import Lab
from ...lab.plan import make_plan
from ...spec.scenario import frontend_routes
from .desired import Desired, scenario_digest

MAX_DRIFT_KEPT = 20


class Stop(BaseException):
    """SIGTERM or SIGHUP, or a `stop` request: leave the loop, change nothing in the lab."""


def _stop(signum, frame):
    raise Stop()


def socket_path(name: str) -> str:
    return os.path.join(state.lab_files(name, create=False), "agent.sock")


def status_path(name: str) -> str:
    return os.path.join(state.lab_files(name, create=False), "agent-status.json")


class Agent:
    def __init__(self, name: str, adopt: bool):
        self.name = name
        self.adopt = adopt
        self.record = state.load(name)
        if self.record is None or not self.record.ready:
            raise DataplaneError(f"no complete lab named {name!r}")
        settings = self.record.agent
        self.reconcile_period = float(settings.get("reconcile_period", 2.0))
        self.collect_period = float(settings.get("collect_period", 10.0))
        opts = settings.get("options", {})
        self.backend = backends.get(self.record.backend, **backends.settings(
            opts.get("seed"), opts.get("map_size") or (), opts.get("ct_timeout") or ()))
        self.stats = {"pid": os.getpid(), "backend": self.record.backend, "started": time.time(),
                      "adopted": adopt, "syncs": 0, "last_sync": None, "reconciles": 0, "repairs": 0,
                      "drift": [], "collected": 0, "last_collect": None, "services": 0, "refused": 0, "errors": []}

    # -- start -----------------------------------------------------------------------------------

    def start(self) -> list[str]:
        """Build the desired state and program (or adopt) the lab; what was done."""
        rec = self.record
        self.desired = Desired(rec)
        sc = self.desired.scenario
        self.lab = Lab(make_plan(sc.topology, self.name, sc.frontend_routes), rec)
        table = self.desired.table()
        began = time.monotonic()
        if self.adopt:
            lines = self.backend.adopt(self.lab, table)
        else:
            self.backend.setup(self.lab, table)
            lines = []
        self._synced(began, "adopt" if self.adopt else "setup", lines, table)
        rec = state.load(self.name) or rec            # the backend may have recorded pins
        rec.agent_pid = os.getpid()
        rec.agent.setdefault("options", {})["seed"] = self.backend.seed
        if not rec.scenario_sha256:
            rec.scenario_sha256 = scenario_digest(rec.scenario)
        rec.save()
        self.record = self.lab.record = rec
        return lines

    def _synced(self, began: float, what: str, lines: list, table) -> None:
        self.stats["syncs"] += 1
        self.stats["services"] = len(table)
        self.stats["last_sync"] = {"at": time.time(), "what": what,
                                   "duration_ms": round((time.monotonic() - began) * 1000, 1), "lines": lines}
        self.backend.reconcile(self.lab)      # takes the reference the periodic check compares with
        self._save_status()

    def _save_status(self) -> None:
        path = status_path(self.name)
        with open(path + ".tmp", "w") as f:
            json.dump(self.stats, f, indent=1)
        os.replace(path + ".tmp", path)

    # -- loop ------------------------------------------------------------------------------------

    def serve(self, listener: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        next_reconcile = time.monotonic() + self.reconcile_period
        next_collect = time.monotonic() + self.collect_period
        # SIGTERM and SIGHUP wait while a request or a timer's work runs (a sync is never cut in
        # half), and are taken while the loop waits
        held = {signal.SIGTERM, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        while True:
            now = time.monotonic()
            timeout = max(0.0, min(next_reconcile, next_collect) - now)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
            events = sel.select(timeout)
            signal.pthread_sigmask(signal.SIG_BLOCK, held)
            for _key, _ in events:
                conn, _ = listener.accept()
                with conn:
                    self._answer(conn)
            now = time.monotonic()
            if now >= next_reconcile:
                self._reconcile()
                next_reconcile = time.monotonic() + self.reconcile_period
            if now >= next_collect:
                self._collect()
                next_collect = time.monotonic() + self.collect_period

    def _reconcile(self) -> None:
        try:
            repaired = self.backend.reconcile(self.lab)
        except Exception as exc:
            self._error(f"reconcile: {exc}")
            return
        self.stats["reconciles"] += 1
        if repaired:
            repaired += self.backend.reconcile(self.lab)   # the reference after the repair (or more repairs)
            self.stats["repairs"] += 1
            self.stats["drift"] = (self.stats["drift"] + [{"at": time.time(), "repaired": repaired}])[-MAX_DRIFT_KEPT:]
            for line in repaired:
                print(f"{time.strftime('%H:%M:%S')} drift repaired: {line}", flush=True)
        self._save_status()

    def _collect(self) -> None:
        try:
            n = self.backend.collect()
        except Exception as exc:
            self._error(f"garbage collection: {exc}")
            return
        self.stats["collected"] += n
        self.stats["last_collect"] = {"at": time.time(), "removed": n}

    def _error(self, what: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {what}", flush=True)
        self.stats["errors"] = (self.stats["errors"] + [{"at": time.time(), "error": what}])[-MAX_DRIFT_KEPT:]
        self._save_status()

    # -- requests --------------------------------------------------------------------------------

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            req = json.loads(data or b"{}")
        except (OSError, ValueError) as exc:
            self._reply(conn, {"ok": False, "error": f"bad request: {exc}"})
            return
        op = req.get("op")
        try:
            if op == "status":
                answer = {"ok": True, "status": self.stats}
            elif op == "apply":
                answer = self._change(*self.desired.prepare_apply(req["files"]))
            elif op == "delete":
                answer = self._change(*self.desired.prepare_delete(req["service"]))
            elif op == "stop":
                self._reply(conn, {"ok": True})
                raise Stop()
            else:
                answer = {"ok": False, "error": f"unknown request {op!r}"}
        except (DataplaneError, OSError) as exc:
            answer = {"ok": False, "error": str(exc)}
        except Stop:
            raise
        except Exception as exc:       # a defect: answer, keep serving, keep the trace
            traceback.print_exc()
            answer = {"ok": False, "error": f"agent error: {exc!r} (see {self.name}'s agent.log)"}
        self._reply(conn, answer)

    @staticmethod
    def _reply(conn: socket.socket, answer: dict) -> None:
        try:
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass

    def _change(self, cluster, lines: list, texts: list) -> dict:
        """Journal the change, sync the backend to it; if the backend refuses (a map too small),
        the journal entry goes and the desired state stays as it was."""
        table = cluster.table()
        written = self.desired.write(texts)
        began = time.monotonic()
        try:
            synced = self.backend.sync(self.lab, table)
        except BaseException as exc:
            self.desired.drop(written)
            self.stats["refused"] += 1
            self._error(f"change refused: {exc}")
            # a node may have taken the change before another refused it: all back to the state
            # the journal describes (a full sync where the backend cannot tell what it applied)
            try:
                self.backend.sync(self.lab, self.desired.table())
            except Exception as again:
                self._error(f"rolling back the refused change failed too (reconcile retries): {again}")
            raise
        self.desired.cluster = cluster
        self._synced(began, "apply", synced, table)
        warnings = [f"warning: {addr} (LoadBalancer or external IP) is not routed by the lab's underlay: only "
                    f"addresses in the scenario at `up` are; outside hosts cannot reach it"
                    for addr, _ in frontend_routes(table, self.lab.spec)
                    if addr not in {a for a, _ in self.desired.scenario.frontend_routes}]
        return {"ok": True, "lines": lines + synced + warnings}


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m dataplane.run.agent",
                                 description="A lab's agent (started by `dataplane up` and `reload`).")
    ap.add_argument("--lab", required=True)
    ap.add_argument("--adopt", action="store_true", help="take over what is installed instead of programming afresh")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # its own session; Ctrl-C belongs to the CLI
    ready = os.fdopen(os.dup(1), "w")
    agent = None
    listener = None
    lock = None
    try:
        # one agent per lab: a second one (two reloads at once) would undo the first one's syncs
        lock = open(os.path.join(state.lab_files(args.lab), "agent.lock"), "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            others = [p for p in state.agent_pids(args.lab) if p != os.getpid()]
            raise DataplaneError(f"lab {args.lab} already has an agent running (pid "
                                 f"{', '.join(map(str, others)) or 'unknown'}); `dataplane reload {args.lab}` "
                                 f"replaces it") from None
        agent = Agent(args.lab, args.adopt)
        lines = agent.start()
        path = socket_path(args.lab)
        if os.path.exists(path):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(8)
        ready.write(json.dumps({"ready": True, "pid": os.getpid(), "lines": lines}) + "\n")
        ready.close()
        os.dup2(2, 1)                 # from now on stdout is the log too
        agent.serve(listener)
    except Stop:
        return 0
    except BaseException as exc:
        if not ready.closed:
            msg = str(exc) if isinstance(exc, DataplaneError) else f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            ready.write(json.dumps({"ready": False, "error": msg}) + "\n")
            ready.close()
            return 1
        traceback.print_exc()
        return 1
    finally:
        if listener is not None:
            listener.close()
            try:
                os.unlink(socket_path(args.lab))
            except OSError:
                pass
        if agent is not None:
            agent.backend.release()
            rec = state.load(args.lab)
            if rec is not None and rec.agent_pid == os.getpid():
                rec.agent_pid = 0
                rec.save()
    return 0
