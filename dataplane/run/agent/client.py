"""The CLI's side of a lab's agent: start it, ask it, stop it."""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time

from ...errors import LabError
from ...lab import netns, state
from .server import socket_path, status_path

START_TIMEOUT = 600.0     # compiling the eBPF programs of every node on a slow VM
STOP_GRACE = 60.0         # SIGTERM waits for a sync under way; SIGKILL only after this


def start(name: str, adopt: bool = False, progress=lambda m: None) -> list[str]:
    """Start lab `name`'s agent and wait until it has programmed (or adopted) the lab. What it
    did; a LabError with its reason if it could not."""
    log = os.path.join(state.lab_files(name), "agent.log")
    with open(log, "a") as err:
        proc = subprocess.Popen([sys.executable, "-m", state.AGENT_MODULE, "--lab", name] + (["--adopt"] if adopt else []),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
    progress(f"agent {proc.pid} {'adopting' if adopt else 'programming'} lab {name}")
    try:
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
    except BaseException:
        netns.stop([proc.pid], grace=10.0)
        raise
    finally:
        proc.stdout.close()
    try:
        answer = json.loads(line)
    except ValueError:
        netns.stop([proc.pid], grace=10.0)
        raise LabError(f"the agent of lab {name} did not start{' in time' if not line else ''}; "
                       f"its log: {log}\n{_tail(log)}") from None
    if not answer.get("ready"):
        proc.wait(timeout=30)
        raise LabError(answer.get("error") or f"the agent of lab {name} failed; its log: {log}")
    return answer.get("lines", [])


def running(name: str) -> list[int]:
    return state.agent_pids(name)


def request(name: str, op: str, timeout: float = 600.0, **args) -> dict:
    """One request to the lab's agent; its answer (a LabError if the agent cannot be reached or
    refused: the refusal says why)."""
    path = socket_path(name)
    if state.load(name) is None:
        raise LabError(f"no lab named {name!r} (see `dataplane status`)")
    if not running(name):
        raise LabError(f"lab {name} has no agent running (its dataplane serves what it last programmed); "
                       f"start one with `dataplane reload {name}`")
    if not os.path.exists(path):
        raise LabError(f"the agent of lab {name} is still starting (programming the lab); try again in a moment")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
            s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise LabError(f"the agent of lab {name} did not answer: {exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise LabError(f"the agent of lab {name} gave no answer (see {state.lab_files(name)}/agent.log)") from None
    if not answer.get("ok"):
        raise LabError(answer.get("error", "refused"))
    return answer


def stop(name: str) -> list[int]:
    """Stop the lab's agent (the dataplane keeps serving); the pids stopped."""
    return netns.stop(running(name), grace=STOP_GRACE)


def last_status(name: str) -> dict | None:
    """What the agent last wrote about itself (also when it is not running)."""
    try:
        with open(status_path(name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _tail(path: str, n: int = 15) -> str:
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""
