"""Prometheus metrics of the retrain worker (default registry), served on `retrain_metrics_port`.

Counted from the job events the worker publishes, so the figures and `retrain.jobs` agree.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from schemas.events import RetrainJob

JOBS = Counter("flywheel_retrain_jobs", "Job events published, by status and gate verdict", ["status", "verdict"])
JOB_SECONDS = Histogram(
    "flywheel_retrain_job_seconds",
    "Duration of finished jobs (train, gate, whole job)",
    ["stage"],
    buckets=(30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200),
)
STAGES = {"train_seconds": "train", "gate_seconds": "gate", "job_seconds": "job"}


def observe(event: RetrainJob) -> None:
    JOBS.labels(event.status, event.verdict or "").inc()
    for key, stage in STAGES.items():
        if key in event.metrics:
            JOB_SECONDS.labels(stage).observe(event.metrics[key])
