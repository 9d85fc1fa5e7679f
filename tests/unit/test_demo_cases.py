"""The demo's cases (deploy/demo_cases.py): their questions, the code gaps' variants, the rag figures."""

from __future__ import annotations

import ast

import pytest

from deploy.demo_cases import (
    CodeQA,
    case_questions,
    retrieval_summary,
    without_docstrings,
)
from deploy.demo_render import markdown
from deploy.demo_traffic import Exchange
from inference.retrieval.examples import labelled_documents
from retrain.demo.code import load_snippets
from schemas.events import ChatMessage


def test_support_and_rag_ask_the_same_shop_questions():
    support, rag = case_questions("support"), case_questions("rag", asked=3)
    assert support.asked == rag.asked and support.other == rag.other and support.unseen == rag.unseen
    assert {qa.intent for qa in support.asked} == {qa.intent for qa in support.unseen}
    assert not {qa.question for qa in support.asked} & {qa.question for qa in support.unseen}


def test_every_other_question_of_the_rag_case_but_the_refusals_is_labelled_with_its_page():
    labels = labelled_documents()
    other = case_questions("rag").other
    answerable = [qa for qa in other if "refusal." not in qa.intent]
    assert answerable and all(qa.question in labels for qa in answerable)
    assert not any(qa.question in labels for qa in other if "refusal." in qa.intent)  # no page for them
    assert {labels[qa.question][:3] for qa in answerable} == {"en/", "zh/"}


def test_code_gaps_are_the_snippets_split_in_halves():
    snippets = {s.id: s for s in load_snippets()}
    code = case_questions("code")
    assert all(isinstance(qa, CodeQA) for qa in code.asked + code.other + code.unseen)
    assert [qa.intent for qa in code.asked + code.other] == list(snippets)
    assert len(code.asked) - len(code.other) in (0, 1)
    for qa in code.asked + code.other:
        s = snippets[qa.intent]
        assert qa.question + qa.answer + qa.suffix == s.source and qa.lang == "python"


def test_code_variants_leave_out_the_docstring_and_stay_valid_python():
    code = case_questions("code")
    corrected = {qa.intent: qa for qa in code.asked}
    assert code.unseen, "most snippets have a one-line docstring"
    for variant in code.unseen:
        gap = corrected[variant.intent]
        assert variant.question != gap.question and '"""' not in variant.question
        assert (variant.answer, variant.suffix) == (gap.answer, gap.suffix)
        ast.parse(variant.question + variant.answer + variant.suffix)


def test_without_docstrings_keeps_other_strings():
    code = 'def f():\n    """One line."""\n    s = """not a docstring"""\n    return s\n'
    assert without_docstrings(code) == 'def f():\n    s = """not a docstring"""\n    return s\n'
    assert without_docstrings("x = 1\n") == "x = 1\n"


def test_an_unknown_case_is_refused():
    with pytest.raises(ValueError, match="one of support, rag, code"):
        case_questions("translation")


class _Pair:
    def __init__(self, roles):
        self.prompt = [ChatMessage(role=r, content="x") for r in roles]


def _ex(question, status=200, sources=()):
    ex = Exchange(0.0, "u", question, "i", "other", "ref", status=status)
    ex.sources = list(sources)
    return ex


def test_retrieval_summary_counts_sources_hits_and_pairs_with_passages():
    labels = {"q1": "en/returns.md", "q2": "en/shipping.md"}
    exchanges = [
        _ex("q1", sources=["en/returns.md", "en/refunds.md"]),  # labelled, hit
        _ex("q2", sources=["en/returns.md"]),  # labelled, missed
        _ex("loop question"),  # not labelled, no source
        _ex("q1", status=503),  # not answered: not counted
    ]
    pairs = [_Pair(["system", "user"]), _Pair(["user"])]
    s = retrieval_summary(exchanges, pairs, labels)
    assert (s["answered"], s["with_sources"], s["labelled"], s["hits"]) == (3, 2, 2, 1)
    assert s["source_share"] == pytest.approx(2 / 3) and s["hit_rate"] == 0.5
    assert (s["pairs"], s["pairs_with_passages"]) == (2, 1)
    assert retrieval_summary([], [], labels)["hit_rate"] is None


def test_the_report_shows_the_rag_figures_and_names_the_code_variants():
    report = {
        "run_id": "r",
        "case": "rag",
        "window": {"start": "a", "end": "b", "where": "1"},
        "outcome": {
            "outcome": None,
            "version": None,
            "job_id": None,
            "pairs": 0,
            "reason": "",
            "note": "",
            "timed_out": True,
        },
        "corrections": [],
        "unseen": {"learned": 0, "asked": 0, "share": None, "learned_at": 0.8, "rows": []},
        "retrieval": retrieval_summary([_ex("q1", sources=["en/returns.md"])], [], {"q1": "en/returns.md"}),
        "stages": None,
        "versions": [],
        "decision": None,
    }
    md = markdown(report)
    assert "## Answers with sources (rag)" in md and "| 1 | 1 (100.0%) | 1 | 1 (100.0%) | 0/0 |" in md
    assert "Unseen paraphrases" in md
    assert "Gaps without their docstring" in markdown({**report, "case": "code", "retrieval": None})
