"""Brightleaf demo domain: the shipped file is well-formed, its splits never leak a question, bad files fail loudly."""

import json
import re
import unicodedata
from collections import Counter

import pytest

from retrain.demo import (
    DOMAIN_FILE,
    QA,
    Intent,
    load_domain,
    loop_sets,
    sft_splits,
    split_questions,
    to_sft_rows,
    write_jsonl,
)

EN_REFUSAL = "I'm sorry, I can only help with Brightleaf orders, products, shipping, returns and your account."


def norm(text: str) -> str:
    """Lowercase, punctuation stripped (ASCII and CJK), whitespace collapsed: near-copies compare equal."""
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text.lower())
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def intents() -> list[Intent]:
    return load_domain()


def by(intents, role, lang=None):
    return [i for i in intents if i.role == role and (lang is None or i.lang == lang)]


def test_shipped_file_loads(intents):
    assert DOMAIN_FILE.name == "shop.jsonl" and DOMAIN_FILE.is_file()
    assert load_domain(DOMAIN_FILE) == intents == load_domain(str(DOMAIN_FILE))


@pytest.mark.parametrize(
    ("role", "lang", "low", "high"),
    [
        ("sft", "en", 40, 50),
        ("sft", "zh", 10, 14),
        ("loop", "en", 6, 6),
        ("loop", "zh", 2, 2),
        ("refusal", "en", 5, 7),
        ("refusal", "zh", 2, 3),
    ],
)
def test_counts_per_role_and_language(intents, role, lang, low, high):
    assert low <= len(by(intents, role, lang)) <= high


def test_every_topic_is_taught(intents):
    topics = {i.topic for i in by(intents, "sft", "en")}
    assert topics == {"products", "orders", "shipping", "returns", "warranty", "refunds", "account", "payment"}


def test_intent_ids_follow_role_and_language(intents):
    for i in intents:
        assert i.intent.startswith("zh.") == (i.lang == "zh"), i.intent
        bare = i.intent.removeprefix("zh.")
        assert bare.startswith("loop.") == (i.role == "loop"), i.intent
        assert bare.startswith("refusal.") == (i.role == "refusal"), i.intent


def test_six_distinct_questions_per_intent(intents):
    for i in intents:
        assert len(i.questions) == 6
        assert len({norm(q) for q in i.questions}) == 6, i.intent


def test_no_question_in_two_intents(intents):
    owners = Counter(norm(q) for i in intents for q in set(i.questions))
    assert [q for q, n in owners.items() if n > 1] == []


def test_answers_distinct_except_refusals(intents):
    answers = [norm(i.answer) for i in intents if i.role != "refusal"]
    assert len(answers) == len(set(answers))
    refusals = {i.lang: set() for i in by(intents, "refusal")}
    for i in by(intents, "refusal"):
        refusals[i.lang].add(i.answer)
    assert refusals["en"] == {EN_REFUSAL} and len(refusals["zh"]) == 1
    assert not {a for s in refusals.values() for a in s} & {i.answer for i in intents if i.role != "refusal"}


def test_answer_length_limits(intents):
    for i in intents:
        if i.lang == "en":
            assert len(i.answer.split()) <= 25, i.intent
        else:
            assert len(i.answer) <= 40, i.intent
            assert re.search(r"[\u4e00-\u9fff]", i.answer) and all(
                re.search(r"[\u4e00-\u9fff]", q) for q in i.questions
            )


def test_loop_facts_absent_from_sft_data(intents):
    # Keywords of each loop fact: if SFT data mentioned them, a gain on loop questions could come from SFT.
    loop_terms = "gift wrap|price match|rewards|loyalty|portland|pickup|pick up|student|trade in|刻字|婚礼".split("|")
    taught = " ".join(norm(i.answer) + " " + " ".join(norm(q) for q in i.questions) for i in by(intents, "sft"))
    assert [t for t in loop_terms if norm(t) in taught] == []


def test_split_questions_positions(intents):
    i = intents[0]
    split = split_questions(i)
    assert split == {"train": i.questions[:4], "val": (i.questions[4],), "test": (i.questions[5],)}


def test_splits_disjoint_by_normalized_text(intents):
    splits = sft_splits(intents)
    assert set(splits) == {"train", "val", "test"}
    texts = {name: {norm(qa.question) for qa in qas} for name, qas in splits.items()}
    assert not texts["train"] & texts["val"]
    assert not texts["train"] & texts["test"]
    assert not texts["val"] & texts["test"]


def test_every_sft_and_refusal_intent_in_every_split(intents):
    splits = sft_splits(intents)
    wanted = {i.intent for i in intents if i.role in ("sft", "refusal")}
    for name, qas in splits.items():
        assert {qa.intent for qa in qas} == wanted, name
    n = len(wanted)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (4 * n, n, n)


def test_sft_splits_carry_the_intents_answer(intents):
    answers = {i.intent: (i.answer, i.lang) for i in intents}
    for qas in sft_splits(intents).values():
        for qa in qas:
            assert (qa.answer, qa.lang) == answers[qa.intent]


def test_loop_intents_never_in_sft_splits(intents):
    loop_ids = {i.intent for i in by(intents, "loop")}
    loop_questions = {norm(q) for i in by(intents, "loop") for q in i.questions}
    for qas in sft_splits(intents).values():
        assert not {qa.intent for qa in qas} & loop_ids
        assert not {norm(qa.question) for qa in qas} & loop_questions


@pytest.mark.parametrize("asked", [1, 3, 5])
def test_loop_sets(intents, asked):
    seen, unseen = loop_sets(intents, asked)
    loops = by(intents, "loop")
    assert len(seen) == asked * len(loops) and len(unseen) == (6 - asked) * len(loops)
    assert {qa.intent for qa in seen} == {qa.intent for qa in unseen} == {i.intent for i in loops}
    assert not {norm(qa.question) for qa in seen} & {norm(qa.question) for qa in unseen}
    first = loops[0]
    assert [qa.question for qa in seen if qa.intent == first.intent] == list(first.questions[:asked])


@pytest.mark.parametrize("asked", [0, 6, -1])
def test_loop_sets_rejects_asked_out_of_range(intents, asked):
    with pytest.raises(ValueError):
        loop_sets(intents, asked)


def test_to_sft_rows_and_write_jsonl(tmp_path):
    qas = [
        QA("Where is my order?", "Check My Orders.", "orders.track", "en"),
        QA("怎么查物流？", "看我的订单。", "zh.x.y", "zh"),
    ]
    rows = to_sft_rows(qas)
    assert rows[0] == {
        "prompt": [{"role": "user", "content": "Where is my order?"}],
        "completion": [{"role": "assistant", "content": "Check My Orders."}],
    }
    path = tmp_path / "sub" / "rows.jsonl"
    assert write_jsonl(rows, path) == 2
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert "怎么查物流" in lines[1]  # written as UTF-8, not \u escapes


GOOD = {
    "intent": "returns.window",
    "topic": "returns",
    "lang": "en",
    "role": "sft",
    "answer": "Thirty days.",
    "questions": ["a?", "b?", "c?", "d?", "e?", "f?"],
}
OTHER = {**GOOD, "intent": "returns.how", "answer": "Use My Orders."}


def drop(key):
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (drop("answer"), "missing field"),
        (drop("questions"), "missing field"),
        ({**GOOD, "intent": "returns.other", "questions": GOOD["questions"][:5]}, "expected 6 questions"),
        ({**GOOD, "intent": "returns.other", "questions": [*GOOD["questions"], "g?"]}, "expected 6 questions"),
        ({**GOOD, "intent": "returns.other", "role": "teach"}, "unknown role"),
        ({**GOOD, "intent": "returns.other", "lang": "fr"}, "unknown lang"),
        ({**GOOD, "intent": "returns.other", "topic": "weather"}, "unknown topic"),
        ({**GOOD, "intent": "Returns Window"}, "dotted lowercase"),
        ({**GOOD, "intent": "returns.other", "questions": ["a?"] * 6}, "repeat"),
        ({**GOOD, "intent": "returns.other", "extra": 1}, "unknown field"),
        (GOOD, "duplicate intent id"),
        ("not json", ""),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_record_names_the_line(tmp_path, second, message):
    path = tmp_path / "shop.jsonl"
    second_line = second if isinstance(second, str) else json.dumps(second)
    # A blank line before the bad one: line numbers are of the file, not of the records.
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(OTHER) + "\n" + second_line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"shop\.jsonl:4: .*{message}"):
        load_domain(path)


def test_good_file_loads(tmp_path):
    path = tmp_path / "shop.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(OTHER) + "\n", encoding="utf-8")
    loaded = load_domain(path)
    assert [i.intent for i in loaded] == ["returns.window", "returns.how"]
    assert loaded[0].questions == tuple(GOOD["questions"])
