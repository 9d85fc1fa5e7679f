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


class RetrainSettings(CommonSettings):
    # The base model (directory, served name) and the alias come from CommonSettings, shared
    # with the workers, the gateway and the controller; adapters are registered as `<alias>@vN`.
    retrain_config: Path = Field(PACKAGE_DIR / "configs" / "smollm2.yaml", description="retrain job config YAML")
    # JSONL of {"prompt": [messages], "expected": "answer"}: the gate reports their log-likelihood (diagnostic).
    retrain_golden: Path = Field(PACKAGE_DIR / "golden" / "support.jsonl", description="golden set JSONL")
    # JSONL of {"prompt": [messages]} or {"question": text}, with "expected" where a reference is known:
    # questions whose right answers a new version must keep (retrain.gate). The default holds the demo shop's
    # validation questions and answers (retrain/demo), which no training row contains.
    retrain_regression: Path | None = Field(
        PACKAGE_DIR / "golden" / "regression.jsonl", description="regression prompts JSONL (none: no regression check)"
    )
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
    retrain_metrics_port: int = Field(0, ge=0, description="Prometheus /metrics port (0: none)")
    retrain_session_timeout_ms: int = Field(6000, ge=1000, description="Kafka consumer session.timeout.ms")
    # -- the first production version (retrain.bootstrap) --------------------------------------------
    # `flywheel up` trains it on the demo shop's rows when the alias has no version yet.
    sft_bootstrap: bool = Field(True, description="train and promote an SFT version when the alias has none")
    sft_config: Path = Field(PACKAGE_DIR / "configs" / "sft-smollm2.yaml", description="SFT job config YAML")
    # -- evaluation gate (retrain.gate): shares of greedy answers judged by ROUGE-L -------------------
    gate_learn_rouge: float = Field(0.8, ge=0, le=1, description="ROUGE-L at which an answer equals its correction")
    gate_keep_rouge: float = Field(0.9, ge=0, le=1, description="ROUGE-L at which an answer is unchanged")
    gate_right_rouge: float = Field(0.7, ge=0, le=1, description="ROUGE-L at which an answer matches its reference")
    gate_min_corrected: float = Field(0.8, ge=0, le=1, description="least share of trained corrections learnt")
    # A turn must teach the fact, not only the sentence; SmolLM2-135M learnt 33-50% of unseen wordings in a turn
    # (docs/learning.md), and a job holds out about 6 pairs, so the share moves in steps of 1/6.
    gate_min_paraphrases: float = Field(0.3, ge=0, le=1, description="least share of held-out paraphrases learnt")
    gate_min_kept: float = Field(0.9, ge=0, le=1, description="least share of right regression answers kept")
    # Each regression prompt costs two greedy answers (current and candidate): about 0.3 s on 2 CPU cores with
    # the 135M model in batches of 16.
    gate_regression_size: int = Field(48, ge=0, description="regression prompts per gate (a fixed sample)")

    @property
    def registry_dir(self) -> Path:
        return (self.retrain_registry_dir or self.data_dir / "adapters").resolve()

    @property
    def work_dir(self) -> Path:
        return (self.retrain_work_dir or self.data_dir / "retrain").resolve()
