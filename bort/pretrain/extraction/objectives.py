"""The three objectives combined: the W-coefficient, the rejection rule, the Pareto front.

As secondary sources quote arXiv 2010.08512 (docs/extraction.md): for a candidate b and the maximum point T,

    W(b) = ((p(T) − p(b)) / p(T)) · ((i(T) − i(b)) / i(T)) · (1 / ê(b))

p = parameter size, i = inference cost, ê = the error surrogate; higher is better. A candidate with p ≥ p(T) or
i ≥ i(T) is rejected (no absolute values: it would otherwise get a positive W from two negative factors).
"""
import math

from bort.errors import BortError


def rejection_reason(p, i, p_max, i_max):
    """Why a candidate is rejected (a short string), or None when it may be ranked."""
    reasons = []
    if p >= p_max:
        reasons.append(f"p {p:.6g} >= p(T) {p_max:.6g}")
    if i >= i_max:
        reasons.append(f"i {i:.6g} >= i(T) {i_max:.6g}")
    return "; ".join(reasons) or None


def w_coefficient(p, i, e, p_max, i_max):
    """W of one candidate, or None when it is rejected. `e` must be a positive, finite error estimate."""
    if p_max <= 0 or i_max <= 0:
        raise BortError(f"the maximum point needs positive size and cost, got p(T)={p_max}, i(T)={i_max}")
    if not (math.isfinite(e) and e > 0):
        raise BortError(f"the error surrogate must be positive and finite for W, got {e}")
    if rejection_reason(p, i, p_max, i_max):
        return None
    return (p_max - p) / p_max * (i_max - i) / i_max / e


def pareto_front(points):
    """Indices of the points (tuples of objectives, all minimised) that no other point dominates: another point
    is at most as large in every objective and smaller in one."""
    front = []
    for a, pa in enumerate(points):
        dominated = any(all(x <= y for x, y in zip(pb, pa)) and any(x < y for x, y in zip(pb, pa))
                        for b, pb in enumerate(points) if b != a)
        if not dominated:
            front.append(a)
    return front


def best_by_w(rows):
    """The row with the highest W among rows with one (ties: the smaller candidate, as listed first); None if
    there is none. Rows are dicts with a 'W' key (None when rejected or not evaluated)."""
    best = None
    for row in rows:
        if row.get("W") is not None and (best is None or row["W"] > best["W"]):
            best = row
    return best
