"""The specification: what a scenario says, validated whole and resolved to addresses.

Owns: YAML reading with positions (yamldoc), the service table (table), Service specs and
manifests (services, manifests), the topology (topology, topology_section), checks as written
(checks), scenario files (scenario) and the one decision of which endpoints are eligible
(policy), shared by every backend and the oracle.
May import: nothing of dataplane but errors: it never touches the kernel.
"""
