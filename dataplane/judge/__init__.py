"""The judge: whether what happened is what should have happened, the same for a live lab and the
emulator.

Owns: check results (checks: evaluate), what a capture proves (capture), and the only places
backends may disagree (differences, rendered into docs/differences.md).
May import: spec, errors.
"""
