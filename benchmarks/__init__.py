"""Benchmark programs of mic2e-inference (not tests): run as ``python -m benchmarks.<name>``.

Each prints a short table to stdout and, with ``--out FILE``, its full JSON; ``--record``
files the JSON under ``benchmarks/results/``. See benchmarks/README.md.
"""
