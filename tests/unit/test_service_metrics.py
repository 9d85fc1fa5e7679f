"""The controller's and the retrain worker's Prometheus figures follow the events they publish."""

from __future__ import annotations

from prometheus_client import REGISTRY

from inference.controller import metrics as controller
from retrain import metrics as retrain
from schemas.events import Deployment, RetrainJob


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_canary_weight_follows_the_rollout_and_actions_are_counted():
    before = value("flywheel_controller_deployments_total", alias="metrics-test", action="rolled_back")
    for action, weight in (("canary_started", 50), ("step", 100)):
        controller.observe(Deployment(alias="metrics-test", action=action, version="metrics-test@v2", weight=weight))
        assert value("flywheel_controller_canary_weight", alias="metrics-test") == weight
    controller.observe(Deployment(alias="metrics-test", action="rolled_back", version="metrics-test@v2", weight=0))
    assert value("flywheel_controller_canary_weight", alias="metrics-test") == 0
    assert value("flywheel_controller_deployments_total", alias="metrics-test", action="rolled_back") == before + 1


def test_finished_jobs_are_counted_with_their_verdict_and_durations():
    labels = {"status": "succeeded", "verdict": "rejected"}
    before = value("flywheel_retrain_jobs_total", **labels)
    gates = value("flywheel_retrain_job_seconds_count", stage="gate")
    job = RetrainJob(
        job_id="j1",
        base_model="tiny",
        status="succeeded",
        verdict="rejected",
        metrics={"train_seconds": 12.0, "gate_seconds": 3.0, "job_seconds": 16.0, "loss": 0.5},
    )
    retrain.observe(job)
    assert value("flywheel_retrain_jobs_total", **labels) == before + 1
    assert value("flywheel_retrain_job_seconds_count", stage="gate") == gates + 1
    assert value("flywheel_retrain_job_seconds_sum", stage="loss") == 0  # only durations are observed
