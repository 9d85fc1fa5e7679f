"""A retrain job without the bus: pairs -> split -> DPO -> gate -> registered version.

The worker (retrain.worker) and `flywheel train dpo` both call `run_job`, so a job run by hand is
the same code as one run from `retrain.jobs`. Every version is registered, rejected ones included
(marked so): the version number is spent either way and the evaluation stays inspectable.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from retrain.config import DPOJobConfig
from retrain.dataset import Pair, split_pairs, to_dataset
from retrain.dpo import pick_device, train_dpo
from retrain.gate import GateReport, Thresholds, load_golden, run_gate
from retrain.registry import AdapterVersion, Registry
from retrain.settings import RetrainSettings

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    version: AdapterVersion
    gate: GateReport
    previous_version: str  # what served the alias when the job started: a version or the base model's name
    parent_version: str | None  # the adapter training continued from (None: a new LoRA on the base)
    train_seconds: float
    gate_seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.gate.verdict.accepted


def thresholds(settings: RetrainSettings) -> Thresholds:
    return Thresholds(settings.gate_accuracy_tolerance, settings.gate_margin_tolerance,
                      settings.gate_golden_tolerance, settings.gate_golden_prompt_tolerance)  # fmt: skip


def run_job(
    settings: RetrainSettings,
    config: DPOJobConfig,
    pairs: Sequence[Pair],
    job_id: str,
    registry: Registry | None = None,
    publish: Callable[[int, float, dict[str, float]], None] | None = None,
) -> JobOutcome:
    registry = registry or Registry(settings.registry_dir)
    alias = settings.model_alias
    parent = registry.current(alias)
    parent_dir = registry.show(parent).path if parent else None
    train, heldout = split_pairs(pairs, config.eval_fraction)
    log.info("job split", extra={"job_id": job_id, "train": len(train), "heldout": len(heldout), "parent": parent})
    work = settings.work_dir / "jobs" / job_id
    shutil.rmtree(work, ignore_errors=True)
    try:
        result = train_dpo(to_dataset(train), settings.base_model_dir, work, config, parent_adapter=parent_dir,
                           job_id=job_id, device=settings.retrain_device, publish=publish)  # fmt: skip
        started = time.monotonic()
        report = run_gate(settings.base_model_dir, result.adapter_dir, parent_dir, parent or settings.served_model_name,
                          heldout, load_golden(settings.retrain_golden), config.beta, thresholds(settings),
                          max_length=config.max_length, device=pick_device(settings.retrain_device),
                          job_id=job_id)  # fmt: skip
        gate_seconds = time.monotonic() - started
        metadata = {
            "base_model": settings.served_model_name,
            "base_model_path": str(settings.base_model_dir),
            "parent_version": parent,
            "job_id": job_id,
            "pair_ids": [p.pair_id for p in pairs],
            "train_pair_ids": [p.pair_id for p in train],
            "heldout_pair_ids": [p.pair_id for p in heldout],
            "verdict": report.verdict.name,
            "eval": report.to_json(),
            "config": config.to_dict(),
            "training": {"seconds": round(result.seconds, 3), "steps": result.steps, **result.final},
        }
        version = registry.register(alias, result.adapter_dir, metadata)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    metrics = {**report.metrics(), "train_seconds": result.seconds, "gate_seconds": gate_seconds,
               "train_pairs": float(len(train)), "steps": float(result.steps),
               **{f"train_{k}": v for k, v in result.final.items()}}  # fmt: skip
    log.info("job registered", extra={"job_id": job_id, "version": version.name, "verdict": report.verdict.name,
                                      "train_seconds": round(result.seconds, 2),
                                      "gate_seconds": round(gate_seconds, 2)})  # fmt: skip
    previous = parent or settings.served_model_name
    return JobOutcome(version, report, previous, parent, result.seconds, gate_seconds, metrics)
