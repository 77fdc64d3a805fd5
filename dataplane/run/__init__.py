"""Running things: a scenario on a live lab or on the emulator (runner), and benchmarks (bench/).

Owns: bring-up and teardown of a lab with its backend on every exit path, the order of a
scenario's steps, reports.
May import: spec, lab, contract, oracle, emulator, judge, backends, errors.
"""
