"""The demo's cases: what its simulated users ask, through which route, and what the report adds (pure).

- `support`: the shop's customer-service questions (retrain.demo) through /v1/chat/completions. Users correct the
  loop intents' wrong answers; the other intents' test questions are the rest of the traffic; after the rollout the
  corrected questions and the loop intents' unseen paraphrases are asked again.
- `rag`: the same questions to an alias marked rag (FLYWHEEL_GATEWAY_RAG_ALIASES) over the bundled shop knowledge
  base (inference.retrieval.examples). The loop intents' facts are in no page, so users teach them, and their pairs
  keep the passages in the prompt; the report adds the share of answers with a source, of the other questions whose
  sources hold the page that answers them, and of the run's pairs that carry passages.
- `code`: an editor plugin at the gaps of the bundled Python snippets (retrain.demo.code) through /code/complete.
  A completion within ROUGE-L 0.7 of the snippet's code is accepted, any other rejected, with the snippet's code as
  the correction for the first half of the snippets (the second half is the rest of the traffic); after the rollout
  the corrected gaps are asked again, and with the prefix's one-line docstrings left out (their unseen variant).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from retrain.demo import QA

CASES = ("support", "rag", "code")


@dataclass(frozen=True)
class CodeQA(QA):
    """A snippet's gap as the demo asks it: `question` is the code before the cursor, `answer` the code to write
    there, `intent` the snippet's id."""

    suffix: str = ""


@dataclass(frozen=True)
class CaseQuestions:
    asked: list[QA]  # asked in the traffic; wrong answers to the corrected ones among them get corrections
    other: list[QA]  # the rest of the traffic: never corrected
    unseen: list[QA]  # asked only after the rollout: other wordings of the corrected questions


def case_questions(case: str, asked: int = 3) -> CaseQuestions:
    """The questions of `case` ("support", "rag" or "code"); `asked`: questions asked per loop intent."""
    if case in ("support", "rag"):
        from retrain.demo import load_domain, loop_sets, sft_splits

        intents = load_domain()
        seen, unseen = loop_sets(intents, asked)
        return CaseQuestions(seen, sft_splits(intents)["test"], unseen)
    if case == "code":
        from retrain.demo.code import load_snippets

        gaps = [CodeQA(s.prefix, s.middle, s.id, "python", s.suffix) for s in load_snippets()]
        half = (len(gaps) + 1) // 2
        corrected = gaps[:half]
        return CaseQuestions(corrected, gaps[half:], code_variants(corrected))
    raise ValueError(f"unknown demo case {case!r}: one of {', '.join(CASES)}")


def without_docstrings(code: str) -> str:
    """`code` less its one-line docstrings (a line that is a triple-quoted string and nothing else)."""
    lines = code.splitlines(keepends=True)
    return "".join(line for line in lines if not _one_line_docstring(line.strip()))


def _one_line_docstring(line: str) -> bool:
    return len(line) >= 6 and line[:3] == line[-3:] and line[:3] in ('"""', "'''")


def code_variants(gaps: Sequence[CodeQA]) -> list[CodeQA]:
    """The gaps whose prefix has a one-line docstring, asked without it."""
    out = []
    for gap in gaps:
        prefix = without_docstrings(gap.question)
        if prefix != gap.question:
            out.append(CodeQA(prefix, gap.answer, gap.intent, gap.lang, gap.suffix))
    return out


# -- the rag case's figures ------------------------------------------------------------------------------------------


def retrieval_summary(exchanges: Sequence, pairs: Sequence, labels: dict[str, str]) -> dict:
    """The rag case's figures over the run's answered exchanges: the share with a source, the share of labelled
    questions whose sources hold their page (hit rate), and how many of the run's pairs carry passages (a system
    message in their prompt)."""
    answered = [e for e in exchanges if e.status == 200]
    labelled = [e for e in answered if e.question in labels]
    hits = sum(labels[e.question] in e.sources for e in labelled)
    with_sources = sum(bool(e.sources) for e in answered)
    with_passages = sum(any(m.role == "system" for m in p.prompt) for p in pairs)
    return {
        "answered": len(answered),
        "with_sources": with_sources,
        "source_share": with_sources / len(answered) if answered else None,
        "labelled": len(labelled),
        "hits": hits,
        "hit_rate": hits / len(labelled) if labelled else None,
        "pairs": len(pairs),
        "pairs_with_passages": with_passages,
    }
