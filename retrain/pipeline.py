"""A retrain job without the bus: pairs -> split -> train (SFT and/or DPO) -> gate -> registered version.

The worker (retrain.worker) and `flywheel train dpo` both call `run_job`, so a job run by hand is
the same code as one run from `retrain.jobs`. Every version is registered, rejected ones included
(marked so): the version number is spent either way and the evaluation stays inspectable.

Training continues from the production version. The job config's `method` says how (retrain.config):
`sft` trains on the chosen answers of the job's training pairs plus a replay sample of the parent
version's training rows (`replay_rows`; rows of the corrected questions are left out: users just said
their answers are wrong); `dpo` runs DPO on the pairs; `sft+dpo` both, in
that order. Each version keeps the rows that define it in `train.jsonl` (the parent's rows less the
replaced ones, plus the new corrections): the lineage of its knowledge, and the next job's replay pool.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from retrain.config import DPOJobConfig
from retrain.dataset import Pair, one_format, split_pairs, to_dataset
from retrain.demo import write_jsonl
from retrain.gate import GateReport, GoldenItem, Thresholds, load_golden, load_regression, run_gate
from retrain.registry import AdapterVersion, Registry
from retrain.settings import RetrainSettings
from schemas.text import normalize_question

if TYPE_CHECKING:  # transformers and peft load with retrain.training: only when a job trains
    from retrain.training import TrainResult

log = logging.getLogger(__name__)

TRAIN_ROWS = "train.jsonl"  # in a version's directory: the prompt/completion rows it was trained to answer


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
    return Thresholds(
        learn_rouge=settings.gate_learn_rouge,
        keep_rouge=settings.gate_keep_rouge,
        right_rouge=settings.gate_right_rouge,
        min_corrected=settings.gate_min_corrected,
        min_paraphrases=settings.gate_min_paraphrases,
        min_kept=settings.gate_min_kept,
    )


def row(prompt: Sequence[dict] | str, answer: str) -> dict:
    """A prompt/completion row: TRL's conversational format; for a text prompt (a code completion's), the standard
    one."""
    if isinstance(prompt, str):
        return {"prompt": prompt, "completion": answer}
    return {"prompt": [dict(m) for m in prompt], "completion": [{"role": "assistant", "content": answer}]}


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def read_rows(version_dir: Path | None) -> list[dict]:
    """The training rows a version keeps (none for a version without them, e.g. a DPO-only lineage)."""
    path = version_dir / TRAIN_ROWS if version_dir else None
    return read_jsonl(path) if path is not None and path.is_file() else []


def _question(prompt: Sequence[dict] | str) -> str:
    if isinstance(prompt, str):  # a text prompt is its own question, exactly (normalized questions have no ":")
        return "text:" + prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return normalize_question(users[-1]) if users else ""


def kept_rows(parent_rows: Sequence[dict], pairs: Sequence[Pair]) -> list[dict]:
    """The parent's rows that stay true: all but those of a corrected question.

    A rejected answer is wrong for the question it answered, not for its own: the model often answers an unknown
    question with another intent's right answer (or the refusal), and dropping the rows that teach that answer
    would make it forget them."""
    corrected = {_question(p.model_prompt) for p in pairs}
    return [r for r in parent_rows if _question(r["prompt"]) not in corrected]


def replay_sample(rows: Sequence[dict], n: int, seed: int) -> list[dict]:
    """`n` of the parent's rows, spread over its answers: one row of every answer before a second of any, so a
    small replay still reminds the model of everything it knew (rows in random order within an answer)."""
    rnd = random.Random(seed)
    by_answer: dict[str, list[dict]] = {}
    for r in rows:
        by_answer.setdefault(_answer(r), []).append(r)
    groups = [rnd.sample(g, len(g)) for g in by_answer.values()]
    rnd.shuffle(groups)
    picked: list[dict] = []
    for depth in range(max((len(g) for g in groups), default=0)):
        picked += [g[depth] for g in groups if depth < len(g)]
        if len(picked) >= n:
            break
    return picked[:n]


def _answer(r: dict) -> str:
    completion = r["completion"]
    return completion[-1]["content"] if isinstance(completion, list) else str(completion)


def supervised_rows(train: Sequence[Pair], keep: Sequence[dict], config: DPOJobConfig) -> list[dict]:
    """The supervised stage's rows: each chosen answer `chosen_repeats` times, plus the replay sample."""
    replay = replay_sample(keep, config.replay_rows, config.seed)
    rows = [row(p.model_prompt, p.chosen) for p in train for _ in range(config.chosen_repeats)] + replay
    random.Random(config.seed + 1).shuffle(rows)
    return rows


def train_candidate(
    settings: RetrainSettings,
    config: DPOJobConfig,
    train: Sequence[Pair],
    keep: Sequence[dict],
    parent_dir: Path | None,
    work: Path,
    job_id: str,
    publish: Callable[[int, float, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train the candidate adapter by the config's method; the last stage's result (seconds summed)."""
    adapter, seconds, result = parent_dir, 0.0, None
    if config.method in ("sft", "sft+dpo"):
        from retrain.sft import train_sft

        rows = one_format(supervised_rows(train, keep, config), settings.base_model_dir)
        result = train_sft(
            rows,
            settings.base_model_dir,
            work / "sft",
            config.sft_stage(),
            parent_adapter=adapter,
            job_id=job_id,
            device=settings.retrain_device,
            publish=publish,
        )
        adapter, seconds = result.adapter_dir, result.seconds
    if config.method in ("dpo", "sft+dpo"):
        from retrain.dpo import train_dpo

        result = train_dpo(
            to_dataset(train, settings.base_model_dir),
            settings.base_model_dir,
            work / "dpo",
            config,
            parent_adapter=adapter,
            job_id=job_id,
            device=settings.retrain_device,
            publish=publish,
        )
        seconds += result.seconds
    assert result is not None  # the config validates `method`
    result.seconds = seconds
    return result


def run_job(
    settings: RetrainSettings,
    config: DPOJobConfig,
    pairs: Sequence[Pair],
    job_id: str,
    registry: Registry | None = None,
    publish: Callable[[int, float, dict[str, float]], None] | None = None,
) -> JobOutcome:
    from retrain.training import pick_device

    registry = registry or Registry(settings.registry_dir)
    alias = settings.model_alias
    parent = registry.current(alias)
    parent_dir = registry.show(parent).path if parent else None
    train, heldout = split_pairs(pairs, config.eval_fraction)
    keep = kept_rows(read_rows(parent_dir), pairs)
    log.info(
        "job split",
        extra={
            "job_id": job_id,
            "train": len(train),
            "heldout": len(heldout),
            "parent": parent,
            "method": config.method,
            "replay_pool": len(keep),
        },
    )
    work = settings.work_dir / "jobs" / job_id
    shutil.rmtree(work, ignore_errors=True)
    try:
        result = train_candidate(settings, config, train, keep, parent_dir, work, job_id, publish)
        write_jsonl([*keep, *(row(p.model_prompt, p.chosen) for p in pairs)], result.adapter_dir / TRAIN_ROWS)
        started = time.monotonic()
        report = run_gate(
            settings.base_model_dir,
            result.adapter_dir,
            parent_dir,
            parent or settings.served_model_name,
            train,
            heldout,
            regression_prompts(settings, pairs),
            load_golden(settings.retrain_golden),
            config.beta,
            thresholds(settings),
            max_length=config.max_length,
            device=pick_device(settings.retrain_device),
            job_id=job_id,
        )
        gate_seconds = time.monotonic() - started
        metadata = {
            "kind": config.method,
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
    metrics = {
        **report.metrics(),
        "train_seconds": result.seconds,
        "gate_seconds": gate_seconds,
        "train_pairs": float(len(train)),
        "steps": float(result.steps),
        **{f"train_{k}": v for k, v in result.final.items()},
    }
    log.info(
        "job registered",
        extra={
            "job_id": job_id,
            "version": version.name,
            "verdict": report.verdict.name,
            "figures": list(report.verdict.figures),
            "train_seconds": round(result.seconds, 2),
            "gate_seconds": round(gate_seconds, 2),
        },
    )
    previous = parent or settings.served_model_name
    return JobOutcome(version, report, previous, parent, result.seconds, gate_seconds, metrics)


def regression_prompts(settings: RetrainSettings, pairs: Sequence[Pair]) -> list[GoldenItem]:
    """The regression set less the corrected questions, at most `gate_regression_size` items (a fixed sample)."""
    corrected = {_question(p.model_prompt) for p in pairs}
    items = [i for i in load_regression(settings.retrain_regression) if _question(i.prompt) not in corrected]
    if len(items) > settings.gate_regression_size:
        items = random.Random(0).sample(items, settings.gate_regression_size)
    return items
