"""Benchmarks: measured, never asserted (tests assert behaviour; these print numbers with how
and where they were measured).

Owns: synthetic service tables (synthetic), `dataplane bench sync` (sync).
May import: what run/ may.
"""
