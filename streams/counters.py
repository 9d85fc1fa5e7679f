"""Prometheus metrics of a faust worker (default registry), served on `streams_metrics_port`."""

from __future__ import annotations

from prometheus_client import Counter

PAIRS = Counter("flywheel_streams_pairs", "DPO pairs emitted, by source", ["source"])
DEAD_LETTERS = Counter("flywheel_streams_dead_letters", "Feedback sent to its DLQ, by error type", ["error_type"])
JOBS_REQUESTED = Counter("flywheel_streams_jobs_requested", "Retrain jobs requested by the trigger")
WINDOWS = Counter("flywheel_streams_windows", "Metric windows closed and published")
