"""What the SFT and DPO runs share: loading the policy, the device, progress logging, the result.

No training here: retrain/sft.py and retrain/dpo.py build their TRL trainers on these pieces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# What TRL's trainers log, under our names.
DPO_LOG_KEYS = {
    "loss": "loss",
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy",
    "learning_rate": "learning_rate",
}
SFT_LOG_KEYS = {"loss": "loss", "learning_rate": "learning_rate", "mean_token_accuracy": "token_accuracy"}


@dataclass
class TrainResult:
    adapter_dir: Path
    seconds: float
    steps: int
    train_pairs: int  # rows or pairs trained on
    final: dict[str, float] = field(default_factory=dict)  # the last logged loss / margin / accuracy
    log_history: list[dict] = field(default_factory=list)


def log_progress(
    job_id: str,
    publish: Callable[[int, float, dict[str, float]], None] | None = None,
    keys: dict[str, str] = DPO_LOG_KEYS,
    message: str = "dpo step",
):
    """A trainer callback: every TRL log step to `log` (with the job id) and to `publish(step, epoch, values)`."""
    from transformers import TrainerCallback  # about 10 s of imports (torch, peft): only when a run starts

    class LogProgress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:  # the final summary (train_loss, runtime) is logged separately
                return
            values = {ours: float(logs[theirs]) for theirs, ours in keys.items() if theirs in logs}
            log.info(
                message,
                extra={"job_id": job_id, "step": state.global_step, "epoch": round(state.epoch or 0.0, 3), **values},
            )
            if publish is not None:
                publish(state.global_step, float(state.epoch or 0.0), values)

    return LogProgress()


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def row_tokens(tokenizer, row: dict) -> int:
    """Tokens of a prompt/completion row as the trainer sees it: a chat row through the chat template, a text row
    (a code completion's) as it is, with the end-of-text token."""
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str):
        return len(tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]) + 1
    text = tokenizer.apply_chat_template([*prompt, *completion], tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def pair_tokens(tokenizer, pair: dict) -> int:
    """Tokens of a preference row as DPO's trainer sees it: its prompt with the longer of its two answers."""
    return max(row_tokens(tokenizer, {"prompt": pair["prompt"], "completion": pair[k]}) for k in ("chosen", "rejected"))


def fitting_rows(
    rows: Sequence[dict],
    tokenizer,
    max_length: int,
    job_id: str = "manual",
    required: bool = True,
    length: Callable[[Any, dict], int] = row_tokens,
) -> list[dict]:
    """The rows within `max_length` tokens (`length`: `row_tokens`, or `pair_tokens` for preference rows). TRL cuts
    a longer row at the end, so its answer would be trained cut short, or not at all when the prompt alone is too
    long (a rag prompt's passages): it is left out and counted; ValueError when none fits (and `required`), naming
    the lengths."""
    lengths = [length(tokenizer, r) for r in rows]
    kept = [r for r, n in zip(rows, lengths, strict=True) if n <= max_length]
    if len(kept) < len(rows):
        log.warning(
            "rows longer than max_length left out",
            extra={"job_id": job_id, "left_out": len(rows) - len(kept), "rows": len(rows), "max_length": max_length},
        )
    if rows and not kept and required:
        raise ValueError(
            f"every training row is longer than max_length ({max_length} tokens; the shortest has {min(lengths)}): "
            "prompts with knowledge-base passages are long; raise max_length in the job's config"
        )
    return kept


def prepare(base_model: str | Path, parent_adapter: str | Path | None, config, device: str):
    """What every run starts with: (device, tokenizer, model, peft_config), torch's threads set from the config."""
    import torch

    device = pick_device(device)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    return (device, *load_policy(base_model, parent_adapter, config))


def load_policy(base_model: str | Path, parent_adapter: str | Path | None, config):
    """(tokenizer, model, peft_config): the parent adapter loaded trainable, or a new LoRA's config."""
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    dtype = torch.bfloat16 if config.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    if parent_adapter is not None:
        return tokenizer, PeftModel.from_pretrained(model, str(parent_adapter), is_trainable=True), None
    peft_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    return tokenizer, model, peft_config


def rich_progress(description: str = "training"):
    """A trainer callback: a rich progress bar over the training steps (for commands a person watches)."""
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def __init__(self):
            self.progress = None
            self.task = None

        def on_train_begin(self, args, state, control, **kwargs):
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} steps"),
                TextColumn("{task.fields[loss]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self.progress.start()
            self.task = self.progress.add_task(description, total=state.max_steps, loss="")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.progress is not None and logs and "loss" in logs:
                self.progress.update(self.task, loss=f"loss {float(logs['loss']):.3f}")

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return RichProgress()
