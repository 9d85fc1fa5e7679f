"""One DPO training run: TRL's DPOTrainer + a PEFT LoRA adapter, from the production adapter or the base.

Reads:  the base model directory, the parent adapter directory (when given), a preference Dataset.
Writes: the trained adapter (PEFT files) to `output_dir`; progress and losses to the log (with the
        job id); through `MetricsPublisher` a TrainingMetrics event per TRL log step.

Continuing from the adapter in production loads it with `PeftModel.from_pretrained(...,
is_trainable=True)`, so the new version starts from the weights users see now; the first job
creates a new LoRA on the base. TRL's reference model is the policy at the start of the job: a frozen
copy of the parent adapter (TRL adds it as adapter "ref"), or the base model for a new LoRA.

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
from pathlib import Path

from retrain.config import DPOJobConfig
from retrain.training import DPO_LOG_KEYS, TrainResult, fitting_rows, log_progress, pair_tokens, prepare

log = logging.getLogger(__name__)


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
    from trl import DPOTrainer

    started = time.monotonic()
    device, tokenizer, model, peft_config = prepare(base_model, parent_adapter, config, device)
    rows = fitting_rows(list(train_dataset), tokenizer, config.max_length, job_id, length=pair_tokens)
    if len(rows) < len(train_dataset):
        train_dataset = type(train_dataset).from_list(rows)
    output_dir = Path(output_dir)
    log.info(
        "dpo start",
        extra={
            "job_id": job_id,
            "pairs": len(train_dataset),
            "device": device,
            "parent": str(parent_adapter) if parent_adapter else None,
            "config": config.to_dict(),
        },
    )
    trainer = DPOTrainer(
        model=model,
        args=config.to_trl(output_dir / "trainer", use_cpu=device == "cpu"),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[log_progress(job_id, publish)],
    )
    trainer.train()
    adapter_dir = output_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    steps = [h for h in trainer.state.log_history if "loss" in h]
    final = {ours: float(steps[-1][theirs]) for theirs, ours in DPO_LOG_KEYS.items() if steps and theirs in steps[-1]}
    seconds = time.monotonic() - started
    log.info(
        "dpo done", extra={"job_id": job_id, "seconds": round(seconds, 2), "steps": trainer.state.global_step, **final}
    )
    return TrainResult(
        adapter_dir, seconds, trainer.state.global_step, len(train_dataset), final, list(trainer.state.log_history)
    )
