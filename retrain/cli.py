"""`flywheel train ...` and `flywheel models ...`: run a DPO job by hand, inspect and move versions.

Commands (export: `train_group`, `models_group`; deploy/cli.py registers them):
    flywheel train dpo --pairs pairs.jsonl [--config YAML] [--epochs 3 --lr 5e-3 --beta 0.1]
    flywheel train dpo --job JOB_ID             # the pairs a RetrainJob named, read from the store
    flywheel train dpo --pairs F --output DIR   # train only: the adapter to DIR, no gate, no registry
    flywheel train sft --demo                   # the demo shop's rows: register and promote a version
    flywheel train sft --data rows.jsonl [--eval val.jsonl] [--output DIR] [--lr 1e-3 --epochs 2]
    flywheel models list | show support@v2 | promote support@v2 | rollback
Without --output, `dpo` runs exactly the worker's job (retrain.pipeline.run_job): train, gate, register.
`promote` and `rollback` move the registry's production pointer only; routing is the controller's.

`python -m retrain.cli dpo ...` is the entry point the multi-GPU launcher (retrain.launch) runs.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import click

from retrain.config import load_config
from retrain.registry import Registry, RegistryError
from retrain.settings import RetrainSettings


def _job_pair_ids(settings: RetrainSettings, job_id: str) -> list[str]:
    from schemas import store

    client = store.connect(settings.query_url)
    rows = client.query(
        "SELECT pair_ids FROM flywheel.retrain_jobs FINAL WHERE job_id = %(id)s AND status = 'requested' LIMIT 1",
        parameters={"id": job_id},
    ).result_rows
    if not rows:
        raise click.ClickException(f"no requested job {job_id} in flywheel.retrain_jobs")
    return list(rows[0][0])


@click.group("train")
def train_group() -> None:
    """Train adapters by hand (the retrain worker's code)."""


@train_group.command("dpo")
@click.option("--pairs", "pairs_file", type=click.Path(exists=True, path_type=Path), help="JSONL of DPO pairs")
@click.option("--job", "job_id", help="a RetrainJob id: train on its pairs from the store")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="job config YAML (default: FLYWHEEL_RETRAIN_CONFIG)",
)
@click.option("--output", type=click.Path(path_type=Path), default=None, help="train only; write the adapter here")
@click.option("--epochs", "num_train_epochs", type=float, default=None, help="override num_train_epochs")
@click.option("--lr", "learning_rate", type=float, default=None, help="override learning_rate")
@click.option("--beta", type=float, default=None, help="override beta")
@click.option("--batch-size", "per_device_train_batch_size", type=int, default=None, help="override batch size")
@click.option("--max-steps", type=int, default=None, help="override max_steps")
@click.option("--deepspeed", type=str, default=None, help="DeepSpeed JSON (set by retrain.launch)")
@click.option("--local_rank", "--local-rank", "local_rank", type=int, default=None, hidden=True)
def dpo_command(pairs_file, job_id, config_path, output, local_rank, **overrides) -> None:
    """Train a DPO LoRA adapter on --pairs FILE or a job's pairs (--job ID)."""
    from retrain.dataset import read_pairs_file

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if bool(pairs_file) == bool(job_id):
        raise click.UsageError("give exactly one of --pairs FILE or --job ID")
    settings = RetrainSettings()
    config = load_config(config_path or settings.retrain_config, overrides)
    if pairs_file:
        pairs = read_pairs_file(pairs_file)
        job_id = f"manual-{uuid.uuid4().hex[:8]}"
    else:
        pairs = _fetch(settings, job_id)
    started = time.monotonic()
    if output is not None:
        from retrain.dataset import to_dataset
        from retrain.dpo import train_dpo

        registry = Registry(settings.registry_dir)
        parent = registry.current(settings.model_alias)
        result = train_dpo(
            to_dataset(pairs, settings.base_model_dir),
            settings.base_model_dir,
            output,
            config,
            job_id=job_id,
            parent_adapter=registry.show(parent).path if parent else None,
            device=settings.retrain_device,
        )
        click.echo(
            json.dumps(
                {
                    "job_id": job_id,
                    "adapter_dir": str(result.adapter_dir),
                    "pairs": len(pairs),
                    "steps": result.steps,
                    "train_seconds": round(result.seconds, 2),
                    **result.final,
                }
            )
        )
        return
    from retrain.pipeline import run_job

    outcome = run_job(settings, config, pairs, job_id)
    click.echo(
        json.dumps(
            {
                "job_id": job_id,
                "version": outcome.version.name,
                "verdict": outcome.gate.verdict.name,
                "reasons": list(outcome.gate.verdict.reasons),
                "path": str(outcome.version.path),
                "train_seconds": round(outcome.train_seconds, 2),
                "total_seconds": round(time.monotonic() - started, 2),
                "metrics": outcome.metrics,
            }
        )
    )


@train_group.command("sft")
@click.option(
    "--data",
    "data_file",
    type=click.Path(exists=True, path_type=Path),
    help="JSONL of prompt/completion rows (TRL's conversational format)",
)
@click.option("--eval", "eval_file", type=click.Path(exists=True, path_type=Path), help="validation rows JSONL")
@click.option("--demo", is_flag=True, help="the demo shop's train and validation rows (retrain/demo)")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="SFT config YAML (default: FLYWHEEL_SFT_CONFIG)",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="train only: write the adapter and its loss curve here (no registry)",
)
@click.option("--no-promote", is_flag=True, help="register the version without making it production")
@click.option("--epochs", "num_train_epochs", type=float, default=None, help="override num_train_epochs")
@click.option("--lr", "learning_rate", type=float, default=None, help="override learning_rate")
@click.option("--batch-size", "per_device_train_batch_size", type=int, default=None, help="override batch size")
@click.option("--max-steps", type=int, default=None, help="override max_steps")
def sft_command(data_file, eval_file, demo, config_path, output, no_promote, **overrides) -> None:
    """Supervised LoRA fine-tuning from the base model (loss on the answers); a loss-curve PNG beside it."""
    from retrain.bootstrap import demo_rows, train_production_sft
    from retrain.config import SFTJobConfig
    from retrain.pipeline import read_jsonl

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if bool(data_file) == bool(demo):
        raise click.UsageError("give exactly one of --data FILE or --demo")
    settings = RetrainSettings()
    config = load_config(config_path or settings.sft_config, overrides, cls=SFTJobConfig)
    rows, eval_rows = demo_rows() if demo else (read_jsonl(data_file), read_jsonl(eval_file) if eval_file else [])
    if output is not None:
        from retrain.plots import loss_curve
        from retrain.sft import train_sft
        from retrain.training import rich_progress

        result = train_sft(
            rows,
            settings.base_model_dir,
            output,
            config,
            eval_rows=eval_rows,
            device=settings.retrain_device,
            callbacks=[rich_progress("SFT")],
        )
        plot = loss_curve(result.log_history, Path(output) / "loss.png")
        click.echo(
            json.dumps(
                {
                    "adapter_dir": str(result.adapter_dir),
                    "loss_plot": str(plot),
                    "rows": len(rows),
                    "steps": result.steps,
                    "train_seconds": round(result.seconds, 2),
                    **result.final,
                }
            )
        )
        return
    version = train_production_sft(settings, rows, eval_rows, config, promote=not no_promote, show_progress=True)
    click.echo(
        json.dumps(
            {
                "version": version.name,
                "path": str(version.path),
                "promoted": not no_promote,
                "training": version.metadata["training"],
            }
        )
    )


def _fetch(settings: RetrainSettings, job_id: str):
    from retrain.dataset import fetch_pairs
    from schemas import store

    client = store.connect(settings.query_url)
    return fetch_pairs(client, _job_pair_ids(settings, job_id), wait_s=0, job_id=job_id)


@click.group("models")
def models_group() -> None:
    """The adapter registry: versions, lineage, evaluation, the production pointer.

    `promote` and `rollback` are added by the `flywheel` CLI from the hot-swap controller
    (inference/controller/cli.py): they route traffic and publish the Deployment event, from
    which the retrain worker moves this registry's production pointer.
    """


def _registry() -> tuple[Registry, RetrainSettings]:
    settings = RetrainSettings()
    return Registry(settings.registry_dir), settings


@models_group.command("list")
@click.option("--alias", default=None, help="default: FLYWHEEL_MODEL_ALIAS")
def list_command(alias: str | None) -> None:
    """Versions of an alias, oldest first; * marks production."""
    registry, settings = _registry()
    alias = alias or settings.model_alias
    current = registry.current(alias)
    click.echo(f"{'':2}{'version':<16}{'verdict':<10}{'parent':<16}{'pairs':>6}  {'job':<38}created")
    for v in registry.list(alias):
        m = v.metadata
        mark = "*" if v.name == current else ""
        click.echo(
            f"{mark:<2}{v.name:<16}{m.get('verdict', '?'):<10}{m.get('parent_version') or '-':<16}"
            f"{len(m.get('pair_ids', [])):>6}  {m.get('job_id', ''):<38}{m.get('created_at', '')}"
        )
    click.echo(f"production: {current or settings.served_model_name + ' (base)'}")


def version_metadata(version: str) -> dict:
    """The registry's metadata of VERSION with its directory; click's error when there is no such version."""
    registry, _ = _registry()
    try:
        v = registry.show(version)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    return {**v.metadata, "path": str(v.path)}


@models_group.command("show")
@click.argument("version")
def show_command(version: str) -> None:
    """The metadata of VERSION (e.g. support@v2) as JSON."""
    click.echo(json.dumps(version_metadata(version), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    train_group()
