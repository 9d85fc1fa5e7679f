"""A/B comparison of two model versions: pure statistics, no I/O.

Two questions, two tests, each judged at `alpha` and only with at least `min_samples` per arm:
- thumbs-down rate (thumbs-down over rated answers): two-sided two-proportion z-test with the
  pooled variance, the same as statsmodels' `proportions_ztest(count, nobs)`;
- latency of successful answers: two-sided Welch t-test (unequal variances), the same as
  `scipy.stats.ttest_ind(a, b, equal_var=False)` on the raw latencies. It is computed from each
  arm's count, mean and sample standard deviation (`ttest_ind_from_stats`), which is exactly what
  `ttest_ind` computes from the raw values; the store aggregates them, so no latency column is
  shipped to the client however long the window.
Lower is better for both metrics; `better` names the arm that is significantly lower.
The tests themselves live in schemas/stats.py, with the canary's sequential test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from schemas.stats import two_proportion_ztest, welch_ttest

INSUFFICIENT = "insufficient data"
NOT_SIGNIFICANT = "not significant"
SIGNIFICANT = "significant"


@dataclass(frozen=True)
class Arm:
    """What the tests need of one version (from `v_ab_summary` or the same SELECT over a window)."""

    version: str
    rated: int  # answers with a verdict
    thumbs_down: int
    ok_requests: int  # successful answers: the latency sample
    latency_mean_ms: float | None
    latency_std_ms: float | None  # sample standard deviation (n - 1)

    @property
    def thumbs_down_rate(self) -> float | None:
        return self.thumbs_down / self.rated if self.rated else None

    @classmethod
    def from_raw(cls, version: str, verdicts: list[str], latencies_ms: list[float]) -> Arm:
        """An arm from raw values: verdicts ('thumbs_up'/'thumbs_down') and ok latencies (for tests, notebooks)."""
        n = len(latencies_ms)
        mean = sum(latencies_ms) / n if n else None
        std = math.sqrt(sum((x - mean) ** 2 for x in latencies_ms) / (n - 1)) if n > 1 else None
        return cls(version, len(verdicts), verdicts.count("thumbs_down"), n, mean, std)


@dataclass(frozen=True)
class TestOutcome:
    metric: str
    value_a: float | None  # rate or mean of arm A
    value_b: float | None
    n_a: int
    n_b: int
    statistic: float | None  # z or t; None with insufficient data
    p_value: float | None
    verdict: str  # INSUFFICIENT, NOT_SIGNIFICANT or SIGNIFICANT
    better: str | None  # "a" or "b" when significant (lower wins), else None

    __test__ = False  # not a pytest class despite the name


@dataclass(frozen=True)
class ABComparison:
    version_a: str
    version_b: str
    alpha: float
    min_samples: int
    thumbs_down: TestOutcome
    latency: TestOutcome

    @property
    def verdict(self) -> str:
        """One line for people: what differs significantly, and what cannot be told yet."""
        parts = []
        for label, outcome in (("thumbs-down rate", self.thumbs_down), ("latency", self.latency)):
            if outcome.verdict == SIGNIFICANT:
                winner = self.version_a if outcome.better == "a" else self.version_b
                parts.append(f"{label}: {winner} is lower (p={outcome.p_value:.3g})")
            else:
                parts.append(f"{label}: {outcome.verdict}")
        return "; ".join(parts)


def _judge(metric, value_a, value_b, n_a, n_b, test, alpha, min_samples) -> TestOutcome:
    if min(n_a, n_b) < min_samples:
        return TestOutcome(metric, value_a, value_b, n_a, n_b, None, None, INSUFFICIENT, None)
    statistic, p_value = test()
    if p_value < alpha:
        return TestOutcome(
            metric, value_a, value_b, n_a, n_b, statistic, p_value, SIGNIFICANT, "a" if statistic < 0 else "b"
        )
    return TestOutcome(metric, value_a, value_b, n_a, n_b, statistic, p_value, NOT_SIGNIFICANT, None)


def compare_arms(a: Arm, b: Arm, alpha: float = 0.05, min_samples: int = 30) -> ABComparison:
    """Compare version B against version A at `alpha`, each test needing `min_samples` per arm."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if min_samples < 2:
        raise ValueError(f"min_samples must be at least 2, got {min_samples}")
    thumbs = _judge(
        "thumbs_down_rate",
        a.thumbs_down_rate,
        b.thumbs_down_rate,
        a.rated,
        b.rated,
        lambda: two_proportion_ztest(a.thumbs_down, a.rated, b.thumbs_down, b.rated),
        alpha,
        min_samples,
    )
    latency = _judge(
        "latency_ms",
        a.latency_mean_ms,
        b.latency_mean_ms,
        a.ok_requests,
        b.ok_requests,
        lambda: welch_ttest(
            a.latency_mean_ms, a.latency_std_ms, a.ok_requests, b.latency_mean_ms, b.latency_std_ms, b.ok_requests
        ),
        alpha,
        min_samples,
    )
    return ABComparison(a.version, b.version, alpha, min_samples, thumbs, latency)
