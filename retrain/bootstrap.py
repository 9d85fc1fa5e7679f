"""The first production version: a supervised LoRA on the domain's question-answer rows, registered and promoted.

Reads:  prompt/completion rows (by default the demo shop's train and validation splits, retrain/demo), the
        SFT config YAML (`FLYWHEEL_SFT_CONFIG`).
Writes: a registry version `<alias>@vN` of kind `sft` with its rows (`train.jsonl`, the replay pool of later
        jobs), its loss curve (`loss.png`) and validation loss in the metadata; the production pointer.

`flywheel up` calls `ensure_production` before it starts the stack: when the alias has no version yet and
`FLYWHEEL_SFT_BOOTSTRAP` is on, it trains one (on 2 CPU cores with SmolLM2-135M, about 8 minutes, with a
progress bar), so that the stack serves a model that knows the domain from its first request.
`flywheel train sft` runs the same code by hand.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Sequence

from retrain.config import SFTJobConfig, load_config
from retrain.demo import write_jsonl
from retrain.pipeline import TRAIN_ROWS
from retrain.plots import loss_curve
from retrain.registry import AdapterVersion, Registry
from retrain.settings import RetrainSettings

log = logging.getLogger(__name__)


def demo_rows() -> tuple[list[dict], list[dict]]:
    """(train, validation) rows of the demo shop (retrain/demo), split by question."""
    from retrain.demo import load_domain, sft_splits, to_sft_rows

    splits = sft_splits(load_domain())
    return to_sft_rows(splits["train"]), to_sft_rows(splits["val"])


def train_production_sft(
    settings: RetrainSettings,
    rows: Sequence[dict],
    eval_rows: Sequence[dict] = (),
    config: SFTJobConfig | None = None,
    promote: bool = True,
    show_progress: bool = False,
) -> AdapterVersion:
    """Train a LoRA from the base model on `rows`, register it (kind `sft`) and make it production."""
    from retrain.sft import train_sft
    from retrain.training import rich_progress

    config = config or load_config(settings.sft_config, cls=SFTJobConfig)
    registry = Registry(settings.registry_dir)
    job_id = f"sft-{uuid.uuid4().hex[:8]}"
    work = settings.work_dir / "jobs" / job_id
    try:
        callbacks = [rich_progress(f"SFT {settings.served_model_name}")] if show_progress else []
        result = train_sft(
            rows,
            settings.base_model_dir,
            work,
            config,
            eval_rows=eval_rows,
            job_id=job_id,
            device=settings.retrain_device,
            callbacks=callbacks,
        )
        write_jsonl(rows, result.adapter_dir / TRAIN_ROWS)
        loss_curve(result.log_history, result.adapter_dir / "loss.png", f"SFT of {settings.served_model_name}")
        version = registry.register(
            settings.model_alias,
            result.adapter_dir,
            {
                "kind": "sft",
                "base_model": settings.served_model_name,
                "base_model_path": str(settings.base_model_dir),
                "parent_version": None,
                "job_id": job_id,
                "rows": len(rows),
                "eval_rows": len(eval_rows),
                "verdict": "accepted",
                "config": config.to_dict(),
                "training": {"seconds": round(result.seconds, 3), "steps": result.steps, **result.final},
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if promote:
        registry.promote(version.name, reason="supervised fine-tuning on the domain")
    log.info(
        "sft version registered",
        extra={
            "job_id": job_id,
            "version": version.name,
            "promoted": promote,
            "seconds": round(result.seconds, 1),
            **result.final,
        },
    )
    return version


def ensure_production(settings: RetrainSettings, show_progress: bool = True) -> AdapterVersion | None:
    """Train and promote the first version when the alias has none and the bootstrap is on; None otherwise."""
    registry = Registry(settings.registry_dir)
    if not settings.sft_bootstrap or registry.current(settings.model_alias) or registry.list(settings.model_alias):
        return None
    train, val = demo_rows()
    return train_production_sft(settings, train, val, show_progress=show_progress)
