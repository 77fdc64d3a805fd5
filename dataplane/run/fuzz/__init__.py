"""Fuzzing: generated inputs, and judges that do not share the code under test.

Scenario fuzzing (scenarios): whole scenarios from dataplane.spec.generate, each run on every
backend (live ones side by side, each on a lab of its own), every check's outcome compared across
backends; a disagreement not documented in docs/differences.md is saved as a scenario file that
`dataplane run` replays. Packet fuzzing (packets, cases, twin): generated frames through the BPF
programs and the oracle, state compared.

Owns: `dataplane fuzz scenarios` (scenarios), `dataplane fuzz packets` (packets, cases, twin).
May import: what run/ may.
"""
