"""Settings of the hot-swap controller (inference/controller.py) and its CLI (inference/controller_cli.py).

Every field reads `FLYWHEEL_<NAME>` (e.g. `FLYWHEEL_CANARY_STEP_S=20`) or `.env`. The defaults are the
local stack's: short steps and small samples so that the loop turns in minutes. A production
deployment raises `canary_step_s` and `canary_min_samples`, and may tighten `canary_p95_ratio`: on CPU
with the tiny model a LoRA answer takes about 1.5x the base model's (measured in the end-to-end test: mean
157 ms vs 107 ms), which a bound of 1.5 would roll back.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from inference.rollout import Policy, plan_error
from producers.settings import ProducerSettings

# The controller's consumer group: constant, so a restart resumes from its committed offset.
CONTROLLER_GROUP_ID = "flywheel-hotswap-controller"


class ControllerSettings(ProducerSettings):
    # Canary weights in percent, in order (comma-separated or JSON list); the last must be 100.
    canary_plan: Annotated[list[int], NoDecode] = Field([5, 20, 50, 100], description="canary weights")
    # How long each step gathers figures before it may advance.
    canary_step_s: float = Field(20.0, gt=0, description="canary step length, seconds")
    # Fewest samples per arm (rated answers, responses) for a test to count.
    canary_min_samples: int = Field(30, ge=1, description="minimum samples per arm and test")
    # Significance of the one-sided tests (canary worse than current).
    canary_alpha: float = Field(0.05, gt=0, lt=1, description="significance level")
    # Largest allowed canary p95 latency over the current version's.
    canary_p95_ratio: float = Field(
        2.0, gt=1, description="p95 latency ratio bound (a rollback also needs a Welch t-test: canary slower at alpha)"
    )
    # How long a step may be extended when data is short, and what happens then.
    canary_max_wait_s: float = Field(60.0, ge=0, description="extra wait for data per step")
    canary_on_timeout: Literal["rollback", "advance"] = Field("rollback", description="policy without data")
    # How often a running step re-reads the figures.
    canary_poll_s: float = Field(2.0, gt=0, description="figures poll interval")
    # After a route change: the gateway's refresh interval (FLYWHEEL_GATEWAY_REFRESH_S) plus a margin
    # before the old version can receive no new request, then in-flight requests drain.
    route_propagation_s: float = Field(2.0, ge=0, description="gateway refresh interval plus margin")
    drain_timeout_s: float = Field(60.0, gt=0, description="longest wait for in-flight requests")
    # Adapter admin calls (load, verify, unload) per worker.
    adapter_timeout_s: float = Field(60.0, gt=0, description="timeout of one adapter admin call")
    producer_client_id: str = Field("flywheel-controller", description="Kafka client.id")

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
        return Policy(plan=tuple(self.canary_plan), step_s=self.canary_step_s, min_samples=self.canary_min_samples,
                      alpha=self.canary_alpha, p95_ratio_bound=self.canary_p95_ratio,
                      max_wait_s=self.canary_max_wait_s, on_timeout=self.canary_on_timeout)
