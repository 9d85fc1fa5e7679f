"""The canary's pure logic: the decision table, the first weight, the plan, the routes of a step, resumption."""

from __future__ import annotations

import pytest

from inference.adapters import busy_with, parse_metrics, validate_adapter_dir
from inference.controller.rollout import (
    Figures,
    Outcome,
    Policy,
    decide,
    first_weight,
    next_weight,
    plan_error,
    resume_action,
    step_routes,
)

POLICY = Policy(
    step_s=20,
    min_step_samples=10,
    alpha=0.05,
    thumbs_down_margin=0.10,
    error_margin=0.05,
    latency_ratio=2.0,
    max_duration_s=7200,
)


def figs(
    version: str,
    n: int = 1000,
    errors: int = 10,
    rated: int = 800,
    down: int = 160,
    mean: float = 340.0,
    sd: float = 180.0,
):
    return Figures(
        version,
        responses=n,
        errors=errors,
        rated=rated,
        thumbs_down=down,
        latency_p95_ms=None,
        latency_mean_ms=mean,
        latency_sd_ms=sd,
    )


# Cumulative figures since the canary started: the current version has had twice the canary's traffic.
CURRENT = figs("support@v1", n=2000, errors=20, rated=1600, down=320)
SHORT = figs("c", n=55, errors=0, rated=44, down=9)  # 0.20 vs 0.20 on 44 ratings: not yet conclusive


# (canary, step elapsed s, step responses, total elapsed s, outcome, category, words in the reason)
CASES = {
    "thumbs-down harm": (
        figs("c", n=100, errors=1, rated=80, down=40),
        20,
        50,
        60,
        Outcome.ROLLBACK,
        "harm",
        ["harm: thumbs-down 0.500 vs 0.200", "rated 80/1600"],
    ),
    "harm before the step's time": (
        figs("c", n=100, errors=1, rated=80, down=40),
        1,
        2,
        60,
        Outcome.ROLLBACK,
        "harm",
        ["harm: thumbs-down"],
    ),
    "error harm": (
        figs("c", n=200, errors=30, rated=150, down=30),
        20,
        50,
        60,
        Outcome.ROLLBACK,
        "harm",
        ["harm: errors 0.150 vs 0.010", "responses 200/2000"],
    ),
    "latency harm": (
        figs("c", n=100, errors=0, rated=80, down=16, mean=900, sd=200),
        20,
        50,
        60,
        Outcome.ROLLBACK,
        "harm",
        ["harm: latency mean 900ms vs 2 x 340ms", "ok 100/1980"],
    ),
    "harm wins over max duration": (
        figs("c", n=100, errors=1, rated=80, down=40),
        20,
        50,
        9000,
        Outcome.ROLLBACK,
        "harm",
        ["harm: thumbs-down"],
    ),
    "neutral, enough evidence": (figs("c"), 20, 50, 300, Outcome.ADVANCE, "advance", ["no harm at the margins"]),
    "better, little evidence": (
        figs("c", n=100, errors=0, rated=80, down=4),
        20,
        50,
        300,
        Outcome.ADVANCE,
        "advance",
        ["thumbs-down 0.050 vs 0.200"],
    ),
    "1.5x slower within ratio 2": (
        figs("c", mean=510, sd=250),
        20,
        50,
        300,
        Outcome.ADVANCE,
        "advance",
        ["latency mean 510ms vs 2 x 340ms"],
    ),
    "step running": (figs("c"), 5, 50, 300, Outcome.HOLD, "step time", ["step running (5/20s)"]),
    "few responses in the step": (
        figs("c"),
        20,
        3,
        300,
        Outcome.HOLD,
        "step samples",
        ["3/10 canary responses in this step"],
    ),
    "hold with counts": (
        SHORT,
        20,
        15,
        300,
        Outcome.HOLD,
        "evidence: thumbs-down",  # errors 0/55 already pass
        ["waiting: thumbs-down upper bound 0.20 >= margin 0.10 (rated 44/1600)"],
    ),
    "hold on two metrics": (
        figs("c", n=30, errors=0, rated=24, down=5),
        20,
        15,
        300,
        Outcome.HOLD,
        "evidence: thumbs-down, errors",
        ["thumbs-down upper bound", "(rated 24/1600)", "errors upper bound", "(responses 30/2000)"],
    ),
    "no traffic yet": (Figures("c"), 20, 0, 30, Outcome.HOLD, "step samples", ["0/10 canary responses"]),
    "no data after the step": (
        Figures("c"),
        20,
        10,
        30,
        Outcome.HOLD,
        "evidence: thumbs-down, errors, latency",
        ["thumbs-down: no data yet (rated 0/1600)"],
    ),
    "past max duration, evidence in": (figs("c"), 20, 3, 9000, Outcome.HOLD, "step samples", ["3/10"]),
    "inconclusive": (
        SHORT,
        20,
        15,
        7200,
        Outcome.ROLLBACK,
        "inconclusive",
        ["inconclusive after 120 min (max 120 min): thumbs-down upper bound"],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_decision_table(case):
    canary, step_s, step_n, total_s, outcome, category, words = case
    d = decide(canary, CURRENT, POLICY, step_elapsed_s=step_s, total_elapsed_s=total_s, step_responses=step_n)
    assert (d.outcome, d.category) == (outcome, category), d.reason
    for word in words:
        assert word in d.reason, d.reason
    if outcome is Outcome.ROLLBACK:
        assert d.reason.startswith(category)


def test_a_short_rollouts_reason_gives_seconds():
    from dataclasses import replace

    short = replace(POLICY, step_s=5, max_duration_s=25)
    d = decide(SHORT, CURRENT, short, step_elapsed_s=5, total_elapsed_s=26, step_responses=15)
    assert d.outcome is Outcome.ROLLBACK and d.reason.startswith("inconclusive after 26 s (max 25 s): "), d.reason


def test_evidence_accumulates_until_the_canary_advances():
    # The same neutral rates, more and more responses: hold, then advance, never a false harm.
    outcomes = []
    for n in (50, 100, 200, 400, 800):
        canary = figs("c", n=n, errors=n // 100, rated=n * 4 // 5, down=n * 4 // 25)
        outcomes.append(
            decide(canary, CURRENT, POLICY, step_elapsed_s=20, total_elapsed_s=60, step_responses=n).outcome
        )
    assert Outcome.ROLLBACK not in outcomes
    assert outcomes[0] is Outcome.HOLD and outcomes[-1] is Outcome.ADVANCE
    assert outcomes == sorted(outcomes, key=[Outcome.HOLD, Outcome.ADVANCE].index)


@pytest.mark.parametrize(
    "rate, weight",
    [
        (0.5, 50),  # 50% of 0.5/s is 0.25/s: below 0.3/s, capped at 50
        (1.0, 50),
        (2.0, 20),
        (6.0, 5),
        (22.0, 5),  # the end-to-end test's traffic: 5% is 1.1/s
        (0.0, 50),
        (None, 5),  # unknown rate: the plan as written
    ],
)
def test_first_weight_adapts_to_traffic(rate, weight):
    assert first_weight((5, 20, 50, 100), rate, 0.3, 50) == weight


def test_first_weight_edges():
    assert first_weight((5, 20, 50, 100), 1.0, 0.3, 20) == 20  # capped lower
    assert first_weight((5, 20, 50, 100), 1.0, 0.0, 50) == 5  # no minimum rate: the plan's first
    assert first_weight((5, 20, 50, 100), 0.1, 0.3, 100) == 50  # never 100 before a canary ran
    assert first_weight((100,), 1.0, 0.3, 50) == 100  # a plan of one step promotes at once


@pytest.mark.parametrize(
    "plan, error",
    [
        ((5, 20, 50, 100), None),
        ((100,), None),
        ((), "empty"),
        ((5, 50), "end at 100"),
        ((20, 5, 100), "increase"),
        ((0, 100), "1..100"),
        ((5, 150), "1..100"),
    ],
)
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


@pytest.mark.parametrize(
    "phase, routes, action",
    [
        ("loading", {}, "restart"),
        ("loading", {"tiny": 100}, "restart"),
        ("canary", {"tiny": 80, "support@v2": 20}, "continue"),
        ("canary", {"tiny": 100}, "continue"),  # crashed right after recording, before the first route
        ("canary", {"support@v2": 100}, "rollback"),  # routes moved by hand
        ("canary", {"tiny": 50, "other": 50}, "rollback"),
        ("finishing", {"support@v2": 100}, "finish"),
    ],
)
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


def test_only_intact_registered_versions_pass_the_manifest_check(tmp_path):
    from retrain.registry import Registry

    src = tmp_path / "adapter"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    (src / "adapter_model.safetensors").write_bytes(b"weights")
    assert "not a registered version" in validate_adapter_dir(str(src), registered=True)
    version = Registry(tmp_path / "registry").register("support", src, {}).path
    assert validate_adapter_dir(str(version), registered=True) is None
    (version / "adapter_model.safetensors").write_bytes(b"other weights")  # changed on disk
    assert "does not match its recorded sha256" in validate_adapter_dir(str(version), registered=True)
    (version / "adapter_model.safetensors").unlink()
    assert "weights" in validate_adapter_dir(str(version), registered=True)
