"""The canary's pure logic: the step decision table, the plan, the routes of a step, resumption."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from inference.adapters import busy_with, parse_metrics, validate_adapter_dir
from inference.rollout import (
    Figures,
    Outcome,
    Policy,
    decide,
    next_weight,
    one_sided_z,
    plan_error,
    resume_action,
    slower_p,
    step_routes,
)

POLICY = Policy(step_s=20, min_samples=30, alpha=0.05, p95_ratio_bound=1.5, max_wait_s=60, on_timeout="rollback")


def figs(version: str, n: int = 200, errors: int = 2, rated: int = 100, down: int = 10, p95: float | None = 400.0,
         mean: float = 250.0, sd: float = 80.0):
    return Figures(version, responses=n, errors=errors, rated=rated, thumbs_down=down, latency_p95_ms=p95,
                   latency_mean_ms=mean, latency_sd_ms=sd)


CURRENT = figs("support@v1")


@pytest.mark.parametrize(
    "canary, elapsed, policy, outcome, why",
    [
        (figs("c", rated=100, down=40), 20, POLICY, Outcome.ROLLBACK, "thumbs-down"),
        (figs("c", rated=100, down=40), 5, POLICY, Outcome.ROLLBACK, "thumbs-down"),  # early stop
        (figs("c"), 20, POLICY, Outcome.ADVANCE, "no regression"),
        (figs("c", rated=100, down=13), 20, POLICY, Outcome.ADVANCE, "no regression"),  # worse, not significant
        (figs("c", rated=100, down=2), 20, POLICY, Outcome.ADVANCE, "no regression"),  # better
        (figs("c"), 10, POLICY, Outcome.HOLD, "step running"),
        (figs("c", n=20, errors=0, rated=10, down=1), 20, POLICY, Outcome.HOLD, "not enough data"),
        (figs("c", n=20, errors=0, rated=10, down=1), 81, POLICY, Outcome.ROLLBACK, "policy rollback"),
        (figs("c", n=20, errors=0, rated=10, down=1), 81, Policy(**{**POLICY.__dict__, "on_timeout": "advance"}),
         Outcome.ADVANCE, "policy advance"),
        (figs("c", n=200, errors=30), 20, POLICY, Outcome.ROLLBACK, "errors"),
        (figs("c", p95=700.0, mean=400.0), 20, POLICY, Outcome.ROLLBACK, "p95"),
        (figs("c", p95=700.0, mean=260.0), 20, POLICY, Outcome.ADVANCE, "no regression"),  # one slow outlier
        (figs("c", p95=590.0), 20, POLICY, Outcome.ADVANCE, "no regression"),  # ratio 1.475 within 1.5
        (Figures("c"), 200, POLICY, Outcome.ROLLBACK, "not enough data"),  # no traffic at all
    ],
    ids=["thumbs-down-worse", "early-stop", "equal", "slightly-worse", "better", "running", "few-samples",
         "timeout-rollback", "timeout-advance", "error-spike", "p95-over-bound", "p95-outlier-not-significant",
         "p95-within-bound", "no-traffic"],
)
def test_decision_table(canary, elapsed, policy, outcome, why):
    d = decide(canary, CURRENT, policy, elapsed)
    assert d.outcome is outcome, d.reason
    assert why in d.reason


def test_few_samples_do_not_roll_back_even_when_all_bad():
    # 10 rated answers, all thumbs-down: below min_samples, so no test runs (only the wait policy decides).
    d = decide(figs("c", rated=10, down=10), CURRENT, POLICY, 20)
    assert d.outcome is Outcome.HOLD


def test_z_matches_scipy_reference():
    # pooled two-proportion z: compare with the normal approximation computed by hand
    z, p = one_sided_z(40, 100, 10, 100)
    pooled = 50 / 200
    expected = (0.4 - 0.1) / (pooled * (1 - pooled) * (2 / 100)) ** 0.5
    assert z == pytest.approx(expected)
    assert p == pytest.approx(stats.norm.sf(expected))
    assert one_sided_z(0, 50, 0, 50) == (0.0, 1.0)


def test_slower_p_matches_welch_on_samples():
    rng = np.random.default_rng(7)
    canary, current = rng.normal(330, 90, 40), rng.normal(300, 60, 60)
    expected = stats.ttest_ind(canary, current, equal_var=False, alternative="greater").pvalue

    def of(version, xs):
        return Figures(version, responses=len(xs), latency_mean_ms=float(xs.mean()),
                       latency_sd_ms=float(xs.std(ddof=1)))

    assert slower_p(of("c", canary), of("o", current)) == pytest.approx(expected)
    assert slower_p(Figures("c", 5, latency_mean_ms=300, latency_sd_ms=0),
                    Figures("o", 5, latency_mean_ms=200, latency_sd_ms=0)) == 0.0


@pytest.mark.parametrize("plan, error", [
    ((5, 20, 50, 100), None), ((100,), None), ((), "empty"), ((5, 50), "end at 100"),
    ((20, 5, 100), "increase"), ((0, 100), "1..100"), ((5, 150), "1..100"),
])
def test_plan_error(plan, error):
    result = plan_error(plan)
    assert (result is None) if error is None else (error in result)


def test_next_weight_and_routes():
    plan = (5, 20, 50, 100)
    assert [next_weight(plan, w) for w in (0, 5, 20, 50, 100)] == [5, 20, 50, 100, 100]
    assert step_routes("tiny", "support@v1", 5) == {"tiny": 95, "support@v1": 5}
    assert step_routes("tiny", "support@v1", 100) == {"support@v1": 100}
    assert step_routes("tiny", "support@v1", 0) == {"tiny": 100}
    assert sum(step_routes("a", "b", 20).values()) == 100


@pytest.mark.parametrize("phase, routes, action", [
    ("loading", {}, "restart"),
    ("loading", {"tiny": 100}, "restart"),
    ("canary", {"tiny": 80, "support@v2": 20}, "continue"),
    ("canary", {"tiny": 100}, "continue"),  # crashed right after recording, before the first route
    ("canary", {"support@v2": 100}, "rollback"),  # routes moved by hand
    ("canary", {"tiny": 50, "other": 50}, "rollback"),
    ("finishing", {"support@v2": 100}, "finish"),
])
def test_resume_action(phase, routes, action):
    assert resume_action(phase, routes, "tiny", "support@v2").action == action


METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0
vllm:lora_requests_info{max_lora="4",running_lora_adapters="support@v1",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="4",running_lora_adapters="support@v2,support@v1",waiting_lora_adapters=""} 1.8e9
"""


def test_busy_with_reads_latest_lora_state():
    samples = parse_metrics(METRICS)
    assert busy_with(samples, "support@v1") == 1
    assert busy_with(samples, "support@v2") == 1
    assert busy_with(samples, "support@v3") == 0
    idle = parse_metrics(METRICS.replace("} 2.0", "} 0.0"))
    assert busy_with(idle, "support@v1") == 0  # idle engine, stale LoRA gauge
    assert busy_with(parse_metrics("vllm:num_requests_running 3\n"), "x") == 3
    assert busy_with([], "x") is None


def test_validate_adapter_dir(tmp_path):
    assert "absolute" in validate_adapter_dir("relative/dir")
    assert "adapter_config.json" in validate_adapter_dir(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text("{}")
    assert "weights" in validate_adapter_dir(str(tmp_path))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    assert validate_adapter_dir(str(tmp_path)) is None
