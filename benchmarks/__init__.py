"""Benchmarks: the harness and the agent measured against the peers' methods, side by side.

`python -m benchmarks.run [--quick] [--only NAME]` writes BENCHMARKS.md; see benchmarks/run.py.
"""
