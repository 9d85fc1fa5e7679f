"""The demo shop's knowledge base and its labelled questions (data files, shipped as package data).

    shop/en/*.md, shop/zh/*.md     Brightleaf's policy pages, one per topic, in English and simplified Chinese
    shop_questions.jsonl           {"question", "lang", "document"}: each paraphrase of the shop's sft intents
                                   (retrain/demo/shop.jsonl) and the page that answers it, e.g. "en/returns.md"

Document ids are paths relative to shop/: add the pages with `kb.add([EXAMPLES_DIR / "shop"])` (a directory is its
own root) and the labels match. Facts of the shop's "loop" intents, which users teach later, are in no page.
"""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent
SHOP_DIR = EXAMPLES_DIR / "shop"
QUESTIONS_FILE = EXAMPLES_DIR / "shop_questions.jsonl"


def load_labelled_questions(path: Path = QUESTIONS_FILE) -> list[dict]:
    """The labelled questions: dicts with "question", "lang" ("en" | "zh") and "document"."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def labelled_documents(path: Path = QUESTIONS_FILE) -> dict[str, str]:
    """Each labelled question -> the page that answers it ("en/returns.md")."""
    return {q["question"]: q["document"] for q in load_labelled_questions(path)}
