"""The workload the lab runs inside its namespaces: a test server (netexec), a client, a sniffer,
and the protocol they share; and dpperf (perf.c, perf.py), the benchmarks' native client and
server. Standard library only (scapy for the sniffer), so they start fast;
argv.py builds their command lines for a check.

Owns: what test clients and servers say to each other, and how a check starts a client.
May import: nothing of dataplane in the programs; spec in argv.py.
"""
