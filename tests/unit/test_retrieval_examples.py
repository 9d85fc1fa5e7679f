"""The bundled shop knowledge base agrees with the shop's question-answer data (retrain/demo/shop.jsonl): every
sft fact is in the page its questions are labelled with, no loop fact is anywhere, and the files ship."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from inference.retrieval.examples import EXAMPLES_DIR as EXAMPLES
from inference.retrieval.examples import load_labelled_questions
from inference.retrieval.tokens import stopwords, tokenize
from retrain.demo.domain import DOMAIN_FILE

ROOT = Path(__file__).resolve().parents[2]
PAGES = {p.relative_to(EXAMPLES / "shop").as_posix(): p.read_text("utf-8") for p in EXAMPLES.glob("shop/*/*.md")}
INTENTS = [json.loads(line) for line in DOMAIN_FILE.read_text("utf-8").splitlines() if line.strip()]
LABELLED = load_labelled_questions()
# Words that would give away each fact the shop's model must learn from users' corrections (role "loop").
LOOP_WORDS = {
    "loop.gift_wrap": ["gift wrap", "gift-wrap", "礼品包装"],
    "loop.price_match": ["price match", "lower price", "差价"],
    "loop.loyalty": ["rewards", "points", "积分"],
    "loop.store_pickup": ["portland", "showroom", "pick up", "pickup", "自提"],
    "loop.student_discount": ["student", "school", "学生"],
    "loop.trade_in": ["trade-in", "trade in", "old pan", "以旧换新"],
    "zh.loop.engraving": ["engrav", "刻字", "砧板", "木勺"],
    "zh.loop.registry": ["registry", "wedding", "礼物清单", "婚礼"],
}


def test_one_page_per_topic_and_language():
    topics = ("products", "orders", "shipping", "returns", "warranty", "refunds", "account", "payment")
    assert sorted(PAGES) == sorted(f"{lang}/{topic}.md" for lang in ("en", "zh") for topic in topics)
    assert all(text.startswith("# ") for text in PAGES.values())


def test_every_sft_question_is_labelled_with_its_page_and_nothing_else_is():
    expected = [
        {"question": q, "lang": i["lang"], "document": f"{i['lang']}/{i['topic']}.md"}
        for i in INTENTS
        if i["role"] == "sft"
        for q in i["questions"]
    ]
    assert LABELLED == expected
    assert {row["document"] for row in LABELLED} <= set(PAGES)


@pytest.mark.parametrize("intent", [i for i in INTENTS if i["role"] == "sft"], ids=lambda i: i["intent"])
def test_each_sft_fact_is_in_its_labelled_page(intent: dict):
    page = f"{intent['lang']}/{intent['topic']}.md"
    for number in re.findall(r"\d+(?:\.\d+)?", intent["answer"]):
        assert number in PAGES[page], f"{number} of {intent['intent']} not in {page}"
    words = [t for t in tokenize(intent["answer"]) if t not in stopwords()]

    def coverage(text: str) -> float:
        found = set(tokenize(text))
        return sum(w in found for w in words) / len(words)

    assert coverage(PAGES[page]) >= 0.85  # the answer's words, "yes" aside
    same_language = [p for p in PAGES if p.startswith(intent["lang"] + "/")]
    assert coverage(PAGES[page]) == max(coverage(PAGES[p]) for p in same_language)


def test_no_loop_fact_is_in_the_knowledge_base():
    loop = {i["intent"] for i in INTENTS if i["role"] == "loop"}
    assert loop == set(LOOP_WORDS)  # a new loop fact needs its words here
    found = [
        (intent, word, page)
        for intent, words in LOOP_WORDS.items()
        for word in words
        for page, text in PAGES.items()
        if word in text.lower()
    ]
    assert found == []


def test_the_examples_ship_as_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]["package-data"]
    patterns = data["inference.retrieval"]
    shipped = {path for pattern in patterns for path in EXAMPLES.parent.glob(pattern)}
    data = {path for path in EXAMPLES.rglob("*") if path.is_file() and path.suffix in (".md", ".jsonl")}
    assert shipped == data and len(shipped) == 17
