"""Build a tiny Qwen2-architecture chat model locally, with no download.

Writes a Hugging Face model directory (safetensors weights, config, a byte-level BPE
tokenizer trained here on a small customer-service corpus in English and Chinese, and a
ChatML chat template) that transformers and vLLM (CPU or GPU) load offline. The weights
are random: the model is for exercising the serving, LoRA and training paths end to end,
not for answering well. With a real model nothing here is needed: point
`FLYWHEEL_BASE_MODEL` at its directory (for example a local Qwen2.5-7B-Instruct).

The same seed gives the same files (weights, tokenizer, config) byte for byte.

Example:
    python -m retrain.tiny_model .flywheel/models/tiny
    flywheel model init-tiny .flywheel/models/tiny
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import click

log = logging.getLogger(__name__)

IM_START, IM_END, EOS = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = [EOS, IM_START, IM_END]
DEFAULT_VOCAB_SIZE = 2048

# Qwen2's template, simplified (no tools): a default system turn, ChatML turns, and the
# generation prompt. Generation stops on <|im_end|> (the tokenizer's eos in chat use).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful customer service assistant.<|im_end|>\\n' }}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Architecture: head_dim 64 (the CPU attention kernel rejects 16), 2 query heads, 1 kv head.
TINY_ARCH = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=512,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    hidden_act="silu",
)

_PRODUCTS = [
    "headphones",
    "laptop bag",
    "coffee maker",
    "running shoes",
    "desk lamp",
    "phone case",
    "backpack",
    "water bottle",
    "keyboard",
    "blender",
]
_ZH_PRODUCTS = ["耳机", "电脑包", "咖啡机", "跑鞋", "台灯", "手机壳", "背包", "水杯", "键盘", "搅拌机"]
_EN_TEMPLATES = [
    "Where is my order {order}? It was supposed to arrive on {day}.",
    "Your order {order} shipped on {day} and should arrive within {n} business days.",
    "I want to return the {product} I bought last week.",
    "You can return the {product} within 30 days. Please keep the original packaging.",
    "How long does a refund take for order {order}?",
    "Refunds are issued to the original payment method within {n} business days.",
    "Can I change the shipping address for order {order}?",
    "The {product} arrived damaged. What should I do?",
    "We are sorry the {product} arrived damaged. We will send a replacement at no cost.",
    "Do you ship to {country}? How much is express shipping?",
    "Standard shipping is free over ${n}0. Express shipping costs ${n}.99.",
    "I was charged twice for order {order}. Please help.",
    "I cannot answer that question, but I can help with orders, returns, shipping and refunds.",
    "Is the {product} in stock in {color}?",
    "Please cancel my order {order} before it ships.",
    "Thank you for contacting customer service. Is there anything else I can help with?",
]
_ZH_TEMPLATES = [
    "我的订单{order}什么时候到？",
    "您的订单{order}已于{day}发货，预计{n}个工作日内送达。",
    "我想退货，{product}不合适。",
    "{product}可以在30天内退货，请保留原包装。",
    "退款需要多长时间？",
    "退款将在{n}个工作日内退回原支付方式。",
    "我的{product}收到时已经损坏了。",
    "很抱歉给您带来不便，我们会免费为您补发。",
    "可以修改订单{order}的收货地址吗？",
    "感谢您的耐心等待，还有什么可以帮您？",
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "March 3", "June 12"]
_COUNTRIES = ["Canada", "Germany", "Japan", "Brazil", "Australia"]
_COLORS = ["black", "white", "red", "blue"]


def corpus(seed: int = 0, lines: int = 600) -> list[str]:
    """A few hundred customer-service lines (about one in three Chinese), from templates."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        fill = dict(
            order=f"#{rng.randint(10000, 99999)}",
            day=rng.choice(_DAYS),
            n=rng.randint(2, 9),
            country=rng.choice(_COUNTRIES),
            color=rng.choice(_COLORS),
        )
        if i % 3 == 2:
            out.append(rng.choice(_ZH_TEMPLATES).format(product=rng.choice(_ZH_PRODUCTS), **fill))
        else:
            out.append(rng.choice(_EN_TEMPLATES).format(product=rng.choice(_PRODUCTS), **fill))
    return out


def _train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def build_tiny_model(
    out_dir: Path, seed: int = 0, vocab_size: int = DEFAULT_VOCAB_SIZE, arch: dict | None = None
) -> Path:
    """Write a random-weight tiny Qwen2 chat model with its tokenizer to `out_dir`; return it.

    `arch` overrides Qwen2Config fields of TINY_ARCH (e.g. Qwen2.5-0.5B's sizes for the GPU bench); its
    `vocab_size`, if any, sizes the embedding table (rows past the tokenizer's ids are never used)."""
    arch = {**TINY_ARCH, **(arch or {})}
    table_rows = arch.pop("vocab_size", 0)
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    raw = _train_tokenizer(corpus(seed), vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token=IM_END,  # chat generation ends a turn with <|im_end|>, as Qwen2-Instruct does
        pad_token=EOS,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=arch["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"

    # Round the embedding table up to a multiple of 64 (as real checkpoints do); the
    # tokenizer may have learned fewer merges than asked on a small corpus.
    n_vocab = max(((len(tokenizer) + 63) // 64) * 64, table_rows)
    config = Qwen2Config(
        vocab_size=n_vocab,
        bos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(EOS),
        torch_dtype="float32",
        **arch,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = [config.eos_token_id, config.bos_token_id]
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _portable_tokenizer_config(out_dir)
    _write_readme(out_dir, seed, n_vocab)
    log.info("built tiny model", extra={"dir": str(out_dir), "seed": seed, "vocab": n_vocab})
    return out_dir


def _portable_tokenizer_config(out_dir: Path) -> None:
    """Make tokenizer_config.json readable by transformers 4.x and 5.x and by other servers.

    transformers 5 writes the template to chat_template.jinja and names its own backend
    class; older readers look for `chat_template` in tokenizer_config.json and know
    `PreTrainedTokenizerFast` (an alias of the backend in 5.x). Keep both copies.
    """
    path = out_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _write_readme(out_dir: Path, seed: int, n_vocab: int) -> None:
    meta = {"builder": "retrain.tiny_model", "seed": seed, "vocab_size": n_vocab, **TINY_ARCH}
    (out_dir / "flywheel_tiny.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


@click.command("init-tiny")
@click.argument("out_dir", type=click.Path(path_type=Path), default=Path(".flywheel/models/tiny"))
@click.option("--seed", default=0, show_default=True, help="seed for weights and the tokenizer corpus")
@click.option("--vocab-size", default=DEFAULT_VOCAB_SIZE, show_default=True, help="BPE vocabulary size")
def init_tiny_command(out_dir: Path, seed: int, vocab_size: int) -> None:
    """Build a tiny random-weight Qwen2 chat model in OUT_DIR (no download)."""
    path = build_tiny_model(out_dir, seed=seed, vocab_size=vocab_size)
    click.echo(f"tiny model written to {path}; serve it with FLYWHEEL_BASE_MODEL={path.resolve()}")


def main() -> None:
    init_tiny_command()


if __name__ == "__main__":
    main()
