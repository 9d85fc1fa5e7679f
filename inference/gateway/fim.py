"""Fill-in-the-middle prompts: the text a model continues to write the code between a prefix and a suffix.

A model trained for it has three tokens that frame the two sides; the prompt ends with the "middle" token and the
model writes the middle, then its end-of-text token:

    starcoder  <fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>        StarCoder, SantaCoder, StarCoder2
    qwen       <|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>  Qwen2.5-Coder

A model without them (the default SmolLM2-135M-Instruct: its StarCoder-derived vocabulary replaced the FIM tokens
with chat tokens; the tiny test model) gets the plain-text template, the code after the gap first and the code
before it last, so that what the model continues is the code before the gap:

    plain      [language: {language}]\n[path: {path}]\n          (each line only when given)
               [code after the cursor]\n{suffix}\n[code before the cursor]\n{prefix}

With an empty suffix the plain prompt is the prefix alone (a plain completion). Whatever the template, the prompt
recorded in the ChatRequest event is the exact text the model continued: the pairs a rejected completion makes
train the model on that same text, so a model without FIM tokens learns the plain template from its own traffic.

The gateway picks the template once, at start (`FLYWHEEL_GATEWAY_FIM_TEMPLATE`): "auto" reads the served base
model's tokenizer files (tokenizer.json, tokenizer_config.json, vocab.json, added_tokens.json) and takes the first
template whose three tokens are all in the vocabulary, else "plain" (also when the model's directory is not on the
gateway's machine: set the template explicitly there). An adapter never changes the tokenizer, so one template
serves every version of the model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "added_tokens.json")
TEMPLATE_NAMES = ("auto", "plain", "starcoder", "qwen")


@dataclass(frozen=True)
class FimTemplate:
    """How a prefix and a suffix become the prompt a model continues."""

    name: str
    prefix_token: str = ""  # the three tokens; all empty for the plain-text template
    suffix_token: str = ""
    middle_token: str = ""

    @property
    def tokens(self) -> tuple[str, str, str]:
        return self.prefix_token, self.suffix_token, self.middle_token

    @property
    def plain(self) -> bool:
        return not self.middle_token

    def prompt(self, prefix: str, suffix: str | None, language: str | None = None, path: str | None = None) -> str:
        """The text the model continues. `suffix` None: a plain completion of `prefix`, whatever the template."""
        if suffix is None:
            return prefix
        if not self.plain:
            return f"{self.prefix_token}{prefix}{self.suffix_token}{suffix}{self.middle_token}"
        header = "".join(f"[{name}: {value}]\n" for name, value in (("language", language), ("path", path)) if value)
        if not suffix:
            return header + prefix
        return f"{header}[code after the cursor]\n{suffix}\n[code before the cursor]\n{prefix}"


PLAIN = FimTemplate("plain")
STARCODER = FimTemplate("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>")
QWEN = FimTemplate("qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
TEMPLATES = {t.name: t for t in (PLAIN, STARCODER, QWEN)}
DETECT_ORDER = (QWEN, STARCODER)  # Qwen2.5-Coder's vocabulary may also hold StarCoder-like strings


def vocabulary(model_dir: Path) -> set[str]:
    """Every token string the tokenizer files of `model_dir` name (vocabulary and added/special tokens); empty
    when there are none. Read once at start: SmolLM2's tokenizer.json (2 MB) parses in about 50 ms."""
    found: set[str] = set()
    for name in TOKENIZER_FILES:
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("tokenizer file unreadable", extra={"path": str(path), "error": repr(exc)})
            continue
        found |= _token_strings(name, data)
    return found


def _token_strings(name: str, data) -> set[str]:
    """Token strings in one tokenizer file: vocabulary keys, added tokens' contents, special tokens."""
    if not isinstance(data, dict):
        return set()
    if name in ("vocab.json", "added_tokens.json"):  # {token: id}
        return {k for k, v in data.items() if isinstance(v, int)}
    out: set[str] = set()
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("vocab"), dict):  # tokenizer.json (BPE, WordPiece)
        out |= set(model["vocab"])
    added = [*(data.get("added_tokens") or []), *(data.get("added_tokens_decoder") or {}).values()]
    for item in [*added, *(data.get("additional_special_tokens") or [])]:
        content = item.get("content") if isinstance(item, dict) else item
        if isinstance(content, str):
            out.add(content)
    return out


def detect_template(tokens: set[str]) -> FimTemplate:
    """The first template whose three tokens are all in `tokens`, else the plain-text one."""
    for template in DETECT_ORDER:
        if all(t in tokens for t in template.tokens):
            return template
    return PLAIN


def resolve_template(setting: str, model_dir: Path) -> FimTemplate:
    """The template the gateway uses: the named one, or for "auto" the one the model's tokenizer supports."""
    if setting != "auto":
        return TEMPLATES[setting]
    if not model_dir.is_dir():
        log.warning(
            "fill-in-the-middle template: model directory not found, plain-text template used",
            extra={"model_dir": str(model_dir)},
        )
        return PLAIN
    template = detect_template(vocabulary(model_dir))
    log.info("fill-in-the-middle template", extra={"template": template.name, "model_dir": str(model_dir)})
    return template
