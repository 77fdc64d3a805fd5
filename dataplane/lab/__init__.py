"""The lab: network namespaces, veths, bridges, routes, cgroups and the processes in them, built
from a topology and removed without a trace. It knows no dataplane.

Owns: plans (plan), names (names), namespaces and netlink (netns), cgroups, building and
teardown (lab), records (state), sniffers in a live lab (sniffers), the test workload (workload/).
May import: spec, errors.
"""
