"""The canary rollout as pure functions: the plan, the first weight, the routes of a step, the decision, resumption.

No I/O here: inference/controller/deployer.py feeds these functions the routing table and the figures of
inference/controller/canary_metrics.py and carries out what they return.

The decision compares the canary with the current version over the same window: everything since the canary
started (cumulative, across steps), with the always-valid mixture sequential test of schemas/stats.py (mSPRT),
so that looking at every poll of every step does not inflate the false alarms (a fixed-sample test re-run at
each look does). For each metric, θ = canary − current, with a confidence sequence at level `alpha`:
- thumbs-down rate (thumbs-down over rated answers) and error rate (error or timeout over responses):
  θ = rate_canary − rate_current;
- latency of successful answers: θ = mean_canary − `latency_ratio` × mean_current (the canary's mean may
  exceed the current's by that ratio: on CPU a LoRA answer takes about 1.5x the base model's, 157 ms vs
  107 ms measured in the end-to-end test).
At each look:
1. harm: any θ with its lower bound above 0 rolls back at once (at any step, before the step's time is up);
2. inconclusive: past `max_duration_s` since the canary started with a metric still not shown within its
   margin, roll back (no evidence is no reason to give a version everyone's traffic; the default of 2 hours
   is far more than a neutral canary needs at 0.5 requests/s in bench/rollout_sim.py);
3. advance when the step has run `step_s`, the canary has had `min_step_samples` responses in this step (each
   weight sees some traffic before the next), and every θ is shown below its margin: upper bound below
   `thumbs_down_margin` and `error_margin` (absolute, non-inferiority margins), below 0 for latency;
4. otherwise hold, saying what the rollout waits for, with the counts.
A step therefore needs no sample of its own beyond `min_step_samples`: evidence gathered at 5% counts at 20%.
At a small deployment's traffic the first weight adapts (`first_weight`): 5% of 1 request/s gives the canary
one response every 20 s, so it starts at the first weight that gives it `min_canary_rate` responses/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from schemas.stats import TAU_ERRORS, TAU_LATENCY_REL, TAU_THUMBS_DOWN, Sequential, msprt_means, msprt_proportions


class Outcome(StrEnum):
    ADVANCE = "advance"
    HOLD = "hold"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Figures:
    """One version's figures over a window (see inference/controller/canary_metrics.py)."""

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

    @property
    def ok(self) -> int:
        return self.responses - self.errors

    def describe(self) -> str:
        p95 = "-" if self.latency_p95_ms is None else f"{self.latency_p95_ms:.0f}ms"
        return (
            f"{self.version}: n={self.responses} err={self.errors} rated={self.rated} down={self.thumbs_down} p95={p95}"
        )


@dataclass(frozen=True)
class Policy:
    """The canary's rules; the defaults are tuned with bench/rollout_sim.py (see its tables)."""

    plan: tuple[int, ...] = (5, 20, 50, 100)
    step_s: float = 20.0
    min_step_samples: int = 10  # canary responses within a step before it may advance
    alpha: float = 0.05
    thumbs_down_margin: float = 0.10  # largest tolerated increase of the thumbs-down rate (absolute)
    error_margin: float = 0.05  # largest tolerated increase of the error rate (absolute)
    latency_ratio: float = 2.0  # largest tolerated canary mean latency over the current's
    max_duration_s: float = 7200.0
    min_canary_rate: float = 0.3  # canary responses/s the first weight aims for
    max_first_weight: int = 50
    thumbs_down_tau: float = TAU_THUMBS_DOWN  # mixing sd of the sequential tests (schemas/stats.py)
    error_tau: float = TAU_ERRORS
    latency_tau_rel: float = TAU_LATENCY_REL  # times the current version's mean latency


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    # What kind of decision: "harm", "inconclusive", "advance", or for a hold what it waits for: "step time",
    # "step samples", "evidence: <metrics>". The deployer announces a hold when its category changes.
    category: str = ""


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


def first_weight(plan: tuple[int, ...], total_rate: float | None, min_canary_rate: float, max_first_weight: int) -> int:
    """The canary's first weight: the plan's first that gives it `min_canary_rate` responses/s of `total_rate`.

    Capped at `max_first_weight` (and below 100: the canary always runs before it takes everything); the
    plan's first weight when the rate is unknown. E.g. plan 5/20/50/100, 0.3/s, cap 50: 22/s -> 5, 2/s -> 20,
    1/s -> 50, 0.5/s -> 50 (capped).
    """
    allowed = [w for w in plan if w <= max_first_weight and w < 100] or [plan[0]]
    if total_rate is None:
        return allowed[0]
    return next((w for w in allowed if total_rate * w / 100 >= min_canary_rate), allowed[-1])


def step_routes(current: str, canary: str, weight: int) -> dict[str, int]:
    """The routing table of an alias with `canary` at `weight` and `current` taking the rest."""
    if weight >= 100 or current == canary:
        return {canary: 100}
    if weight <= 0:
        return {current: 100}
    return {current: 100 - weight, canary: weight}


@dataclass(frozen=True)
class Check:
    """One metric's sequential test: θ = canary − current (latency: canary − ratio × current)."""

    metric: str
    test: Sequential | None  # None: an arm has no data yet
    margin: float  # the upper bound must be below it for the canary to pass
    figures: str  # the values compared, for people
    counts: str  # the sample sizes, canary/current

    @property
    def harm(self) -> bool:
        return self.test is not None and self.test.lower > 0

    @property
    def passed(self) -> bool:
        return self.test is not None and self.test.upper < self.margin

    def _fmt(self, x: float) -> str:
        return f"{x:+.0f}ms" if self.metric == "latency" else f"{x:.2f}"

    def harm_text(self) -> str:
        t = self.test
        return f"{self.metric} {self.figures} (θ in [{self._fmt(t.lower)}, {self._fmt(t.upper)}], {self.counts})"

    def wait_text(self) -> str:
        if self.test is None:
            return f"{self.metric}: no data yet ({self.counts})"
        margin = "0" if self.metric == "latency" else f"{self.margin:.2f}"
        return f"{self.metric} upper bound {self._fmt(self.test.upper)} >= margin {margin} ({self.counts})"

    def pass_text(self) -> str:
        return f"{self.metric} {self.figures} (θ <= {self._fmt(self.test.upper)}, {self.counts})"


def checks(canary: Figures, current: Figures, policy: Policy) -> list[Check]:
    """The three sequential tests over the same window of both versions."""
    a = policy.alpha
    down = msprt_proportions(
        canary.thumbs_down, canary.rated, current.thumbs_down, current.rated, policy.thumbs_down_tau**2, a
    )
    errors = msprt_proportions(
        canary.errors, canary.responses, current.errors, current.responses, policy.error_tau**2, a
    )
    latency = None
    if canary.latency_mean_ms is not None and current.latency_mean_ms is not None:
        tau = policy.latency_tau_rel * max(current.latency_mean_ms, 1.0)
        latency = msprt_means(
            canary.latency_mean_ms,
            canary.latency_sd_ms or 0.0,
            canary.ok,
            current.latency_mean_ms,
            current.latency_sd_ms or 0.0,
            current.ok,
            tau * tau,
            a,
            ratio=policy.latency_ratio,
        )

    def rate(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.0f}ms"

    return [
        Check(
            "thumbs-down",
            down,
            policy.thumbs_down_margin,
            f"{rate(canary.thumbs_down_rate)} vs {rate(current.thumbs_down_rate)}",
            f"rated {canary.rated}/{current.rated}",
        ),
        Check(
            "errors",
            errors,
            policy.error_margin,
            f"{rate(canary.error_rate)} vs {rate(current.error_rate)}",
            f"responses {canary.responses}/{current.responses}",
        ),
        Check(
            "latency",
            latency,
            0.0,
            f"mean {ms(canary.latency_mean_ms)} vs {policy.latency_ratio:g} x {ms(current.latency_mean_ms)}",
            f"ok {canary.ok}/{current.ok}",
        ),
    ]


def _span(seconds: float) -> str:
    """A duration as people read it in a reason: seconds under two minutes, whole minutes above."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def decide(
    canary: Figures,
    current: Figures,
    policy: Policy,
    *,
    step_elapsed_s: float,
    total_elapsed_s: float,
    step_responses: int,
) -> Decision:
    """The decision at one look.

    `canary`, `current`: cumulative figures since the canary started (the same window for both);
    `step_elapsed_s`, `step_responses`: the current step's age and the canary's responses within it;
    `total_elapsed_s`: the time since the canary started.
    """
    results = checks(canary, current, policy)
    harmed = [c for c in results if c.harm]
    if harmed:
        return Decision(Outcome.ROLLBACK, "harm: " + "; ".join(c.harm_text() for c in harmed), "harm")
    waiting = [c for c in results if not c.passed]
    if waiting and total_elapsed_s >= policy.max_duration_s:  # evidence that passes may still finish its steps
        what = "; ".join(c.wait_text() for c in waiting)
        return Decision(
            Outcome.ROLLBACK,
            f"inconclusive after {_span(total_elapsed_s)} (max {_span(policy.max_duration_s)}): {what}",
            "inconclusive",
        )
    if step_elapsed_s < policy.step_s:
        return Decision(Outcome.HOLD, f"waiting: step running ({step_elapsed_s:.0f}/{policy.step_s:.0f}s)", "step time")
    if step_responses < policy.min_step_samples:
        return Decision(
            Outcome.HOLD,
            f"waiting: {step_responses}/{policy.min_step_samples} canary responses in this step",
            "step samples",
        )
    if waiting:
        return Decision(
            Outcome.HOLD,
            "waiting: " + "; ".join(c.wait_text() for c in waiting),
            "evidence: " + ", ".join(c.metric for c in waiting),
        )
    return Decision(Outcome.ADVANCE, "no harm at the margins: " + "; ".join(c.pass_text() for c in results), "advance")


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
      routed weight with a fresh step window (the weight never rises without a full step watched by the
      live process); the cumulative evidence since the canary started is in the store and still counts.
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
