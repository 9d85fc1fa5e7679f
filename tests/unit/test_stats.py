"""schemas/stats.py: the fixed-sample tests against hand computations and scipy, the mSPRT against its closed form
and, by Monte Carlo, its false-alarm rate under repeated looks."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import pytest
from scipy import stats

from schemas.stats import (
    msprt,
    msprt_means,
    msprt_proportions,
    proportion_variance,
    two_proportion_ztest,
    welch_ttest,
)

# --- fixed-sample tests ----------------------------------------------------------------------------------------------


def test_ztest_matches_a_hand_computation():
    # 30/100 vs 15/100: pooled p = 45/200 = 0.225; se = sqrt(0.225 * 0.775 * (1/100 + 1/100)).
    se = math.sqrt(0.225 * 0.775 * 0.02)
    z_hand = (0.30 - 0.15) / se  # 2.5400...
    p_hand = math.erfc(abs(z_hand) / math.sqrt(2))  # two-sided normal tail
    z, p = two_proportion_ztest(30, 100, 15, 100)
    assert z == pytest.approx(z_hand) == pytest.approx(2.5400, abs=1e-4)
    assert p == pytest.approx(p_hand) == pytest.approx(0.01109, abs=1e-5)


def test_ztest_one_sided():
    z, p = two_proportion_ztest(40, 100, 10, 100, alternative="larger")
    pooled = 50 / 200
    expected = (0.4 - 0.1) / (pooled * (1 - pooled) * (2 / 100)) ** 0.5
    assert z == pytest.approx(expected)
    assert p == pytest.approx(stats.norm.sf(expected))
    assert two_proportion_ztest(0, 50, 0, 50, alternative="larger") == (0.0, 1.0)
    with pytest.raises(ValueError):
        two_proportion_ztest(1, 10, 1, 10, alternative="smaller")


def test_ztest_is_symmetric():
    z1, p1 = two_proportion_ztest(12, 80, 30, 90)
    z2, p2 = two_proportion_ztest(30, 90, 12, 80)
    assert z1 == pytest.approx(-z2) and p1 == pytest.approx(p2)


@pytest.mark.parametrize(("a", "b"), [((0, 50), (0, 40)), ((50, 50), (40, 40))])
def test_ztest_with_identical_all_or_nothing_samples(a, b):
    assert two_proportion_ztest(*a, *b) == (0.0, 1.0)


def _summary(xs):
    n = len(xs)
    mean = sum(xs) / n
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)), n


def test_welch_from_stats_equals_ttest_ind_on_raw_values():
    rng = random.Random(7)
    xs = [rng.gauss(120, 15) for _ in range(200)]
    ys = [rng.gauss(115, 40) for _ in range(73)]
    t, p = welch_ttest(*_summary(xs), *_summary(ys))
    expected = stats.ttest_ind(xs, ys, equal_var=False)
    assert t == pytest.approx(expected.statistic, rel=1e-9)
    assert p == pytest.approx(expected.pvalue, rel=1e-9)


def test_welch_one_sided_equals_ttest_ind_greater():
    rng = np.random.default_rng(7)
    canary, current = rng.normal(330, 90, 40), rng.normal(300, 60, 60)
    expected = stats.ttest_ind(canary, current, equal_var=False, alternative="greater").pvalue
    _, p = welch_ttest(*_summary(list(canary)), *_summary(list(current)), alternative="greater")
    assert p == pytest.approx(expected)


def test_welch_without_variance():
    assert welch_ttest(100.0, 0.0, 10, 100.0, 0.0, 10) == (0.0, 1.0)
    assert welch_ttest(90.0, 0.0, 10, 100.0, 0.0, 10) == (-math.inf, 0.0)
    assert welch_ttest(300.0, 0.0, 5, 200.0, 0.0, 5, alternative="greater") == (math.inf, 0.0)
    assert welch_ttest(200.0, 0.0, 5, 300.0, 0.0, 5, alternative="greater") == (-math.inf, 1.0)


# --- mSPRT -----------------------------------------------------------------------------------------------------------


def test_msprt_matches_the_closed_form_by_hand():
    # θ̂ = 0.1, V = 0.001, τ² = 0.01, α = 0.05:
    # Λ = sqrt(0.001/0.011) · exp(0.01 · 0.01 / (2 · 0.001 · 0.011)) = 0.301511 · e^4.545454 = 28.4029
    # h = sqrt(0.001 · 0.011 / 0.01 · (2 ln 20 + ln 11)) = sqrt(0.0011 · 8.389366) = 0.096064
    s = msprt(0.1, 0.001, 0.01, 0.05)
    assert s.p_value == pytest.approx(1 / 28.4029, rel=1e-4) == pytest.approx(0.035208, abs=1e-5)
    assert s.lower == pytest.approx(0.1 - 0.096064, abs=1e-6) and s.upper == pytest.approx(0.196064, abs=1e-6)
    # The sequence and the p-value agree: 0 is outside exactly when p <= alpha.
    assert (s.lower > 0) == (s.p_value <= 0.05)
    # A small estimate: Λ < 1, p capped at 1; the sequence is symmetric around θ̂.
    small = msprt(0.001, 0.001, 0.01, 0.05)
    assert small.p_value == 1.0 and small.upper - 0.001 == pytest.approx(0.001 - small.lower)
    # No variance: the estimate is exact.
    assert msprt(0.0, 0.0, 0.01, 0.05).p_value == 1.0 and msprt(0.2, 0.0, 0.01, 0.05).lower == 0.2


def test_msprt_is_wider_than_the_fixed_sample_interval():
    # The price of looking at every poll: the 95% sequence is wider than the 95% normal interval.
    s = msprt(0.0, 0.001, 0.01, 0.05)
    assert s.upper > 1.96 * math.sqrt(0.001)


def test_msprt_proportions_by_hand():
    # 30/100 vs 15/100, continuity prior 0.5: p̃ = 30.5/101 and 15.5/101.
    pa, pb = 30.5 / 101, 15.5 / 101
    v = pa * (1 - pa) / 100 + pb * (1 - pb) / 100
    s = msprt_proportions(30, 100, 15, 100, 0.01, 0.05)
    assert s.estimate == pytest.approx(0.15) and s.variance == pytest.approx(v)
    h = math.sqrt(v * (v + 0.01) / 0.01 * (2 * math.log(20) + math.log((v + 0.01) / v)))
    assert s.lower == pytest.approx(0.15 - h) and s.upper == pytest.approx(0.15 + h)
    assert proportion_variance(0, 50) > 0 and proportion_variance(50, 50) > 0  # 0/n is not certainty
    assert msprt_proportions(0, 0, 1, 10, 0.01, 0.05) is None


def test_msprt_means_with_a_ratio():
    # θ = 300 − 2 · 200 = −100, V = 80²/50 + 4 · 60²/500.
    s = msprt_means(300, 80, 50, 200, 60, 500, 100.0**2, 0.05, ratio=2.0)
    assert s.estimate == pytest.approx(-100) and s.variance == pytest.approx(80**2 / 50 + 4 * 60**2 / 500)
    assert s.upper < 0
    assert msprt_means(300, 80, 1, 200, 60, 500, 1.0, 0.05) is None


def test_false_alarms_under_h0_with_100_looks_stay_below_alpha():
    """Two equal arms (rate 0.2), 10 observations per arm between looks, 100 looks: the share of runs whose
    sequence ever excludes θ = 0 is the false-alarm rate (a fixed-sample test re-run at every look: about 40%)."""
    started = time.monotonic()
    rng = np.random.default_rng(11)
    runs, looks, per_look, alpha = 1000, 100, 10, 0.05
    a = rng.binomial(per_look, 0.2, size=(runs, looks)).cumsum(axis=1)
    b = rng.binomial(per_look, 0.2, size=(runs, looks)).cumsum(axis=1)
    alarms = naive = 0
    for i in range(runs):
        hit = hit_naive = False
        for k in range(looks):
            n = per_look * (k + 1)
            s = msprt_proportions(int(a[i, k]), n, int(b[i, k]), n, 0.1**2, alpha)
            hit = hit or s.lower > 0 or s.upper < 0
            hit_naive = hit_naive or abs(s.estimate) > 1.96 * math.sqrt(s.variance)
            if hit and hit_naive:
                break
        alarms += hit
        naive += hit_naive
    assert alarms / runs <= alpha, alarms
    assert naive / runs > 2 * alpha  # the repeated fixed-sample test does inflate them
    assert time.monotonic() - started < 2.0
