"""Launch a DPO job on N GPUs: DeepSpeed ZeRO-2 across several, plain on one GPU or the CPU.

Builds the command line around `python -m retrain.cli dpo ...` (the same code as the worker):
- n_gpus > 1, launcher deepspeed:  deepspeed --num_gpus N --module retrain.cli dpo ... --deepspeed CONFIG
- n_gpus > 1, launcher accelerate: accelerate launch --num_processes N --use_deepspeed
                                   --deepspeed_config_file CONFIG -m retrain.cli dpo ... --deepspeed CONFIG
- otherwise:                       python -m retrain.cli dpo ...
TRL/transformers read the ZeRO-2 JSON through `--deepspeed` (DPOJobConfig.deepspeed); its "auto"
values are filled from the job config (batch size, accumulation, clipping, bf16).

Example:
    python -m retrain.launch --gpus 4 --dry-run -- --pairs pairs.jsonl --config retrain/configs/7b.yaml
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import click

ZERO2 = Path(__file__).resolve().parent.parent / "deploy" / "deepspeed" / "zero2.json"


def build_command(
    n_gpus: int,
    job_args: list[str],
    ds_config: str | Path = ZERO2,
    launcher: str = "deepspeed",
    python: str = sys.executable,
) -> list[str]:
    """The argv that runs `retrain.cli dpo <job_args>` on `n_gpus` devices."""
    if n_gpus <= 1:
        return [python, "-m", "retrain.cli", "dpo", *job_args]
    ds = str(Path(ds_config).resolve())
    if launcher == "deepspeed":
        return ["deepspeed", "--num_gpus", str(n_gpus), "--module", "retrain.cli", "dpo", *job_args, "--deepspeed", ds]
    if launcher == "accelerate":
        return [
            "accelerate",
            "launch",
            "--num_processes",
            str(n_gpus),
            "--use_deepspeed",
            "--deepspeed_config_file",
            ds,
            "-m",
            "retrain.cli",
            "dpo",
            *job_args,
            "--deepspeed",
            ds,
        ]
    raise ValueError(f"unknown launcher {launcher!r} (deepspeed or accelerate)")


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no torch or no CUDA runtime: the CPU
        return 0


@click.command("launch", context_settings={"ignore_unknown_options": True})
@click.option("--gpus", type=int, default=None, help="devices to use (default: all visible GPUs)")
@click.option("--launcher", type=click.Choice(["deepspeed", "accelerate"]), default="deepspeed", show_default=True)
@click.option("--ds-config", type=click.Path(path_type=Path), default=ZERO2, show_default=True, help="DeepSpeed JSON")
@click.option("--dry-run", is_flag=True, help="print the command instead of running it")
@click.argument("job_args", nargs=-1, type=click.UNPROCESSED)
def launch_command(gpus: int | None, launcher: str, ds_config: Path, dry_run: bool, job_args: tuple[str, ...]) -> None:
    """Run `train dpo JOB_ARGS...` on the GPUs (DeepSpeed ZeRO-2 when several)."""
    n = visible_gpus() if gpus is None else gpus
    argv = build_command(n, list(job_args), ds_config, launcher)
    if dry_run:
        click.echo(shlex.join(argv))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    raise SystemExit(subprocess.call(argv, env=env))


def main() -> None:
    launch_command()


if __name__ == "__main__":
    main()
