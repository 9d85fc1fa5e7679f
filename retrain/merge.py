"""Base model + LoRA adapter -> one model directory, for export to servers that take no adapters.

Reads a base model directory and an adapter directory (or a registry version, e.g. `support@v2`); writes a
Hugging Face model directory (safetensors) with the adapter folded into the weights, the tokenizer, and
`flywheel-merge.json` naming what was merged.

Example:
    flywheel model merge support@v2 /tmp/support-v2-merged
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def merge_adapter(base_model: str | Path, adapter_dir: str | Path, out_dir: str | Path, name: str = "") -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(out)
    (out / "flywheel-merge.json").write_text(
        json.dumps({"base_model": str(base_model), "adapter": str(adapter_dir), "version": name}, indent=2) + "\n"
    )
    log.info("merged", extra={"adapter": str(adapter_dir), "out": str(out)})
    return out
