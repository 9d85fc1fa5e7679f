"""One short DPO job on a Qwen2-architecture model of about 0.5B parameters, built from config: tokens/s, peak memory.

The GPU check of the retrain path: the same `retrain.dpo.train_dpo` the retrain worker runs (TRL DPOTrainer +
PEFT LoRA), on a model with Qwen2.5-0.5B's sizes (24 layers, hidden 896, vocab rows 151,936; random weights and
the locally trained tokenizer of `retrain.tiny_model`, so nothing is downloaded), over synthetic preference pairs.
It prints the model size, the trained tokens/s (prompt + chosen + rejected tokens of the pairs the steps covered,
over TRL's train_runtime) and the peak memory (CUDA: torch.cuda.max_memory_allocated; CPU: the process's max RSS).

No baseline runs beside it: it reports a figure for a machine, it does not compare code paths.

    python -m bench.gpu_dpo                                    # 0.5B, cuda, bf16, 8 steps of 8 pairs
    python -m bench.gpu_dpo --preset tiny --device cpu --steps 2 --batch 2   # the code path on CPU (tests)

On a device machine without trl/datasets, carry their wheels (pip download trl datasets --no-deps) and install
them first; torch, transformers and peft are there.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from retrain.tiny_model import TINY_ARCH, build_tiny_model, corpus

# Qwen2.5-0.5B's architecture (its config.json), with our small tokenizer over its embedding table.
QWEN2_05B = dict(
    vocab_size=151_936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32_768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    hidden_act="silu",
)
PRESETS = {"0.5b": QWEN2_05B, "tiny": TINY_ARCH}


def synthetic_pairs(n: int, seed: int = 0):
    """n preference pairs from the tiny model's corpus: a question, one line as chosen, another as rejected."""
    from retrain.dataset import Pair

    rnd = random.Random(seed)
    lines = corpus(seed)
    return [
        Pair(f"gpu-bench-{i}", ({"role": "user", "content": rnd.choice(lines)},), rnd.choice(lines), rnd.choice(lines))
        for i in range(n)
    ]


def pair_tokens(tokenizer, pairs) -> list[int]:
    """Tokens one DPO step reads per pair: the prompt with the chosen answer, and with the rejected one."""
    counts = []
    for p in pairs:
        prompt = list(p.prompt)
        texts = [
            tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=False)
            for answer in (p.chosen, p.rejected)
        ]
        counts.append(sum(len(ids) for ids in tokenizer(texts)["input_ids"]))
    return counts


def run(args) -> dict:
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from retrain.config import DPOJobConfig
    from retrain.dataset import to_dataset
    from retrain.dpo import train_dpo
    from retrain.training import pick_device

    device = pick_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="flywheel-gpu-dpo-"))
    model_dir = build_tiny_model(work / "model", arch=PRESETS[args.preset])
    params = _parameters(AutoConfig.from_pretrained(model_dir))
    pairs = synthetic_pairs(args.steps * args.batch)
    tokens = sum(pair_tokens(AutoTokenizer.from_pretrained(model_dir), pairs))
    config = DPOJobConfig(
        learning_rate=1e-5,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        max_length=args.max_length,
        bf16=device == "cuda",
        lora_r=16,
        lora_alpha=32,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train_dpo(to_dataset(pairs), model_dir, work / "out", config, job_id="gpu-bench", device=device)
    wall = time.perf_counter() - started
    runtime = next((h["train_runtime"] for h in reversed(result.log_history) if "train_runtime" in h), wall)
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "preset": args.preset,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "parameters": params,
        "steps": result.steps,
        "pairs": len(pairs),
        "tokens": tokens,
        "train_runtime_s": round(runtime, 3),
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / runtime, 1),
        "peak_memory_bytes": int(peak),
        "trl_num_tokens": next((int(h["num_tokens"]) for h in reversed(result.log_history) if "num_tokens" in h), None),
        "final": result.final,
    }


def _parameters(config) -> int:
    import torch
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in Qwen2ForCausalLM(config).parameters())


def print_table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"one DPO job: Qwen2 {r['preset']} from config on {r['gpu'] or r['device']}")
    for col in ("parameters", "steps x pairs", "tokens", "train s", "tokens/s", "peak memory"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{r['parameters'] / 1e6:,.1f} M",
        f"{r['steps']} x {r['pairs'] // max(r['steps'], 1)}",
        f"{r['tokens']:,}",
        f"{r['train_runtime_s']:.1f}",
        f"{r['tokens_per_s']:,.0f}",
        f"{r['peak_memory_bytes'] / 2**30:.2f} GiB",
    )
    Console().print(table)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="0.5b")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    result = run(args)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
