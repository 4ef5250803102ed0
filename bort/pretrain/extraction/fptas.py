"""The FPTAS's selection step: sort the candidates by parameter size and evaluate one every ε (the pivots of
ε-intervals); optionally refine inside the winning interval.

Intervals are consecutive runs of ε candidates in size order (the last may be shorter); ε = 1 is the exhaustive
search. Which member of an interval is its pivot is not known from the public sources: `pivot` chooses the
first (smallest), middle or last (largest). Whether Bort's search refined inside the winning interval is not known
either: `refine` adds the winning interval's other members as a second stage.
"""
from bort.errors import BortError

PIVOTS = ("first", "middle", "last")


def sort_by_size(candidates, size_of, tie_break=None):
    """Candidates in increasing size; ties broken by `tie_break` (e.g. the operation count), then by name."""
    return sorted(candidates, key=lambda c: (size_of(c), tie_break(c) if tie_break else 0, c.name))


def intervals(ordered, eps):
    """The ε-intervals of a size-ordered list: [ordered[0:eps], ordered[eps:2 eps], ...]."""
    if isinstance(eps, bool) or not isinstance(eps, int) or eps < 1:
        raise BortError(f"--eps must be a positive integer (candidates per interval), got {eps!r}")
    return [ordered[k:k + eps] for k in range(0, len(ordered), eps)]


def pivot_of(interval, pivot="first"):
    if pivot not in PIVOTS:
        raise BortError(f"--pivot must be one of {list(PIVOTS)}, got {pivot!r}")
    index = {"first": 0, "middle": (len(interval) - 1) // 2, "last": len(interval) - 1}[pivot]
    return interval[index]


def pivots(ordered, eps, pivot="first"):
    """The candidates the FPTAS evaluates: one per ε-interval."""
    return [pivot_of(group, pivot) for group in intervals(ordered, eps)]


def interval_containing(ordered, eps, candidate):
    """The ε-interval (a list) that holds `candidate`."""
    for group in intervals(ordered, eps):
        if candidate in group:
            return group
    raise BortError(f"{getattr(candidate, 'name', candidate)} is not one of the search's candidates")
