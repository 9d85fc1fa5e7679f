"""Settings of the retrain worker, the evaluation gate and the adapter registry.

Every field reads `FLYWHEEL_<NAME>` (e.g. `FLYWHEEL_RETRAIN_CONFIG=retrain/configs/7b.yaml`) or `.env`.
Training hyper-parameters are not settings: they live in the YAML job config (retrain.config),
which the CLI's flags override; the settings only say which file to use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from schemas.settings import CommonSettings

PACKAGE_DIR = Path(__file__).resolve().parent
# The retrain worker's consumer group id: it names the committed offsets (renaming it is a migration).
RETRAIN_GROUP_ID = "flywheel-retrain-worker"


class RetrainSettings(CommonSettings):
    # The base model (directory, served name) and the alias come from CommonSettings, shared
    # with the workers, the gateway and the controller; adapters are registered as `<alias>@vN`.
    retrain_config: Path = Field(PACKAGE_DIR / "configs" / "tiny.yaml", description="DPO job config YAML")
    # JSONL of {"prompt": [messages], "expected": "answer"}: answers whose likelihood must not regress.
    retrain_golden: Path = Field(PACKAGE_DIR / "golden" / "support.jsonl", description="golden set JSONL")
    # Where versions live; default <data_dir>/adapters.
    retrain_registry_dir: Path | None = Field(None, description="adapter registry root")
    # Scratch space of running jobs (checkpoints, the adapter before registration); default <data_dir>/retrain.
    retrain_work_dir: Path | None = Field(None, description="job scratch directory")
    retrain_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="training device")
    # Training shares the cores with serving on one machine: it runs at the lowest CPU priority, so that vLLM
    # (nice 10 on CPU), the gateway and Redis keep answering while a job runs; the job takes what is left.
    retrain_nice: int = Field(19, ge=0, le=19, description="nice value of the training worker")
    # The sink may lag behind dpo.pairs: wait this long for all of a job's pairs before failing it.
    retrain_pairs_wait_s: float = Field(30.0, ge=0, description="wait for a job's pairs in the store")
    retrain_pairs_poll_s: float = Field(1.0, gt=0, description="poll interval while waiting for pairs")
    # librdkafka leaves the group when poll() is not called for max.poll.interval.ms: a job must end sooner.
    retrain_max_job_s: float = Field(3600.0, gt=0, description="longest job (Kafka max.poll.interval)")
    retrain_session_timeout_ms: int = Field(6000, ge=1000, description="Kafka consumer session.timeout.ms")
    # -- evaluation gate -----------------------------------------------------------------------
    gate_accuracy_tolerance: float = Field(0.02, ge=0, description="candidate accuracy may trail current by this")
    gate_margin_tolerance: float = Field(0.02, ge=0, description="candidate mean reward margin may trail by this")
    # Golden set: mean log-likelihood per answer token (nats) may drop by at most this, and no single
    # prompt by more than `gate_golden_prompt_tolerance`.
    gate_golden_tolerance: float = Field(0.05, ge=0, description="allowed drop of mean golden logp/token")
    gate_golden_prompt_tolerance: float = Field(0.5, ge=0, description="allowed drop of one prompt's logp/token")

    @property
    def registry_dir(self) -> Path:
        return (self.retrain_registry_dir or self.data_dir / "adapters").resolve()

    @property
    def work_dir(self) -> Path:
        return (self.retrain_work_dir or self.data_dir / "retrain").resolve()
