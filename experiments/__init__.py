"""Experiments and sweeps. Run from the repository root: python -m experiments.<name>."""
