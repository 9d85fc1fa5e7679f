"""The canary rollout as pure functions: the plan, the routes of a step, the step decision, resumption.

No I/O here: inference/controller.py feeds these functions the routing table and the figures of
inference/canary_metrics.py and carries out what they return.

The decision at a step compares the canary with the current version over the same window (since
the step started), at significance `alpha`, each test only with at least `min_samples` per arm:
- thumbs-down rate (thumbs-down over rated answers): one-sided pooled two-proportion z-test,
  H1 "canary worse" (the same statistic as statsmodels' `proportions_ztest(..., alternative="larger")`);
- error rate (error or timeout over responses): the same test;
- latency of successful answers: worse when the canary's p95 over the current's exceeds
  `p95_ratio_bound` *and* a one-sided Welch t-test on the mean latencies says the canary is slower
  (scipy's `ttest_ind_from_stats`, from each arm's mean, standard deviation and count). The bound
  alone is no test: over a few dozen answers a p95 is nearly the maximum, and one answer stalled by
  a busy machine would roll back a good canary.
Any failed check rolls back at once, even before the step's time is up (an early stop inflates the
false-alarm rate a little; a bad canary reaching more users costs more). The canary advances only
when the step's time is up and every check had enough data and passed. Without enough data the
step is extended up to `max_wait_s`; then `on_timeout` decides (roll back by default: no evidence
is no reason to give a version everyone's traffic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Outcome(StrEnum):
    ADVANCE = "advance"
    HOLD = "hold"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Figures:
    """One version's figures over a window (see inference/canary_metrics.py)."""

    version: str
    responses: int = 0
    errors: int = 0  # status error or timeout
    rated: int = 0  # responses with a verdict
    thumbs_down: int = 0
    latency_p95_ms: float | None = None  # over successful responses
    latency_mean_ms: float | None = None  # over successful responses
    latency_sd_ms: float | None = None  # sample standard deviation, over successful responses

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.responses if self.responses else None

    @property
    def thumbs_down_rate(self) -> float | None:
        return self.thumbs_down / self.rated if self.rated else None

    def describe(self) -> str:
        p95 = "-" if self.latency_p95_ms is None else f"{self.latency_p95_ms:.0f}ms"
        return (f"{self.version}: n={self.responses} err={self.errors} rated={self.rated} "
                f"down={self.thumbs_down} p95={p95}")


@dataclass(frozen=True)
class Policy:
    plan: tuple[int, ...] = (5, 20, 50, 100)
    step_s: float = 20.0
    min_samples: int = 30
    alpha: float = 0.05
    p95_ratio_bound: float = 2.0
    max_wait_s: float = 60.0
    on_timeout: Literal["rollback", "advance"] = "rollback"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str


def plan_error(plan: tuple[int, ...] | list[int]) -> str | None:
    """Why a canary plan is unusable, or None: weights strictly increasing in 1..100, ending at 100."""
    if not plan:
        return "the plan is empty"
    if any(not 0 < w <= 100 for w in plan):
        return f"weights must be in 1..100: {list(plan)}"
    if any(b <= a for a, b in zip(plan, plan[1:], strict=False)):
        return f"weights must increase: {list(plan)}"
    if plan[-1] != 100:
        return f"the plan must end at 100: {list(plan)}"
    return None


def next_weight(plan: tuple[int, ...], weight: int) -> int:
    """The plan's weight after `weight` (the first one above it); 100 stays 100."""
    return next((w for w in plan if w > weight), 100)


def step_routes(current: str, canary: str, weight: int) -> dict[str, int]:
    """The routing table of an alias with `canary` at `weight` and `current` taking the rest."""
    if weight >= 100 or current == canary:
        return {canary: 100}
    if weight <= 0:
        return {current: 100}
    return {current: 100 - weight, canary: weight}


def one_sided_z(bad_a: int, n_a: int, bad_b: int, n_b: int) -> tuple[float, float]:
    """Pooled two-proportion z-test, H1: rate of A > rate of B. Returns (z, p-value)."""
    pooled = (bad_a + bad_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:  # both rates 0 or both 1: no evidence either way
        return 0.0, 1.0
    z = (bad_a / n_a - bad_b / n_b) / se
    from scipy import stats  # lazy: 2 s of import time for every CLI call otherwise

    return z, float(stats.norm.sf(z))


def _proportion_check(name: str, bad_c: int, n_c: int, bad_o: int, n_o: int, p: Policy) -> tuple[bool | None, str]:
    """(None: not enough data | True: canary significantly worse | False: passed, reason text)."""
    if n_c < p.min_samples or n_o < p.min_samples:
        return None, f"{name}: {n_c}/{n_o} samples < {p.min_samples}"
    z, pv = one_sided_z(bad_c, n_c, bad_o, n_o)
    text = f"{name} {bad_c / n_c:.3f} vs {bad_o / n_o:.3f} (z={z:.2f}, p={pv:.4f})"
    return pv < p.alpha, text


def slower_p(canary: Figures, current: Figures) -> float:
    """One-sided Welch t-test, H1: the canary's mean latency is larger. Returns the p-value."""
    ok_c, ok_o = canary.responses - canary.errors, current.responses - current.errors
    mean_c, mean_o = canary.latency_mean_ms or 0.0, current.latency_mean_ms or 0.0
    sd_c, sd_o = canary.latency_sd_ms or 0.0, current.latency_sd_ms or 0.0
    if sd_c == 0 and sd_o == 0:  # no spread at all: the means decide
        return 0.0 if mean_c > mean_o else 1.0
    from scipy import stats

    result = stats.ttest_ind_from_stats(mean_c, sd_c, ok_c, mean_o, sd_o, ok_o, equal_var=False,
                                        alternative="greater")
    return float(result.pvalue)


def _latency_check(canary: Figures, current: Figures, p: Policy) -> tuple[bool | None, str]:
    ok_c, ok_o = canary.responses - canary.errors, current.responses - current.errors
    if ok_c < p.min_samples or ok_o < p.min_samples or not canary.latency_p95_ms or not current.latency_p95_ms:
        return None, f"p95: {ok_c}/{ok_o} samples < {p.min_samples}"
    ratio = canary.latency_p95_ms / current.latency_p95_ms
    pv = slower_p(canary, current)
    text = (f"p95 {canary.latency_p95_ms:.0f}ms vs {current.latency_p95_ms:.0f}ms "
            f"(ratio {ratio:.2f}, bound {p.p95_ratio_bound}; mean "
            f"{canary.latency_mean_ms or 0:.0f}ms vs {current.latency_mean_ms or 0:.0f}ms, Welch p={pv:.4f})")
    return ratio > p.p95_ratio_bound and pv < p.alpha, text


def decide(canary: Figures, current: Figures, policy: Policy, elapsed_s: float) -> Decision:
    """The step decision, `elapsed_s` seconds after the step started."""
    checks = [
        _proportion_check("thumbs-down", canary.thumbs_down, canary.rated, current.thumbs_down, current.rated, policy),
        _proportion_check("errors", canary.errors, canary.responses, current.errors, current.responses, policy),
        _latency_check(canary, current, policy),
    ]
    failed = [text for worse, text in checks if worse]
    if failed:
        return Decision(Outcome.ROLLBACK, "canary worse: " + "; ".join(failed))
    summary = "; ".join(text for _, text in checks)
    if elapsed_s < policy.step_s:
        return Decision(Outcome.HOLD, f"step running ({elapsed_s:.0f}/{policy.step_s:.0f}s): {summary}")
    if all(worse is not None for worse, _ in checks):
        return Decision(Outcome.ADVANCE, f"no regression: {summary}")
    waited = elapsed_s - policy.step_s
    if waited < policy.max_wait_s:
        return Decision(Outcome.HOLD, f"not enough data ({waited:.0f}/{policy.max_wait_s:.0f}s extra): {summary}")
    outcome = Outcome.ROLLBACK if policy.on_timeout == "rollback" else Outcome.ADVANCE
    return Decision(outcome, f"not enough data after {elapsed_s:.0f}s, policy {policy.on_timeout}: {summary}")


@dataclass(frozen=True)
class Resume:
    """What a restarted controller does with a rollout it finds in Redis."""

    action: Literal["continue", "rollback", "finish", "restart"]
    reason: str


def resume_action(phase: str, routes: dict[str, int], current: str, canary: str) -> Resume:
    """Decide how to pick up a rollout after a crash, from its recorded phase and the live routes.

    - `loading` (adapter recorded, maybe not loaded or routed): load and verify again, then start the
      canary; nothing has reached users yet.
    - `canary` with the routes holding exactly the current and the canary versions: continue at the
      routed weight with a fresh step window (the weight never rises without a full step of evidence
      gathered by the live process; the figures of the crashed window are not trusted).
    - `finishing` (promotion or rollback routed, unload pending): drain and unload again (idempotent).
    - anything else (routes edited by hand, versions gone): roll back to the current version, the one
      known good.
    """
    if phase == "loading":
        return Resume("restart", "crashed while loading: load and verify again")
    if phase == "finishing":
        return Resume("finish", "crashed after the final route change: drain and unload again")
    if phase == "canary" and set(routes) <= {current, canary} and routes.get(current, 0) > 0:
        weight = routes.get(canary, 0)
        return Resume("continue", f"canary at {weight}% when the controller stopped: step restarted")
    return Resume("rollback", f"routes {routes} do not match the recorded rollout {current} -> {canary}")
