"""bort.agora.paired_stats on hand-made numbers (values checked against published t / binomial tables)."""
import math

import pytest

from bort.agora.paired_stats import (binomial_two_sided, minimum_detectable_effect, paired_summary,
                                     prediction_summary, t_cdf, t_quantile)


def test_t_distribution_matches_the_tables():
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(0.975, 7) == pytest.approx(2.3646, abs=1e-4)
    assert t_quantile(0.80, 9) == pytest.approx(0.8834, abs=1e-4)
    assert t_quantile(0.975, 1000) == pytest.approx(1.9623, abs=1e-4)
    assert t_cdf(0.0, 3) == pytest.approx(0.5) and t_cdf(-2.0, 10) == pytest.approx(1 - t_cdf(2.0, 10))


def test_paired_summary_of_five_differences():
    s = paired_summary([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])  # differences 1..5
    assert s["mean"] == 3 and s["sd"] == pytest.approx(math.sqrt(2.5)) and s["se"] == pytest.approx(math.sqrt(0.5))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((3 - 2.7764 * math.sqrt(0.5), 3 + 2.7764 * math.sqrt(0.5)),
                                                        abs=1e-4)
    assert s["t"] == pytest.approx(4.2426, abs=1e-4) and s["t_p"] == pytest.approx(0.01324, abs=1e-5)
    assert s["sign_p"] == pytest.approx(2 / 32) and (s["wins"], s["losses"], s["ties"]) == (5, 0, 0)
    tied = paired_summary([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert tied["t_p"] == 1.0 and tied["sign_p"] == 1.0 and tied["ties"] == 3


def test_sign_and_mcnemar_tests_are_exact_binomials():
    assert binomial_two_sided(10, 12) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert binomial_two_sided(3, 6) == 1.0 and binomial_two_sided(0, 0) == 1.0
    # pooled predictions have thousands of discordant pairs (8 seeds x 707 rows): no float overflow past n = 1023
    assert binomial_two_sided(1000, 2000) == 1.0
    assert binomial_two_sided(900, 2000) == pytest.approx(8.6e-6, rel=0.1)  # normal approx.: z = -99.5 / sqrt(500)
    a = [True] * 10 + [False] * 2 + [True] * 5 + [False] * 3  # 10 only a, 2 only b, 5 both, 3 neither
    b = [False] * 10 + [True] * 2 + [True] * 5 + [False] * 3
    s = prediction_summary(a, b)
    assert (s["only_a"], s["only_b"], s["examples"]) == (10, 2, 20)
    assert s["mcnemar_p"] == pytest.approx(0.03857, abs=1e-5) and s["disagreement"] == pytest.approx(0.6)
    assert s["accuracy_difference"] == pytest.approx(0.4)
    assert s["mde"] == pytest.approx((1.95996 + 0.84162) * math.sqrt(0.6 / 20), abs=1e-4)


def test_minimum_detectable_effect_of_a_paired_t_test():
    # 10 seeds, sd of the differences 1: (t_.975,9 + t_.80,9) / sqrt(10)
    assert minimum_detectable_effect(1.0, 10) == pytest.approx((2.2622 + 0.8834) / math.sqrt(10), abs=1e-3)
    # the numbers: sd ~0.042 over 5 seeds gives ~0.07
    assert minimum_detectable_effect(0.042, 5) == pytest.approx(0.07, abs=0.01)
    assert math.isnan(minimum_detectable_effect(1.0, 1))
