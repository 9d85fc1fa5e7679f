"""Greedy answers of the base model or of LoRA adapters on it, in batches: what the gate and the benches judge.

One `Generator` loads the base model once; adapters are loaded by name beside each other (PEFT) and
switched per call, so the current version and a candidate answer the same prompts in one process.
Decoding is greedy, as the evaluation asks "what does this version answer", not "what might it answer".
Prompts are left-padded so that one forward pass serves a whole batch (about 8x faster than one prompt
at a time for 16 prompts of the 135M model on 2 CPU cores).

Example:
    gen = Generator(".flywheel/models/smollm2")
    gen.load("v1", ".flywheel/adapters/support/v1")
    gen.answers([[{"role": "user", "content": "How long do refunds take?"}]], adapter="v1")
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

log = logging.getLogger(__name__)


class Generator:
    def __init__(self, base_model: str | Path, device: str = "cpu", max_new_tokens: int = 64, batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32).to(device).eval()
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.adapters: set[str] = set()

    def load(self, name: str, adapter_dir: str | Path) -> None:
        from peft import PeftModel

        if not self.adapters:
            self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name).eval()
        else:
            self.model.load_adapter(str(adapter_dir), adapter_name=name)
        self.adapters.add(name)

    def using(self, adapter: str | None):
        """Context in which the model is `adapter` (None: the base model)."""
        if adapter is None:
            return self.model.disable_adapter() if self.adapters else nullcontext()
        if adapter not in self.adapters:
            raise KeyError(f"adapter {adapter!r} not loaded")
        self.model.set_adapter(adapter)
        return nullcontext()

    def answers(self, prompts: Sequence[Sequence[dict] | str], adapter: str | None = None) -> list[str]:
        """The greedy answer to each prompt (chat messages, or a text prompt continued as it is), by `adapter`
        (None: the base model)."""
        torch, tok = self.torch, self.tokenizer
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            texts = [
                p
                if isinstance(p, str)
                else tok.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False)
                for p in batch
            ]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            with torch.no_grad(), self.using(adapter):
                ids = self.model.generate(
                    **enc, do_sample=False, max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id
                )
            out.extend(
                t.strip() for t in tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            )
        return out
