"""Training job configurations (SFT and DPO): dataclasses with `help` metadata, YAML defaults, CLI overrides.

As in TRL's scripts: a YAML file (`--config`) gives the defaults and command-line flags override
them; the effective configuration is recorded with each adapter. Precedence, lowest first:
dataclass defaults < YAML file < overrides (CLI flags). Unknown YAML keys are an error.

`TrainConfig` holds what every job shares (optimizer, schedule, LoRA, hardware); `SFTJobConfig` adds
the supervised run's evaluation; `DPOJobConfig` (the retrain worker's job) adds DPO's beta, the weight of
the NLL term on the chosen answer, the supervised stage on the chosen answers and the replay of earlier
training data against forgetting.

Example:
    cfg = load_config("retrain/configs/tiny.yaml", {"learning_rate": 1e-3})
    trl_args = cfg.to_trl(output_dir="/tmp/out", use_cpu=True)
    sft = load_config("retrain/configs/sft-smollm2.yaml", cls=SFTJobConfig)
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A job config that cannot be used (unknown key, wrong type, bad value)."""


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs over the training rows"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many steps (-1: epochs decide)"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "rows per device per step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "steps per optimizer update"})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers scheduler name"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "fraction of steps warming up"})
    max_length: int = field(default=1024, metadata={"help": "prompt + completion tokens kept per example"})
    logging_steps: int = field(default=1, metadata={"help": "log (and publish TrainingMetrics) every N steps"})
    seed: int = field(default=42, metadata={"help": "training seed"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (a new adapter only; a parent keeps its own)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "PEFT target_modules"})
    eval_fraction: float = field(default=0.2, metadata={"help": "held-out share of the rows or pairs (by id hash)"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (GPU)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory"})
    torch_threads: int = field(default=0, metadata={"help": "CPU threads for torch (0: torch's default)"})
    deepspeed: str | None = field(default=None, metadata={"help": "DeepSpeed JSON config (several GPUs)"})

    def __post_init__(self) -> None:
        bad = [name for name, ok in self._checks().items() if not ok]
        if bad:
            raise ConfigError(f"invalid value for {', '.join(bad)}: {[getattr(self, n) for n in bad]}")

    def _checks(self) -> dict[str, bool]:
        return {
            "learning_rate": self.learning_rate > 0,
            "num_train_epochs": self.num_train_epochs > 0,
            "per_device_train_batch_size": self.per_device_train_batch_size >= 1,
            "gradient_accumulation_steps": self.gradient_accumulation_steps >= 1,
            "max_length": self.max_length >= 8,
            "lora_r": self.lora_r >= 1,
            "eval_fraction": 0.0 <= self.eval_fraction < 1.0,
            "warmup_ratio": 0.0 <= self.warmup_ratio < 1.0,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def trainer_args(self, output_dir: str | Path, use_cpu: bool) -> dict[str, Any]:
        """The transformers TrainingArguments both trainers share (nothing saved: the registry stores adapters)."""
        return dict(
            output_dir=str(output_dir),
            learning_rate=self.learning_rate,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            lr_scheduler_type=self.lr_scheduler_type,
            warmup_steps=self.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
            max_length=self.max_length,
            logging_steps=self.logging_steps,
            seed=self.seed,
            bf16=self.bf16,
            gradient_checkpointing=self.gradient_checkpointing,
            deepspeed=self.deepspeed,
            use_cpu=use_cpu,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
        )


@dataclass(frozen=True)
class SFTJobConfig(TrainConfig):
    """Supervised fine-tuning on prompt/completion rows: the loss is on the answer only."""

    eval_steps: int = field(default=0, metadata={"help": "evaluate the validation rows every N steps (0: per epoch)"})

    def to_trl(self, output_dir: str | Path, use_cpu: bool, evaluate: bool = False):
        from trl import SFTConfig

        if not evaluate:
            schedule = {"eval_strategy": "no"}
        elif self.eval_steps:
            schedule = {"eval_strategy": "steps", "eval_steps": self.eval_steps}
        else:
            schedule = {"eval_strategy": "epoch"}
        return SFTConfig(**self.trainer_args(output_dir, use_cpu), completion_only_loss=True, **schedule)


@dataclass(frozen=True)
class DPOJobConfig(TrainConfig):
    """The retrain job: learn the chosen answers of the job's pairs, forget nothing else.

    `method` (measured side by side in docs/learning.md): `dpo` trains DPO on the pairs, with an NLL term on
    the chosen answer when `sft_weight` > 0 (the RPO objective); `sft` trains on the chosen answers plus
    `replay_rows` rows of the parent version's training data; `sft+dpo` runs that supervised stage first,
    then DPO from its adapter.
    """

    method: Literal["dpo", "sft", "sft+dpo"] = field(default="dpo", metadata={"help": "dpo | sft | sft+dpo"})
    beta: float = field(default=0.1, metadata={"help": "DPO beta: strength of the KL anchor to the reference"})
    sft_weight: float = field(default=0.0, metadata={"help": "weight of the NLL term on chosen in DPO (RPO)"})
    sft_learning_rate: float = field(default=5e-4, metadata={"help": "learning rate of the supervised stage"})
    sft_epochs: float = field(default=3.0, metadata={"help": "epochs of the supervised stage"})
    replay_rows: int = field(default=0, metadata={"help": "parent training rows replayed in the supervised stage"})
    chosen_repeats: int = field(default=1, metadata={"help": "copies of each chosen answer in the supervised stage"})

    def _checks(self) -> dict[str, bool]:
        return {
            **super()._checks(),
            "beta": self.beta > 0,
            "sft_weight": self.sft_weight >= 0,
            "sft_learning_rate": self.sft_learning_rate > 0,
            "sft_epochs": self.sft_epochs > 0,
            "replay_rows": self.replay_rows >= 0,
            "chosen_repeats": self.chosen_repeats >= 1,
            "method": self.method in ("dpo", "sft", "sft+dpo"),
        }

    def to_trl(self, output_dir: str | Path, use_cpu: bool):
        """TRL's DPOConfig; with `sft_weight` the loss is sigmoid DPO + sft_weight x NLL on chosen (RPO)."""
        from trl import DPOConfig

        losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, self.sft_weight]} if self.sft_weight else {}
        return DPOConfig(**self.trainer_args(output_dir, use_cpu), beta=self.beta, **losses)

    def sft_stage(self) -> SFTJobConfig:
        """The supervised stage's config: this job's settings with the stage's learning rate and epochs."""
        shared = {f.name: getattr(self, f.name) for f in fields(TrainConfig)}
        return SFTJobConfig(
            **{**shared, "learning_rate": self.sft_learning_rate, "num_train_epochs": self.sft_epochs, "max_steps": -1}
        )


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """YAML gives ints for floats ('1' for 1.0) and strings for scientific floats ('1e-6' in YAML 1.1)."""
    try:
        if kind in (float, "float"):
            return float(value)
        if kind in (int, "int"):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError(value)
            return int(float(value))
        if kind in (bool, "bool"):
            if not isinstance(value, bool):
                raise ValueError(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {kind}, got {value!r}") from None
    return value


def merge(base: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """`base` with `values` applied; None values are skipped (an unset CLI flag)."""
    known = {f.name: f.type for f in fields(base)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown}; known: {sorted(known)}")
    clean = {k: _coerce(k, known[k], v) for k, v in values.items() if v is not None}
    return replace(base, **clean)


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, cls: type[TrainConfig] = DPOJobConfig
) -> Any:
    """Defaults < YAML file at `path` < `overrides` (None values ignored), as a `cls`."""
    cfg = cls()
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
        cfg = merge(cfg, data, str(path))
    return merge(cfg, overrides or {}, "overrides")


def help_table(cls: type[TrainConfig] = DPOJobConfig) -> list[tuple[str, Any, str]]:
    """(name, default, help) per field, for docs and `--help`."""
    return [(f.name, None if f.default is MISSING else f.default, f.metadata.get("help", "")) for f in fields(cls)]
