"""One DPO training run: TRL's DPOTrainer + a PEFT LoRA adapter, from the production adapter or the base.

Reads:  the base model directory, the parent adapter directory (when given), a preference Dataset.
Writes: the trained adapter (PEFT files) to `output_dir`; progress and losses to the log (with the
        job id); through `MetricsPublisher` a TrainingMetrics event per TRL log step.

Continuing from the adapter in production loads it with `PeftModel.from_pretrained(...,
is_trainable=True)`, so the new version starts from the weights users see now; the first job
creates a new LoRA on the base. Either way TRL's reference model is the base model (the adapter
disabled), which is also the reference of the evaluation gate.

Example:
    from retrain.config import load_config
    from retrain.dataset import read_pairs_file, to_dataset
    result = train_dpo(to_dataset(read_pairs_file("pairs.jsonl")), ".flywheel/models/tiny",
                       "/tmp/adapter", load_config("retrain/configs/tiny.yaml"), job_id="manual")
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from retrain.config import DPOJobConfig

log = logging.getLogger(__name__)

# What TRL's DPOTrainer logs, under our names.
_LOG_KEYS = {"loss": "loss", "rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
             "learning_rate": "learning_rate"}  # fmt: skip


@dataclass
class TrainResult:
    adapter_dir: Path
    seconds: float
    steps: int
    train_pairs: int
    final: dict[str, float] = field(default_factory=dict)  # the last logged loss / margin / accuracy
    log_history: list[dict] = field(default_factory=list)


class LogProgress(TrainerCallback):
    """Every TRL log step to `log` (with the job id) and to `publish(step, epoch, values)`."""

    def __init__(self, job_id: str, publish: Callable[[int, float, dict[str, float]], None] | None = None):
        self.job_id = job_id
        self.publish = publish

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:  # the final summary (train_loss, runtime) is logged separately
            return
        values = {ours: float(logs[theirs]) for theirs, ours in _LOG_KEYS.items() if theirs in logs}
        log.info("dpo step", extra={"job_id": self.job_id, "step": state.global_step,
                                    "epoch": round(state.epoch or 0.0, 3), **values})  # fmt: skip
        if self.publish is not None:
            self.publish(state.global_step, float(state.epoch or 0.0), values)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def train_dpo(
    train_dataset,
    base_model: str | Path,
    output_dir: str | Path,
    config: DPOJobConfig,
    *,
    parent_adapter: str | Path | None = None,
    job_id: str = "manual",
    device: str = "auto",
    publish: Callable[[int, float, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter with DPO on `train_dataset`; save it to `output_dir`."""
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    device = pick_device(device)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    output_dir = Path(output_dir)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    dtype = torch.bfloat16 if config.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    peft_config = None
    if parent_adapter is not None:
        model = PeftModel.from_pretrained(model, str(parent_adapter), is_trainable=True)
    else:
        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=config.lora_target_modules, task_type="CAUSAL_LM")  # fmt: skip
    log.info("dpo start", extra={"job_id": job_id, "pairs": len(train_dataset), "device": device,
                                 "parent": str(parent_adapter) if parent_adapter else None,
                                 "config": config.to_dict()})  # fmt: skip
    trainer = DPOTrainer(
        model=model,
        args=config.to_trl(output_dir / "trainer", use_cpu=device == "cpu"),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[LogProgress(job_id, publish)],
    )
    trainer.train()
    adapter_dir = output_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    steps = [h for h in trainer.state.log_history if "loss" in h]
    final = {ours: float(steps[-1][theirs]) for theirs, ours in _LOG_KEYS.items() if steps and theirs in steps[-1]}
    seconds = time.monotonic() - started
    log.info("dpo done", extra={"job_id": job_id, "seconds": round(seconds, 2), "steps": trainer.state.global_step,
                                **final})  # fmt: skip
    return TrainResult(adapter_dir, seconds, trainer.state.global_step, len(train_dataset), final,
                       list(trainer.state.log_history))  # fmt: skip
