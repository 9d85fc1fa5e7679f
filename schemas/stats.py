"""The statistics of the product: fixed-sample tests for the analysts' A/B view, sequential tests for the canary.

Pure functions of counts, means and standard deviations; imports nothing of the product. scipy is imported inside
the functions that need it: its import takes about 2 s, which every `flywheel` command would pay otherwise.

Fixed-sample tests (deploy/abtest.py; valid for one look at a sample fixed in advance):
- `two_proportion_ztest`: pooled two-proportion z-test, the same statistic as statsmodels' `proportions_ztest`;
- `welch_ttest`: Welch's t-test (unequal variances) from each arm's mean, sample sd and count, the same as
  `scipy.stats.ttest_ind(a, b, equal_var=False)` on the raw values.

Sequential test (inference/controller/rollout.py; valid at every look, however often and whenever the looks are taken):
the mixture sequential probability ratio test (mSPRT) with a normal mixture, as in Johari, Pekelis and Walsh,
"Always valid inference: continuous monitoring of A/B tests" (the Optimizely stats engine). For the difference θ
of two arms, with the estimate θ̂ and its variance V at the current look (V = σ_a²/n_a + σ_b²/n_b), and the
mixing distribution θ ~ N(θ0, τ²) over the alternatives, the mixture likelihood ratio against H0: θ = θ0 is

    Λ(θ0) = sqrt(V / (V + τ²)) · exp( τ² (θ̂ − θ0)² / (2 V (V + τ²)) ).

Under H0, Λ is a nonnegative martingale with mean 1, so by Ville's inequality P(Λ ever reaches 1/α) <= α:
- the always-valid p-value at a look is min(1, 1/Λ(0)) (the running minimum over looks is the p-value of the
  whole sequence; a caller that stops at the first look with p <= α needs no memory);
- the always-valid confidence sequence at level α is {θ0 : Λ(θ0) < 1/α}, i.e. θ̂ ± h with

    h² = (V (V + τ²) / τ²) · (2 log(1/α) + log((V + τ²) / V)),

  which holds the true θ at every look at once with probability >= 1 − α. A one-sided decision ("lower bound
  above 0") read off this two-sided sequence errs with probability <= α (conservative: about α/2 in practice).

Variances are plugged in from the data (the known-variance theory is asymptotic in n):
- proportions (thumbs-down rate, error rate: Bernoulli): σ² = p̃(1 − p̃) with p̃ = (x + c)/(n + 2c), a
  continuity prior of c = 0.5 successes and failures per arm, so that 0/n or n/n does not claim zero variance;
  θ̂ is the difference of the raw rates;
- means (latency): σ² from each arm's sample standard deviation; θ = mean_a − ratio · mean_b, so that "A is
  more than `ratio` times slower than B" is a test of θ > 0, with V = sd_a²/n_a + ratio² sd_b²/n_b.

τ² is the scale of the differences the test is tuned to find (the bound is tightest near |θ| ≈ τ); the defaults
below are the canary's, tuned with bench/rollout_sim.py: τ = 0.1 for the thumbs-down rate (the margin of
inferiority the canary accepts), τ = 0.05 for the error rate (its margin), τ = 0.5 × the current arm's mean for
latency (TAU_LATENCY_REL: the canary's ratio test sits a whole mean away from θ = 0 when the versions are equal).

No library is used for the sequential test: of the packages that implement it, confseq (0.0.11, January 2023)
and savvi (0.3.1, October 2024) are pre-1.0 with few releases, and the closed form above is a few lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TAU_THUMBS_DOWN = 0.10
TAU_ERRORS = 0.05
TAU_LATENCY_REL = 0.5
CONTINUITY = 0.5  # prior successes and failures per arm in a proportion's variance


# --- fixed-sample tests ------------------------------------------------------------------------------------------


def two_proportion_ztest(
    count_a: int, n_a: int, count_b: int, n_b: int, alternative: str = "two-sided"
) -> tuple[float, float]:
    """Pooled two-proportion z-test of p_a == p_b; returns (z, p-value).

    `alternative`: "two-sided", or "larger" (H1: p_a > p_b). When the pooled proportion is 0 or 1 both samples
    are identical (all or none): z 0, p 1.
    """
    if n_a <= 0 or n_b <= 0:
        raise ValueError("both samples need at least one observation")
    pooled = (count_a + count_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (count_a / n_a - count_b / n_b) / se
    from scipy import stats  # lazy: see the module docstring

    if alternative == "larger":
        return z, float(stats.norm.sf(z))
    if alternative != "two-sided":
        raise ValueError(f"alternative must be 'two-sided' or 'larger', got {alternative!r}")
    return z, float(2 * stats.norm.sf(abs(z)))


def welch_ttest(
    mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int, alternative: str = "two-sided"
) -> tuple[float, float]:
    """Welch t-test from summary statistics (sample std, n - 1); returns (t, p-value).

    `alternative`: "two-sided", or "greater" (H1: mean_a > mean_b). With no variance in either arm the difference
    is exact: equal means give (0, 1), else (±inf, 0 or 1).
    """
    if alternative not in ("two-sided", "greater"):
        raise ValueError(f"alternative must be 'two-sided' or 'greater', got {alternative!r}")
    if n_a < 2 or n_b < 2:
        raise ValueError("both samples need at least two observations")
    if std_a == 0 and std_b == 0:
        if mean_a == mean_b:
            return 0.0, 1.0
        t = math.copysign(math.inf, mean_a - mean_b)
        return t, (0.0 if alternative == "two-sided" or t > 0 else 1.0)
    from scipy import stats

    result = stats.ttest_ind_from_stats(
        mean_a, std_a, n_a, mean_b, std_b, n_b, equal_var=False, alternative=alternative
    )
    return float(result.statistic), float(result.pvalue)


# --- the mixture sequential probability ratio test ----------------------------------------------------------------


@dataclass(frozen=True)
class Sequential:
    """One look of an mSPRT on θ: the estimate, its variance, the always-valid p-value and confidence sequence."""

    estimate: float
    variance: float
    p_value: float  # for H0: θ = 0, at this look
    lower: float  # the confidence sequence at level alpha
    upper: float


def msprt(estimate: float, variance: float, tau2: float, alpha: float) -> Sequential:
    """The normal-mixture mSPRT at one look, from θ̂ and its variance V (formulas in the module docstring)."""
    if tau2 <= 0 or not 0 < alpha < 1:
        raise ValueError(f"need tau2 > 0 and 0 < alpha < 1, got {tau2}, {alpha}")
    if variance <= 0:  # no spread at all: the estimate is exact
        return Sequential(estimate, 0.0, 1.0 if estimate == 0 else 0.0, estimate, estimate)
    v, total = variance, variance + tau2
    log_ratio = 0.5 * math.log(v / total) + tau2 * estimate * estimate / (2 * v * total)
    p_value = 1.0 if log_ratio <= 0 else math.exp(-log_ratio)
    half = math.sqrt(v * total / tau2 * (2 * math.log(1 / alpha) + math.log(total / v)))
    return Sequential(estimate, v, p_value, estimate - half, estimate + half)


def proportion_variance(count: int, n: int, prior: float = CONTINUITY) -> float:
    """Bernoulli variance p̃(1 − p̃) with p̃ = (count + prior)/(n + 2 prior): never 0 for 0/n or n/n."""
    p = (count + prior) / (n + 2 * prior)
    return p * (1 - p)


def msprt_proportions(
    count_a: int, n_a: int, count_b: int, n_b: int, tau2: float, alpha: float, prior: float = CONTINUITY
) -> Sequential | None:
    """mSPRT on θ = p_a − p_b (rates of the raw counts); None while an arm has no observation."""
    if n_a <= 0 or n_b <= 0:
        return None
    variance = proportion_variance(count_a, n_a, prior) / n_a + proportion_variance(count_b, n_b, prior) / n_b
    return msprt(count_a / n_a - count_b / n_b, variance, tau2, alpha)


def msprt_means(
    mean_a: float,
    sd_a: float,
    n_a: int,
    mean_b: float,
    sd_b: float,
    n_b: int,
    tau2: float,
    alpha: float,
    ratio: float = 1.0,
) -> Sequential | None:
    """mSPRT on θ = mean_a − ratio · mean_b, from sample sds; None while an arm has fewer than 2 observations."""
    if n_a < 2 or n_b < 2:
        return None
    variance = sd_a * sd_a / n_a + ratio * ratio * sd_b * sd_b / n_b
    return msprt(mean_a - ratio * mean_b, variance, tau2, alpha)
