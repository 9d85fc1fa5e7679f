"""One supervised fine-tuning run: TRL's SFTTrainer + a PEFT LoRA adapter, loss on the answer only.

Reads:  the base model directory, the parent adapter (when given: training continues from its weights),
        prompt/completion rows (TRL's conversational format: {"prompt": [messages], "completion":
        [{"role": "assistant", ...}]}), optional validation rows.
Writes: the adapter (PEFT files) to `<output_dir>/adapter`; per-step losses to the log (with the job id)
        and to `publish`; `TrainResult.log_history` holds the train and validation losses for the plot
        (retrain.plots.loss_curve).

The loss sits on the completion only (`completion_only_loss`): with the loss on the whole conversation
the 135M model learnt 0 of 4 corrections in 20-40 steps; on the answer only, 4 of 4 (measured on 2 CPU
cores, LoRA r 8, lr 5e-4, 40 steps).

Example:
    from retrain.config import load_config, SFTJobConfig
    rows = [{"prompt": [{"role": "user", "content": "Hi?"}],
             "completion": [{"role": "assistant", "content": "Hello."}]}]
    train_sft(rows, ".flywheel/models/smollm2", "/tmp/sft", load_config(None, {"learning_rate": 5e-4}, SFTJobConfig))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from retrain.config import SFTJobConfig
from retrain.training import SFT_LOG_KEYS, TrainResult, fitting_rows, log_progress, prepare

log = logging.getLogger(__name__)


def plain_loss_trainer():
    """TRL's SFTTrainer with the model's own cross-entropy on the answer tokens instead of TRL's fused LM head.

    TRL 1.16 computes log-probabilities, entropy and top-1 per vocabulary chunk in plain torch when it has no GPU
    kernels; with SmolLM2's 49,152-token vocabulary that made a CPU step (batch 8, ~70 tokens) 5.1 s against 3.0 s
    for the model's own loss. The loss is the same (mean NLL over the completion tokens, which TRL's collator
    labels); TRL's entropy and token-accuracy metrics are not logged.
    """
    from trl import SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            keep = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels", "position_ids")}
            extra = {"num_items_in_batch": num_items_in_batch} if num_items_in_batch is not None else {}
            outputs = model(**keep, use_cache=False, **extra)
            return (outputs.loss, outputs) if return_outputs else outputs.loss

    return PlainLossSFTTrainer


def train_sft(
    rows: Sequence[dict],
    base_model: str | Path,
    output_dir: str | Path,
    config: SFTJobConfig,
    *,
    eval_rows: Sequence[dict] = (),
    parent_adapter: str | Path | None = None,
    job_id: str = "manual",
    device: str = "auto",
    publish: Callable[[int, float, dict[str, float]], None] | None = None,
    callbacks: Sequence = (),
) -> TrainResult:
    """Train a LoRA adapter on prompt/completion `rows`; save it to `<output_dir>/adapter`."""
    from datasets import Dataset

    if not rows:
        raise ValueError("no training rows")
    started = time.monotonic()
    device, tokenizer, model, peft_config = prepare(base_model, parent_adapter, config, device)
    rows = fitting_rows(rows, tokenizer, config.max_length, job_id)
    eval_rows = fitting_rows(eval_rows, tokenizer, config.max_length, job_id, required=False)
    output_dir = Path(output_dir)
    columns = ("prompt", "completion")
    train = Dataset.from_list([{k: r[k] for k in columns} for r in rows])
    evaluate = Dataset.from_list([{k: r[k] for k in columns} for r in eval_rows]) if eval_rows else None
    log.info(
        "sft start",
        extra={
            "job_id": job_id,
            "rows": len(rows),
            "eval_rows": len(eval_rows),
            "device": device,
            "parent": str(parent_adapter) if parent_adapter else None,
            "config": config.to_dict(),
        },
    )
    trainer = plain_loss_trainer()(
        model=model,
        args=config.to_trl(output_dir / "trainer", use_cpu=device == "cpu", evaluate=evaluate is not None),
        train_dataset=train,
        eval_dataset=evaluate,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[log_progress(job_id, publish, SFT_LOG_KEYS, "sft step"), *callbacks],
    )
    trainer.train()
    adapter_dir = output_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    history = list(trainer.state.log_history)
    steps = [h for h in history if "loss" in h]
    final = {ours: float(steps[-1][theirs]) for theirs, ours in SFT_LOG_KEYS.items() if steps and theirs in steps[-1]}
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    if evals:
        final["eval_loss"] = float(evals[-1])
    seconds = time.monotonic() - started
    log.info(
        "sft done", extra={"job_id": job_id, "seconds": round(seconds, 2), "steps": trainer.state.global_step, **final}
    )
    return TrainResult(adapter_dir, seconds, trainer.state.global_step, len(rows), final, history)
