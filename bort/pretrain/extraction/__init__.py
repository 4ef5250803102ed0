"""Optimal subarchitecture extraction (de Wynter, arXiv 2010.08512): the search that found Bort, for any teacher.

Modules: `space` (search-space files, candidates, analytic size and operation counts), `objectives` (the
W-coefficient, the rejection rule, the Pareto front), `fptas` (sorting and ε-interval pivots), `evaluate` (the
error surrogate: s steps of distillation from a teacher cache, loss on a held-out set), `timing` (CPU wall clock of
the inference engine), `runner` (the whole search: resume, ranks, results table, plot). Guide: docs/extraction.md.
"""
