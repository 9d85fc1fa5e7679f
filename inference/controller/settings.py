"""Settings of the hot-swap controller (inference/controller/service.py) and its CLI (inference/controller/cli.py).

Every field reads `FLYWHEEL_<NAME>` (e.g. `FLYWHEEL_CANARY_STEP_S=20`) or `.env`. The canary's rules are
inference/controller/rollout.py's (decisions on cumulative, always-valid evidence); its defaults were tuned with
`python -m bench.rollout_sim`: a good version at 1 request/s of total traffic is promoted in about 4 minutes
(p50), a neutral one in about 10, and a version with twice the thumbs-down rate is rolled back in 100% of runs.
"""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from inference.controller.rollout import Policy, plan_error
from producers.settings import ProducerSettings


class ControllerSettings(ProducerSettings):
    # Canary weights in percent, in order (comma-separated or JSON list); the last must be 100.
    canary_plan: Annotated[list[int], NoDecode] = Field([5, 20, 50, 100], description="canary weights")
    # Each step runs at least this long; the evidence itself is cumulative since the canary started.
    canary_step_s: float = Field(20.0, gt=0, description="shortest canary step, seconds")
    # Canary responses within a step before it may advance: each weight sees some traffic.
    canary_min_step_samples: int = Field(10, ge=0, description="minimum canary responses per step")
    # Level of the always-valid confidence sequences (schemas/stats.py): the false-alarm rate per metric
    # over the whole rollout, however often it looks (0.7% of 1,000 neutral rollouts in bench/rollout_sim.py).
    canary_alpha: float = Field(0.05, gt=0, lt=1, description="level of the sequential tests")
    # Non-inferiority margins: the canary advances once the increase is shown to be below them.
    canary_thumbs_down_margin: float = Field(
        0.10, gt=0, lt=1, description="largest tolerated increase of the thumbs-down rate (absolute)"
    )
    canary_error_margin: float = Field(0.05, gt=0, lt=1, description="largest tolerated increase of the error rate")
    # On CPU with the tiny model a LoRA answer takes about 1.5x the base model's (mean 157 ms vs 107 ms in the
    # end-to-end test), which a ratio of 1.5 would hold back or roll back. Tighten it on GPUs.
    canary_latency_ratio: float = Field(
        2.0, gt=0, description="largest tolerated canary mean latency over the current version's"
    )
    # Past this since the canary started without a conclusion: roll back as inconclusive. A neutral canary
    # at 0.5 requests/s of total traffic needs about 21 minutes (p50; p90 about 42) in bench/rollout_sim.py.
    canary_max_duration_s: float = Field(7200.0, gt=0, description="longest rollout before an inconclusive rollback")
    # The first weight adapts to the traffic: the plan's first weight that gives the canary this many
    # responses/s of the alias's recent rate (5% of 1 request/s would take 10 minutes for 30 answers).
    canary_min_canary_rate: float = Field(
        0.3, ge=0, description="canary responses/s the first weight aims for (0: always the plan's first)"
    )
    canary_max_first_weight: int = Field(50, ge=1, le=100, description="cap of the adaptive first weight")
    canary_rate_window_s: float = Field(120.0, gt=0, description="window of the alias's recent traffic rate")
    # How often a running step re-reads the figures.
    canary_poll_s: float = Field(2.0, gt=0, description="figures poll interval")
    # After a route change: the gateway's refresh interval (FLYWHEEL_GATEWAY_REFRESH_S) plus a margin
    # before the old version can receive no new request, then in-flight requests drain.
    route_propagation_s: float = Field(2.0, ge=0, description="gateway refresh interval plus margin")
    drain_timeout_s: float = Field(60.0, gt=0, description="longest wait for in-flight requests")
    # Adapter admin calls (load, verify, unload) per worker.
    adapter_timeout_s: float = Field(60.0, gt=0, description="timeout of one adapter admin call")
    producer_client_id: str = Field("flywheel-controller", description="Kafka client.id")
    controller_metrics_port: int = Field(0, ge=0, description="Prometheus /metrics port (0: none)")

    @field_validator("canary_plan", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            value = value.strip()
            value = json.loads(value) if value.startswith("[") else [int(v) for v in value.split(",") if v.strip()]
        error = plan_error(list(value))
        if error:
            raise ValueError(error)
        return value

    def policy(self) -> Policy:
        return Policy(
            plan=tuple(self.canary_plan),
            step_s=self.canary_step_s,
            min_step_samples=self.canary_min_step_samples,
            alpha=self.canary_alpha,
            thumbs_down_margin=self.canary_thumbs_down_margin,
            error_margin=self.canary_error_margin,
            latency_ratio=self.canary_latency_ratio,
            max_duration_s=self.canary_max_duration_s,
            min_canary_rate=self.canary_min_canary_rate,
            max_first_weight=self.canary_max_first_weight,
        )
