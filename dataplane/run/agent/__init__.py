"""A running lab's agent: one process per lab (started by `dataplane up`, restarted by `reload`,
stopped by `down`) that owns the backend of a lab left running.

It holds the desired service state (desired.py: the scenario's services plus every apply and
delete since), syncs the backend to it, collects expired conntrack and affinity state on a period,
serves the health-check node ports (through the backend), and reconciles: what changed behind its
back (rules flushed, map entries deleted, hooks removed) is found and restored. The CLI talks to
it through a Unix socket beside the lab's record (client.py). See docs/agent.md.

Owns: the agent process (server), the CLI's side (client), the desired state's journal (desired).
May import: spec, lab, backends, errors.
"""
from .client import last_status, request, running, start, stop  # noqa: E402,F401  (the CLI's API)
