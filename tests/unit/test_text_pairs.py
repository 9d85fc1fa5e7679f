"""Code completions on the learning loop: a text prompt's feedback -> DPO pairs (streams) -> TRL rows (retrain)."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from retrain.dataset import Pair, PairsError, one_format, pairs_from_records, read_pairs_file, to_dataset
from retrain.pipeline import kept_rows, row
from schemas.events import ChatMessage, ChatRequest, ChatResponse, DPOPair, Feedback
from streams.pairing import NearDuplicateFilter
from streams.pairs import FeedbackJoiner, PairBuilder

PROMPT = "[code after the cursor]\n    return total\n\n[code before the cursor]\ndef total(xs):\n    total = "


def _turn(prompt: str, answer: str, prompt_format: str = "text") -> tuple[ChatRequest, ChatResponse]:
    mid = f"cmpl-{uuid.uuid4().hex}"
    route = "code" if prompt_format == "text" else "openai"
    req = ChatRequest(
        session_id="s",
        message_id=mid,
        model_alias="support",
        messages=[ChatMessage(role="user", content=prompt)],
        route=route,
        prompt_format=prompt_format,
    )
    resp = ChatResponse(
        session_id="s",
        message_id=mid,
        model_alias="support",
        model_version="tiny",
        content=answer,
        route=route,
        latency_ms=3,
    )
    return req, resp


class Loop:
    """One joiner and one builder, as the streams worker wires them (tables as dicts)."""

    def __init__(self, teacher=None):
        self.joiner = FeedbackJoiner({}, {}, 100, 10)
        self.builder = PairBuilder({}, "tiny", NearDuplicateFilter(0.9, 100), 1, 1000, teacher=teacher)

    def feedback(self, prompt, answer, verdict, correction=None, prompt_format="text"):
        req, resp = _turn(prompt, answer, prompt_format)
        self.joiner.on_request(req, 0, 0)
        self.joiner.on_response(resp, 0, 0)
        kind = "completion" if prompt_format == "text" else "rating"
        fb = Feedback(session_id="s", message_id=req.message_id, feedback=verdict, correction=correction, kind=kind)
        [joined] = self.joiner.on_feedback(fb, 0, 0, 0).joined
        return joined, asyncio.run(self.builder.on_joined(joined))


# -- streams ----------------------------------------------------------------------------------------------


def test_text_prompt_keeps_its_format_and_an_exact_question_key():
    loop = Loop()
    joined, _ = loop.feedback(PROMPT, "sum(xs)", "thumbs_up")
    assert joined.prompt_format == "text" and joined.messages == [{"role": "user", "content": PROMPT}]
    assert joined.question.startswith("text:") and len(joined.question) == len("text:") + 32
    other, _ = loop.feedback(PROMPT.replace("total = ", "total - "), "sum(xs)", "thumbs_up")
    assert other.question != joined.question  # code differing in punctuation is another prompt
    again, _ = loop.feedback(PROMPT, "0", "thumbs_up")
    assert again.question == joined.question
    chat, _ = loop.feedback("Where is my ORDER?", "On its way.", "thumbs_up", prompt_format="chat")
    assert (chat.prompt_format, chat.question) == ("chat", "where is my order")


def test_rejected_completion_with_a_correction_makes_a_text_pair():
    _, outcome = Loop().feedback(PROMPT, "0", "thumbs_down", correction="sum(xs)")
    pair = outcome.pair
    assert isinstance(pair, DPOPair) and pair.prompt_format == "text"
    assert (pair.source, pair.chosen, pair.rejected) == ("correction", "sum(xs)", "0")
    assert [(m.role, m.content) for m in pair.prompt] == [("user", PROMPT)]


def test_accepted_completion_is_chosen_for_a_rejected_one_of_the_same_prompt():
    async def teacher(messages):  # a chat model: never asked for a completion
        raise AssertionError("the teacher was asked for a completion")

    loop = Loop(teacher=teacher)
    _, accepted = loop.feedback(PROMPT, "sum(xs)", "thumbs_up")
    assert accepted.pair is None
    _, rejected = loop.feedback(PROMPT, "sum(xs) - 1", "thumbs_down")
    pair = rejected.pair
    assert (pair.source, pair.chosen, pair.rejected, pair.prompt_format) == (
        "thumbs_up",
        "sum(xs)",
        "sum(xs) - 1",
        "text",
    )
    # another prompt's accepted completion is not a chosen answer here; without one, the pair waits for annotation
    _, alone = loop.feedback(PROMPT + "0", "1", "thumbs_down")
    assert (alone.pair.source, alone.pair.chosen) == ("needs_chosen", None)


def test_completions_that_differ_only_in_punctuation_are_different_answers():
    loop = Loop()
    _, corrected = loop.feedback(PROMPT, "x + 1", "thumbs_down", correction="x - 1")
    assert corrected.pair is not None and corrected.dropped is None
    loop.feedback(PROMPT + "y", "a.b", "thumbs_up")
    _, rejected = loop.feedback(PROMPT + "y", "a_b", "thumbs_down")
    assert (rejected.pair.source, rejected.pair.chosen) == ("thumbs_up", "a.b")
    # the same text again (trailing whitespace aside) is no pair
    _, same = loop.feedback(PROMPT + "z", "x + 1\n", "thumbs_down", correction="x + 1")
    assert same.pair is None and same.dropped == "chosen equals rejected"


def test_chat_pairs_are_unchanged():
    loop = Loop()
    loop.feedback("How do I return it?", "Use the form.", "thumbs_up", prompt_format="chat")
    _, outcome = loop.feedback("how do i RETURN it", "Impossible.", "thumbs_down", prompt_format="chat")
    pair = outcome.pair
    assert (pair.source, pair.chosen, pair.prompt_format) == ("thumbs_up", "Use the form.", "chat")


# -- retrain: pairs -> TRL rows ------------------------------------------------------------------------------

TEXT = Pair("t1", ({"role": "user", "content": PROMPT},), "sum(xs)", "0", "text")
CHAT = Pair("c1", ({"role": "user", "content": "Do you gift wrap?"},), "Yes, for $4.", "No.")


def test_text_pair_trains_on_the_raw_prompt():
    assert TEXT.model_prompt == PROMPT and CHAT.model_prompt == CHAT.prompt
    assert TEXT.to_row() == {"pair_id": "t1", "prompt": PROMPT, "chosen": "sum(xs)", "rejected": "0"}
    assert TEXT.swapped() == Pair("t1", TEXT.prompt, "0", "sum(xs)", "text")
    assert row(TEXT.model_prompt, TEXT.chosen) == {"prompt": PROMPT, "completion": "sum(xs)"}
    assert to_dataset([TEXT]).to_list() == [TEXT.to_row()]
    assert to_dataset([CHAT]).to_list() == [CHAT.to_row()]  # chat only: conversational, as before


def test_prompt_format_is_read_from_events_store_rows_and_plain_records(tmp_path):
    event = DPOPair(
        pair_id="p-event",
        base_model="tiny",
        model_version="tiny",
        prompt=[ChatMessage(role="user", content=PROMPT)],
        chosen="sum(xs)",
        rejected="0",
        source="correction",
        session_id="s",
        message_id="cmpl-1",
        feedback_event_id=uuid.uuid4(),
        prompt_format="text",
    )
    records = [
        json.loads(event.model_dump_json()),
        {
            "pair_id": "p-store",
            "prompt": json.dumps([{"role": "user", "content": PROMPT}]),
            "chosen": "a",
            "rejected": "b",
            "prompt_format": "text",
        },  # fmt: skip
        {"prompt": "def f():\n    return ", "chosen": "1", "rejected": "2", "prompt_format": "text"},
        {"prompt": "def f():\n    return ", "chosen": "1", "rejected": "2"},  # no format: a chat question
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    pairs = read_pairs_file(path)
    assert [p.prompt_format for p in pairs] == ["text", "text", "text", "chat"]
    assert [p.model_prompt for p in pairs[:3]] == [PROMPT, PROMPT, "def f():\n    return "]
    assert pairs[2].pair_id != pairs[3].pair_id  # the same words as text and as chat are two pairs


@pytest.mark.parametrize(
    "record, words",
    [
        ({"prompt": "x", "chosen": "a", "rejected": "b", "prompt_format": "code"}, "not one of chat, text"),
        (
            {
                "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}],
                "chosen": "a",
                "rejected": "b",
                "prompt_format": "text",
            },  # fmt: skip
            "one user message",
        ),
    ],
)
def test_bad_prompt_formats_are_refused(record, words):
    with pytest.raises(PairsError, match=words):
        pairs_from_records([record])


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny model's kind of tokenizer (retrain/tiny_model.py): byte-level BPE, ChatML template, eos <|im_end|>."""
    from transformers import PreTrainedTokenizerFast

    from retrain.tiny_model import CHAT_TEMPLATE, EOS, IM_END, IM_START, _train_tokenizer, corpus

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(corpus(0, 60), 400),
        eos_token=IM_END,
        pad_token=EOS,
        additional_special_tokens=[IM_START, IM_END],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_a_mixed_job_renders_its_chat_pairs_as_text(tokenizer):
    with pytest.raises(PairsError, match="tokenizer"):
        to_dataset([TEXT, CHAT])
    rows = to_dataset([TEXT, CHAT], tokenizer).to_list()
    assert rows[0] == TEXT.to_row()
    chat = rows[1]
    assert chat["pair_id"] == "c1"
    assert chat["prompt"] == tokenizer.apply_chat_template(
        [{"role": "user", "content": "Do you gift wrap?"}], add_generation_prompt=True, tokenize=False
    )
    assert chat["prompt"].endswith("<|im_start|>assistant\n")
    # the answer ends with the end of turn once (TRL appends the eos only where it is missing)
    assert (chat["chosen"], chat["rejected"]) == ("Yes, for $4.<|im_end|>", "No.<|im_end|>")


def test_supervised_rows_of_a_mixed_job_share_one_format(tokenizer):
    rows = [row(TEXT.model_prompt, TEXT.chosen), row(CHAT.model_prompt, CHAT.chosen)]
    same = one_format(rows, tokenizer)
    assert same[0] == rows[0]
    assert isinstance(same[1]["prompt"], str) and same[1]["completion"] == "Yes, for $4.<|im_end|>"
    assert one_format(rows[1:]) == rows[1:]  # one format: left as it is, no tokenizer needed


def test_parent_rows_of_a_corrected_text_prompt_are_replaced():
    parent = [row(PROMPT, "0"), row(PROMPT + "x", "1"), row(CHAT.prompt, "No.")]
    assert kept_rows(parent, [TEXT]) == parent[1:]
    assert kept_rows(parent, [CHAT]) == parent[:2]
