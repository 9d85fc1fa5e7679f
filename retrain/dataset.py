"""DPO pairs -> `datasets.Dataset`: read exactly a job's pairs, split off a held-out set, format for TRL.

Sources: the analytics store (`flywheel.dpo_pairs`, read with FINAL: the table is a
ReplacingMergeTree and the sink may have written a pair twice) or a JSONL file of DPOPair
events (or plain {pair_id, prompt, chosen, rejected} objects) for `flywheel train dpo --pairs`.
In a plain object the prompt may be chat messages or plain text (one user turn), and a missing
pair_id is derived from the content, so the same pair keeps the same id (and held-out side) in every run.

The held-out split depends only on each pair id (sha256 bucket), so it is the same in every run,
in the worker and by hand, and a pair never moves between train and held-out when others are added.

Two prompt formats (`prompt_format`, read from the store's column and from each JSONL record, "chat" when absent):
"chat" pairs train in TRL's conversational format (the chat template renders the prompt); "text" pairs (code
completions: the prompt is the exact text the model continued) in TRL's standard format, {"prompt": str, "chosen":
str, "rejected": str}, to which TRL appends the end-of-text token. One TRL dataset holds one format, so a job that
mixes both renders its chat rows to text with the tokenizer's chat template (`one_format`, TRL's own rendering, with
the generation prompt): the same text the conversational format would have trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PAIR_COLUMNS = "pair_id, base_model, prompt, chosen, rejected, source, prompt_format"
PROMPT_FORMATS = ("chat", "text")


class PairsError(RuntimeError):
    """The job's pairs cannot be read or used."""


class PairsMissing(PairsError):
    """Some of the job's pairs never arrived in the store."""


@dataclass(frozen=True)
class Pair:
    pair_id: str
    prompt: tuple[dict, ...]  # chat messages {"role", "content"}; a text pair: one user message, the raw text
    chosen: str
    rejected: str
    prompt_format: str = "chat"  # "text": the prompt is the exact text the model continued (a code completion)

    def swapped(self) -> Pair:
        return replace(self, chosen=self.rejected, rejected=self.chosen)

    @property
    def model_prompt(self) -> tuple[dict, ...] | str:
        """What the model is given: the chat messages, or a text pair's raw text."""
        return self.prompt[-1]["content"] if self.prompt_format == "text" else self.prompt

    def to_row(self) -> dict:
        """TRL's conversational preference format; a text pair's, the standard one."""
        if self.prompt_format == "text":
            return {
                "pair_id": self.pair_id,
                "prompt": self.model_prompt,
                "chosen": self.chosen,
                "rejected": self.rejected,
            }
        return {
            "pair_id": self.pair_id,
            "prompt": [dict(m) for m in self.prompt],
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }


def _is_messages(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def prompt_messages(prompt) -> tuple[dict, ...]:
    """Chat messages from a list of them, their JSON text (the store's column), or plain text (one user turn)."""
    if isinstance(prompt, str):
        try:
            decoded = json.loads(prompt)
        except json.JSONDecodeError:
            decoded = None
        # plain text that happens to parse as JSON ("42", "[1, 2]") is still plain text
        prompt = decoded if _is_messages(decoded) else [{"role": "user", "content": prompt}]
    return tuple({"role": m["role"], "content": m["content"]} for m in prompt)


def content_pair_id(prompt: Sequence[dict], chosen: str, rejected: str) -> str:
    """A stable id for a pair that came without one: sha256 of its normalized content."""
    content = json.dumps([list(prompt), chosen, rejected], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:32]


def _pair(
    pair_id: str | None, prompt, chosen: str | None, rejected: str, prompt_format: str | None = None
) -> Pair | None:
    if not chosen:  # `needs_chosen` pairs have no chosen answer yet: nothing to learn from
        return None
    prompt_format = prompt_format or "chat"
    if prompt_format not in PROMPT_FORMATS:
        raise PairsError(f"pair {pair_id!r}: prompt_format {prompt_format!r} is not one of {', '.join(PROMPT_FORMATS)}")
    messages = prompt_messages(prompt)
    if prompt_format == "text" and (len(messages) != 1 or messages[0]["role"] != "user"):
        raise PairsError(f"pair {pair_id!r}: a text prompt must be one user message (or a string)")
    if pair_id is None:  # a text pair's id differs from a chat pair's of the same words
        pair_id = content_pair_id(
            messages if prompt_format == "chat" else [{"format": "text"}, *messages], chosen, rejected
        )
    return Pair(pair_id, messages, chosen, rejected, prompt_format)


def pairs_from_records(records: Iterable[dict]) -> list[Pair]:
    out = []
    for rec in records:
        pair = _pair(rec.get("pair_id"), rec["prompt"], rec.get("chosen"), rec["rejected"], rec.get("prompt_format"))
        if pair is not None:
            out.append(pair)
    return out


def read_pairs_file(path: str | Path) -> list[Pair]:
    """Pairs from a JSONL file (one DPOPair event or {[pair_id,] prompt, chosen, rejected} per line)."""
    lines = Path(path).read_text().splitlines()
    return pairs_from_records(json.loads(line) for line in lines if line.strip())


def query_pairs(client, pair_ids: Sequence[str]) -> dict[str, Pair | None]:
    """The pairs of `pair_ids` present in the store now (None for a pair without a chosen answer)."""
    if not pair_ids:
        return {}
    result = client.query(
        f"SELECT {PAIR_COLUMNS} FROM flywheel.dpo_pairs FINAL WHERE pair_id IN %(ids)s",
        parameters={"ids": list(pair_ids)},
    )
    found: dict[str, Pair | None] = {}
    for pair_id, _base, prompt, chosen, rejected, _source, prompt_format in result.result_rows:
        found[pair_id] = _pair(pair_id, prompt, chosen, rejected, prompt_format)
    return found


def fetch_pairs(
    client, pair_ids: Sequence[str], wait_s: float = 30.0, poll_s: float = 1.0, job_id: str = ""
) -> list[Pair]:
    """Exactly the pairs named, in the job's order; waits up to `wait_s` for the sink to catch up.

    Raises PairsMissing naming how many (and which, first few) never arrived.
    """
    wanted = list(dict.fromkeys(pair_ids))
    deadline = time.monotonic() + wait_s
    while True:
        found = query_pairs(client, wanted)
        missing = [p for p in wanted if p not in found]
        if not missing:
            break
        if time.monotonic() >= deadline:
            raise PairsMissing(
                f"{len(missing)} of {len(wanted)} pairs not in the store after {wait_s:.0f} s: {missing[:5]}"
            )
        log.info("waiting for pairs", extra={"job_id": job_id, "missing": len(missing), "wanted": len(wanted)})
        time.sleep(poll_s)
    pairs = [found[p] for p in wanted if found[p] is not None]
    if len(pairs) < len(wanted):
        skipped = len(wanted) - len(pairs)
        log.warning("pairs without a chosen answer skipped", extra={"job_id": job_id, "skipped": skipped})
    return pairs


def heldout_bucket(pair_id: str) -> float:
    """A pair's position in [0, 1), from its id alone."""
    return int.from_bytes(hashlib.sha256(pair_id.encode()).digest()[:8], "big") / 2**64


def split_pairs(pairs: Sequence[Pair], eval_fraction: float) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out): a pair is held out when its id's bucket < eval_fraction.

    With two pairs or more and eval_fraction > 0, both sides are non-empty: if the hash puts every
    pair on one side, the pair with the lowest (resp. highest) bucket moves, which is still a function
    of the ids only.
    """
    train = [p for p in pairs if heldout_bucket(p.pair_id) >= eval_fraction]
    heldout = [p for p in pairs if heldout_bucket(p.pair_id) < eval_fraction]
    if eval_fraction > 0 and len(pairs) >= 2:
        if not heldout:
            first = min(train, key=lambda p: heldout_bucket(p.pair_id))
            train.remove(first)
            heldout.append(first)
        elif not train:
            last = max(heldout, key=lambda p: heldout_bucket(p.pair_id))
            heldout.remove(last)
            train.append(last)
    return train, heldout


def to_dataset(pairs: Sequence[Pair], tokenizer: Any = None):
    """A `datasets.Dataset` of TRL preference rows in one format (`one_format`): conversational for chat pairs,
    standard for text pairs; a mix needs `tokenizer` (or the model directory to load it from)."""
    from datasets import Dataset

    if not pairs:
        raise PairsError("no usable pairs to build a dataset from")
    return Dataset.from_list(one_format([p.to_row() for p in pairs], tokenizer))


def is_conversational(row: dict) -> bool:
    return not isinstance(row["prompt"], str)


def one_format(rows: list[dict], tokenizer: Any = None) -> list[dict]:
    """`rows` (preference or prompt/completion) as they are when they share one format; else every conversational row
    rendered to text with the chat template (TRL's `apply_chat_template`: the prompt with the generation prompt, the
    answer as the template continues it), the text rows kept. `tokenizer`: a tokenizer, or a model directory
    (loaded only for a mix)."""
    chat = [is_conversational(r) for r in rows]
    if all(chat) or not any(chat):
        return rows
    if tokenizer is None:
        raise PairsError("chat and text pairs in one job: a tokenizer is needed to render the chat ones as text")
    if isinstance(tokenizer, str | Path):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    return [render_chat_row(r, tokenizer) if c else r for r, c in zip(rows, chat, strict=True)]


def render_chat_row(row: dict, tokenizer: Any) -> dict:
    """A conversational row as text, its other keys (pair_id) kept. The answers end with the template's end of turn;
    whitespace the template writes after it is dropped, so that TRL, which appends the end-of-text token to standard
    rows that lack it, does not append a second one when the two are the same token (SmolLM2: <|im_end|>)."""
    from trl.data_utils import apply_chat_template

    rendered = apply_chat_template(
        {k: row[k] for k in ("prompt", "chosen", "rejected", "completion") if k in row}, tokenizer
    )
    eos = tokenizer.eos_token or ""
    for key in ("chosen", "rejected", "completion"):
        if key in rendered and eos and rendered[key].rstrip().endswith(eos):
            rendered[key] = rendered[key].rstrip()
    return {**row, **rendered}
