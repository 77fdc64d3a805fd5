"""Benchmarks: measured, never asserted (tests assert behaviour; these print numbers with how
and where they were measured)."""
