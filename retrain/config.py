"""The DPO job configuration: a dataclass with `help` metadata, YAML defaults, CLI overrides.

As in TRL's scripts: a YAML file (`--config`) gives the defaults and command-line flags override
them; the effective configuration is recorded with each adapter. Precedence, lowest first:
dataclass defaults < YAML file < overrides (CLI flags). Unknown YAML keys are an error.

Example:
    cfg = load_config("retrain/configs/tiny.yaml", {"learning_rate": 1e-3})
    trl_args = cfg.to_trl(output_dir="/tmp/out", use_cpu=True)
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A job config that cannot be used (unknown key, wrong type, bad value)."""


@dataclass(frozen=True)
class DPOJobConfig:
    beta: float = field(default=0.1, metadata={"help": "DPO beta: strength of the KL anchor to the reference"})
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs over the training pairs"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many steps (-1: epochs decide)"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "pairs per device per step"})
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
    eval_fraction: float = field(default=0.2, metadata={"help": "held-out share of the pairs (by pair id hash)"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (GPU)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory"})
    torch_threads: int = field(default=0, metadata={"help": "CPU threads for torch (0: torch's default)"})
    deepspeed: str | None = field(default=None, metadata={"help": "DeepSpeed JSON config (several GPUs)"})

    def __post_init__(self) -> None:
        checks = {
            "beta": self.beta > 0,
            "learning_rate": self.learning_rate > 0,
            "num_train_epochs": self.num_train_epochs > 0,
            "per_device_train_batch_size": self.per_device_train_batch_size >= 1,
            "gradient_accumulation_steps": self.gradient_accumulation_steps >= 1,
            "max_length": self.max_length >= 8,
            "lora_r": self.lora_r >= 1,
            "eval_fraction": 0.0 <= self.eval_fraction < 1.0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid value for {', '.join(bad)}: {[getattr(self, n) for n in bad]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_trl(self, output_dir: str | Path, use_cpu: bool):
        """TRL's DPOConfig for these settings (nothing saved by the trainer: the registry stores adapters)."""
        from trl import DPOConfig

        return DPOConfig(
            output_dir=str(output_dir),
            beta=self.beta,
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


def merge(base: DPOJobConfig, values: dict[str, Any], source: str) -> DPOJobConfig:
    """`base` with `values` applied; None values are skipped (an unset CLI flag)."""
    known = {f.name: f.type for f in fields(DPOJobConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown}; known: {sorted(known)}")
    clean = {k: _coerce(k, known[k], v) for k, v in values.items() if v is not None}
    return replace(base, **clean)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> DPOJobConfig:
    """Defaults < YAML file at `path` < `overrides` (None values ignored)."""
    cfg = DPOJobConfig()
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
        cfg = merge(cfg, data, str(path))
    return merge(cfg, overrides or {}, "overrides")


def help_table() -> list[tuple[str, Any, str]]:
    """(name, default, help) per field, for docs and `--help`."""
    return [
        (f.name, None if f.default is MISSING else f.default, f.metadata.get("help", ""))
        for f in fields(DPOJobConfig)
    ]
