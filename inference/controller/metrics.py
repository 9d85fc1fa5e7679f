"""Prometheus metrics of the hot-swap controller (default registry), served on `controller_metrics_port`.

Counted from the deployment events the controller publishes, so the figures and `model.deployments` agree.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from schemas.events import Deployment

DEPLOYMENTS = Counter(
    "flywheel_controller_deployments", "Deployment events published, by alias and action", ["alias", "action"]
)
CANARY_WEIGHT = Gauge("flywheel_controller_canary_weight", "Canary's share of the alias's traffic, %", ["alias"])


def observe(event: Deployment) -> None:
    DEPLOYMENTS.labels(event.alias, event.action).inc()
    if event.action in ("canary_started", "step", "hold") and event.weight is not None:
        CANARY_WEIGHT.labels(event.alias).set(event.weight)
    elif event.action in ("promoted", "rolled_back"):
        CANARY_WEIGHT.labels(event.alias).set(0)
