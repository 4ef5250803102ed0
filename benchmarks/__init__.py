"""Benchmarks: each prints a table and writes JSON. Run from the repository root: python -m benchmarks.<name>."""
