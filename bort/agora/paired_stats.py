"""Paired comparisons of two fine-tuning procedures (Agora, the grid, the control) with numpy and math only.

Per seed: one held-out score per arm, so differences are paired by seed (`paired_summary`: mean, 95 % confidence
interval from Student's t, the paired t-test, the exact sign test, and the minimum detectable effect at 80 % power).
Per example: the predictions of two arms pooled over seeds (`prediction_summary`: McNemar's exact test on the
discordant pairs, the disagreement rate, and the accuracy difference detectable at 80 % power given that rate).
All p-values are two-sided.
"""
import math
from statistics import NormalDist

import numpy as np


def _betacf(a, b, x):
    """Continued fraction of the regularized incomplete beta function (Numerical Recipes, Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def incomplete_beta(a, b, x):
    """I_x(a, b), the regularized incomplete beta function, for 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t, df):
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p, df):
    """The t with P(T <= t) = p (bisection on `t_cdf`)."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def binomial_two_sided(k, n):
    """Exact two-sided p of k successes in n fair trials (twice the smaller tail, at most 1)."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n  # exact integers: 2.0 ** n overflows past n = 1023
    return min(1.0, 2.0 * tail)


def minimum_detectable_effect(sd, n, alpha=0.05, power=0.8):
    """The smallest mean paired difference a two-sided paired t-test of n pairs with this standard deviation
    detects with the given power: (t_{1-α/2} + t_{power}) · sd / √n, df = n - 1."""
    if n < 2:
        return float("nan")
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def paired_summary(a, b, alpha=0.05, power=0.8):
    """Statistics of the paired differences a - b (one value per seed): mean, sd, 95 % CI, paired t-test, sign
    test (ties dropped), wins / losses / ties and the minimum detectable effect."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    se = sd / math.sqrt(n) if n > 1 else float("nan")
    out = {"n": n, "mean": mean, "sd": sd, "se": se, "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
           "ties": int((d == 0).sum())}
    if n > 1 and se > 0:
        half = t_quantile(1 - alpha / 2, n - 1) * se
        t = mean / se
        out.update(ci_low=mean - half, ci_high=mean + half, t=t, t_p=2 * (1 - t_cdf(abs(t), n - 1)))
    elif n > 1:  # every difference equal: no spread (t infinite unless they are all 0)
        out.update(ci_low=mean, ci_high=mean, t=0.0 if mean == 0 else math.copysign(math.inf, mean),
                   t_p=1.0 if mean == 0 else 0.0)
    else:
        out.update(ci_low=float("nan"), ci_high=float("nan"), t=float("nan"), t_p=float("nan"))
    out["sign_p"] = binomial_two_sided(out["wins"], out["wins"] + out["losses"])
    out["mde"] = minimum_detectable_effect(sd, n, alpha, power)
    return out


def prediction_summary(correct_a, correct_b, alpha=0.05, power=0.8):
    """Per-example comparison of two arms (booleans: arm right on the example), pooled over seeds: McNemar's exact
    test, the disagreement rate (examples exactly one arm gets right) and the accuracy difference detectable at
    `power` given that rate, (z_{1-α/2} + z_{power}) · √(disagreement / N)."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b, n = int((a & ~b).sum()), int((~a & b).sum()), len(a)
    disagreement = (only_a + only_b) / n if n else float("nan")
    z = NormalDist()
    return {"examples": n, "only_a": only_a, "only_b": only_b, "mcnemar_p": binomial_two_sided(only_a, only_a + only_b),
            "disagreement": disagreement, "accuracy_difference": (only_a - only_b) / n if n else float("nan"),
            "mde": (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * math.sqrt(disagreement / n) if n else float("nan")}
