"""The multi-GPU launch: DeepSpeed ZeRO-2 command built and dry-run on CPU; plain on one device."""

import json
import sys

from click.testing import CliRunner

from retrain.launch import ZERO2, build_command, launch_command


def test_zero2_config_is_stage_2():
    cfg = json.loads(ZERO2.read_text())
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["train_micro_batch_size_per_gpu"] == "auto"  # filled by transformers from the job config


def test_deepspeed_command_contains_the_config():
    argv = build_command(4, ["--pairs", "p.jsonl", "--config", "retrain/configs/7b.yaml"])
    assert argv[:4] == ["deepspeed", "--num_gpus", "4", "--module"]
    assert argv[argv.index("--deepspeed") + 1] == str(ZERO2)
    assert "retrain.cli" in argv and "dpo" in argv and "p.jsonl" in argv


def test_accelerate_command():
    argv = build_command(2, ["--pairs", "p.jsonl"], launcher="accelerate")
    assert argv[:4] == ["accelerate", "launch", "--num_processes", "2"]
    assert str(ZERO2) in argv and "--use_deepspeed" in argv


def test_one_device_runs_plain():
    argv = build_command(1, ["--pairs", "p.jsonl"])
    assert argv == [sys.executable, "-m", "retrain.cli", "dpo", "--pairs", "p.jsonl"]
    assert "--deepspeed" not in build_command(0, [])


def test_dry_run_prints_the_command():
    result = CliRunner().invoke(launch_command, ["--gpus", "8", "--dry-run", "--", "--pairs", "p.jsonl"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("deepspeed --num_gpus 8 --module retrain.cli dpo --pairs p.jsonl --deepspeed ")
    assert str(ZERO2) in result.output


def test_deepspeed_accepts_zero2_filled_from_the_7b_job_config(tmp_path):
    """transformers fills the "auto" values from the job's TRL args; DeepSpeed parses the result (no GPU)."""
    import pytest

    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from retrain.config import load_config
    from retrain.settings import PACKAGE_DIR

    job = load_config(PACKAGE_DIR / "configs" / "7b.yaml", {"bf16": False})  # bf16 needs a GPU to build args
    args = job.to_trl(tmp_path, use_cpu=True)
    hf = HfTrainerDeepSpeedConfig(str(ZERO2))
    hf.trainer_config_process(args)
    filled = hf.config
    assert "auto" not in json.dumps(filled)
    ds = DeepSpeedConfig(filled)
    assert ds.zero_optimization_stage == 2
    assert ds.train_micro_batch_size_per_gpu == job.per_device_train_batch_size
    assert ds.gradient_accumulation_steps == job.gradient_accumulation_steps
