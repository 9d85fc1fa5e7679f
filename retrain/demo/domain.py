"""Brightleaf's customer-service knowledge: intents, their question paraphrases, and the splits built from them.

Reads `shop.jsonl` beside this module (or any file of the same shape): one JSON object per line, one line
per intent of a fictional home & kitchen shop, in English or simplified Chinese::

    {"intent": "returns.window", "topic": "returns", "lang": "en", "role": "sft",
     "answer": "...", "questions": ["...", "...", "...", "...", "...", "..."]}

Roles:

* ``sft``: taught by supervised fine-tuning.
* ``loop``: never in SFT data; facts users teach later through thumbs-down corrections, so the
  fine-tuned model cannot know them and any gain on them comes from the feedback loop.
* ``refusal``: out-of-domain questions, all answered with the same polite refusal of their language.

Splits are by question, not by intent: every sft/refusal intent has four training paraphrases, one
validation and one test paraphrase, so evaluation asks known facts in words the model has not seen.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DOMAIN_FILE = Path(__file__).with_name("shop.jsonl")

QUESTIONS_PER_INTENT = 6
ROLES = frozenset({"sft", "loop", "refusal"})
LANGS = frozenset({"en", "zh"})
TOPICS = frozenset(
    {"products", "orders", "shipping", "returns", "warranty", "refunds", "account", "payment", "refusal"}
)
FIELDS = ("intent", "topic", "lang", "role", "answer", "questions")
SPLITS = ("train", "val", "test")

# Dotted lowercase ids: "returns.window", "zh.returns.window", "loop.gift_wrap".
_INTENT_ID = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")


@dataclass(frozen=True)
class Intent:
    intent: str
    topic: str
    lang: str  # "en" | "zh"
    role: str  # "sft" | "loop" | "refusal"
    answer: str
    questions: tuple[str, ...]


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    intent: str
    lang: str


def _parse_record(record: object) -> Intent:
    """One decoded line -> Intent; raises ValueError with the reason (the caller adds the line)."""
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    missing = [f for f in FIELDS if f not in record]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    # Unknown keys are refused so a misspelt field ("question") fails loudly instead of being dropped.
    extra = sorted(set(record) - set(FIELDS))
    if extra:
        raise ValueError(f"unknown field(s) {', '.join(extra)}")
    for name in ("intent", "topic", "lang", "role", "answer"):
        if not isinstance(record[name], str) or not record[name].strip():
            raise ValueError(f"{name} must be a non-empty string")
    if not _INTENT_ID.match(record["intent"]):
        raise ValueError(f"intent id {record['intent']!r} is not dotted lowercase")
    if record["role"] not in ROLES:
        raise ValueError(f"unknown role {record['role']!r} (expected one of {sorted(ROLES)})")
    if record["lang"] not in LANGS:
        raise ValueError(f"unknown lang {record['lang']!r} (expected one of {sorted(LANGS)})")
    if record["topic"] not in TOPICS:
        raise ValueError(f"unknown topic {record['topic']!r}")
    if (record["role"] == "refusal") != (record["topic"] == "refusal"):
        raise ValueError("role 'refusal' and topic 'refusal' go together")
    questions = record["questions"]
    if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
        raise ValueError("questions must be a list of non-empty strings")
    if len(questions) != QUESTIONS_PER_INTENT:
        raise ValueError(f"expected {QUESTIONS_PER_INTENT} questions, got {len(questions)}")
    if len(set(questions)) != len(questions):
        raise ValueError("questions repeat")
    return Intent(
        intent=record["intent"],
        topic=record["topic"],
        lang=record["lang"],
        role=record["role"],
        answer=record["answer"],
        questions=tuple(questions),
    )


def load_domain(path: str | Path | None = None) -> list[Intent]:
    """Read and validate the domain file; raise ValueError naming the file and line of the first bad record."""
    path = Path(path) if path is not None else DOMAIN_FILE
    intents: list[Intent] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                intent = _parse_record(json.loads(line))
            except ValueError as exc:  # json.JSONDecodeError is a ValueError too
                raise ValueError(f"{path}:{lineno}: {exc}") from exc
            if intent.intent in seen:
                raise ValueError(
                    f"{path}:{lineno}: duplicate intent id {intent.intent!r} (first on line {seen[intent.intent]})"
                )
            seen[intent.intent] = lineno
            intents.append(intent)
    return intents


def split_questions(intent: Intent) -> dict[str, tuple[str, ...]]:
    """Fixed positions, so the split never changes between runs: 4 train, 1 val, 1 test paraphrase."""
    q = intent.questions
    return {"train": q[:4], "val": (q[4],), "test": (q[5],)}


def sft_splits(intents: Sequence[Intent]) -> dict[str, list[QA]]:
    """QAs of the sft and refusal intents by split; loop intents are left out (the model must not see them)."""
    out: dict[str, list[QA]] = {name: [] for name in SPLITS}
    for intent in intents:
        if intent.role not in ("sft", "refusal"):
            continue
        for name, questions in split_questions(intent).items():
            out[name].extend(QA(q, intent.answer, intent.intent, intent.lang) for q in questions)
    return out


def loop_sets(intents: Sequence[Intent], asked: int = 3) -> tuple[list[QA], list[QA]]:
    """Loop intents: (the first `asked` questions of each, which users ask and correct; the rest, unseen paraphrases
    that show whether the correction generalised beyond the exact wording)."""
    if not 0 < asked < QUESTIONS_PER_INTENT:
        raise ValueError(f"asked must be between 1 and {QUESTIONS_PER_INTENT - 1}, got {asked}")
    seen: list[QA] = []
    unseen: list[QA] = []
    for intent in intents:
        if intent.role != "loop":
            continue
        qas = [QA(q, intent.answer, intent.intent, intent.lang) for q in intent.questions]
        seen.extend(qas[:asked])
        unseen.extend(qas[asked:])
    return seen, unseen


def to_sft_rows(qas: Sequence[QA]) -> list[dict]:
    """TRL's conversational prompt/completion rows: the loss falls on the assistant's answer only."""
    return [
        {
            "prompt": [{"role": "user", "content": qa.question}],
            "completion": [{"role": "assistant", "content": qa.answer}],
        }
        for qa in qas
    ]


def write_jsonl(rows: Iterable[Mapping], path: str | Path) -> int:
    """Write one JSON object per line (UTF-8, Chinese kept readable); return how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
