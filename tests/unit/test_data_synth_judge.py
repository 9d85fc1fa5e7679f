"""The pure parts of `flywheel data synth|judge|eval`: verdict parsing, position swapping, stable ids, reply parsing,
near-duplicates, backoff; and the client's retry loop on an in-memory transport (httpx.MockTransport: the openai SDK
and the loop run for real, only the network is absent). The commands themselves run against the gateway in
tests/integration/test_data_synth_judge_endpoints.py."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from retrain.data.client import ChatClient, GaveUp, RequestRefused, backoff_delay, retry_after_seconds
from retrain.data.dedup import NearDuplicates
from retrain.data.judge import Judgement, combine, judge, judge_messages, pair_event, pair_record, parse_verdict
from retrain.data.synth import (
    OPERATIONS,
    clean_rewrite,
    evol_operation,
    language,
    parse_questions,
    stable_id,
)
from schemas.events import DPOPair

# -- the judge's verdict --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, winner, reason",
    [
        ('{"winner": "A", "reason": "more precise"}', "A", "more precise"),
        ('Sure!\n```json\n{"winner": "B", "reason": "it answers"}\n```\nHope this helps.', "B", "it answers"),
        ('{"winner": "tie", "reason": "both fine"}', "tie", "both fine"),
        ('{"winner": "a", "reason": "x"}', "A", "x"),
        ('{"winner": "Answer B", "reason": "x"}', "B", "x"),
        ('{"winner": "[[A]]", "reason": "x"}', "A", "x"),
        ('{"winner": "平局", "reason": "差不多"}', "tie", "差不多"),
        ('{"winner": "draw"}', "tie", ""),
        (
            'I weigh {both} answers. {"winner": "B", "reason": "uses {braces} in text"} end',
            "B",
            "uses {braces} in text",
        ),
        ('{"verdict": {"winner": "A", "reason": "nested"}}', "A", "nested"),
        ('{"score": 3} then {"winner": "B", "reason": "second object"}', "B", "second object"),
        ("{'winner': 'A', 'reason': 'python dict'}", "A", None),  # not JSON: read from the text
        ("Winner: B, because it is complete.", "B", None),
        ("winner：A", "A", None),  # a full-width colon
        ("My final verdict is [[B]].", "B", None),
        ("[[C]]", "tie", None),
        ('{"winner": "C"}', "tie", ""),
        ('{"winner": "both"}', None, ""),
        ('{"winner": 1, "reason": "x"}', None, "x"),
        ("echo model=tiny messages=2 last=[Question]", None, None),
        ("", None, None),
    ],
)
def test_parse_verdict(reply, winner, reason):
    verdict = parse_verdict(reply)
    assert verdict.winner == winner
    if reason is not None:
        assert verdict.reason == reason


def test_a_verdict_without_json_keeps_the_text_as_reason():
    assert parse_verdict("  Winner: A. It is shorter.  ").reason == "Winner: A. It is shorter."


@pytest.mark.parametrize(
    "first, swapped, outcome",
    [
        ("A", "B", "a"),  # answer_a first as A, then as B: it won both times
        ("B", "A", "b"),
        ("A", "A", "tie"),  # the judge always picks the first place: position bias, cancelled
        ("B", "B", "tie"),
        ("tie", "tie", "tie"),
        ("A", "tie", "tie"),
        ("tie", "A", "tie"),
        (None, "A", "invalid"),
        ("B", None, "invalid"),
    ],
)
def test_combine_cancels_position_bias(first, swapped, outcome):
    assert combine(first, swapped) == outcome


def test_judge_messages_put_the_answers_in_the_asked_places():
    messages = judge_messages("Where is my order?", "first answer", "second answer")
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert user.index("[Answer A]\nfirst answer\n") < user.index("[Answer B]\nsecond answer\n")
    assert '"winner"' in messages[0]["content"] and "JSON" in messages[0]["content"]
    assert "公正" in judge_messages("我的订单在哪里？", "a", "b")[0]["content"]  # a Chinese question, a Chinese judge


class FakeJudge:
    """The ChatClient interface with a judge that prefers `prefers` wherever it stands, or always the first place."""

    def __init__(self, prefers: str | None = None):
        self.prefers = prefers
        self.asked: list[tuple[str, str]] = []

    async def chat(self, model, messages, **options):
        user = messages[-1]["content"]
        first = user.split("[Answer A]\n")[1].split("\n[End of answer A]")[0]
        second = user.split("[Answer B]\n")[1].split("\n[End of answer B]")[0]
        self.asked.append((first, second))
        if self.prefers is None:
            return '{"winner": "A", "reason": "first"}'
        return '{"winner": "%s", "reason": "prefers it"}' % ("A" if first == self.prefers else "B")


@pytest.mark.parametrize("prefers, outcome", [("long answer", "b"), ("short", "a"), (None, "tie")])
def test_judge_asks_both_ways_round(prefers, outcome):
    client = FakeJudge(prefers)
    result = asyncio.run(judge(client, "judge", "q?", "short", "long answer", 0.0, 64))
    assert client.asked == [("short", "long answer"), ("long answer", "short")]
    assert result.outcome == outcome


def test_identical_answers_are_a_tie_without_asking():
    client = FakeJudge("x")
    result = asyncio.run(judge(client, "judge", "q?", "Yes, we do.", "yes,  we do.", 0.0, 64))
    assert result.outcome == "tie" and client.asked == []


# -- pairs and their ids --------------------------------------------------------------------------------------------


def test_pair_record_orients_chosen_and_rejected():
    won_by_b = Judgement("Where is my order?", "short", "a long answer", "b", "B is complete", "A is complete")
    record = pair_record(won_by_b, "judge-model")
    assert (record["chosen"], record["rejected"], record["winner"]) == ("a long answer", "short", "b")
    assert record["prompt"] == [{"role": "user", "content": "Where is my order?"}]
    assert (record["reason"], record["reason_swapped"], record["judge"]) == (
        "B is complete",
        "A is complete",
        "judge-model",
    )
    assert pair_record(Judgement("q", "x", "y", "a"), "j")["chosen"] == "x"
    for outcome in ("tie", "invalid", "failed"):
        assert pair_record(Judgement("q", "x", "y", outcome), "j") is None


def test_pair_ids_are_stable_and_the_event_validates():
    judgement = Judgement("Do you ship to Norway?", "Yes, within 5 days.", "No.", "a")
    record = pair_record(judgement, "j")
    assert record["id"] == pair_record(judgement, "other judge")["id"]  # the content names the pair
    assert (
        record["id"] != pair_record(Judgement("Do you ship to Norway?", "No.", "Yes, within 5 days.", "a"), "j")["id"]
    )
    event = pair_event(record, "smollm2", "support@v3")
    again = pair_event(record, "smollm2", "support@v3")
    assert isinstance(event, DPOPair) and event.source == "judge" and event.session_id == "judge"
    assert (event.event_id, event.feedback_event_id, event.message_id) == (
        again.event_id,
        again.feedback_event_id,
        again.message_id,
    )
    assert event.pair_id == record["id"] and event.message_id == f"judge-{record['id']}"
    assert (event.base_model, event.model_version) == ("smollm2", "support@v3")
    assert [(m.role, m.content) for m in event.prompt] == [("user", "Do you ship to Norway?")]
    assert (event.chosen, event.rejected) == ("Yes, within 5 days.", "No.")
    assert pair_event(record, "smollm2", "support@v4").event_id != event.event_id


def test_synth_ids_are_stable_and_distinct():
    assert stable_id("evol", "q", "0") == stable_id("evol", "q", "0")
    ids = {stable_id(m, s, i) for m in ("evol", "paraphrase") for s in ("q1", "q2") for i in ("0", "1")}
    assert len(ids) == 8
    assert stable_id("ab", "c") != stable_id("a", "bc")  # parts are separated, not concatenated
    assert len(stable_id("x")) == 16


def test_evol_operations_are_a_stable_choice_among_those_allowed():
    chosen = {evol_operation(f"question {i}", r, OPERATIONS) for i in range(40) for r in range(2)}
    assert chosen == set(OPERATIONS)  # all four are used
    assert evol_operation("q", 1, OPERATIONS) == evol_operation("q", 1, OPERATIONS)
    assert {evol_operation(f"q{i}", 0, ("deepen",)) for i in range(5)} == {"deepen"}


# -- the model's replies ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, questions",
    [
        ("1. Where is my order?\n2. Can I pay by card?", ["Where is my order?", "Can I pay by card?"]),
        (
            "- Where is my order?\n* Can I pay by card?\n• Do you ship?",
            ["Where is my order?", "Can I pay by card?", "Do you ship?"],
        ),
        ("Q1: Is it in stock?\n\nQuestion 2) Is it new?", ["Is it in stock?", "Is it new?"]),
        ('1) "Quoted?"\n2、退货要多久？\n3：发票怎么开？', ["Quoted?", "退货要多久？", "发票怎么开？"]),
        ("问题1：可以改地址吗？\n问题2：可以改地址吗？", ["可以改地址吗？"]),  # repeats dropped
        ("Is 2.5 kg the weight?", ["Is 2.5 kg the weight?"]),  # a number is not a list mark
        ("", []),
    ],
)
def test_parse_questions(reply, questions):
    assert parse_questions(reply) == questions


@pytest.mark.parametrize(
    "reply, question",
    [
        ("Paraphrase: How long is the warranty?", "How long is the warranty?"),
        ('"How long is the warranty?"', "How long is the warranty?"),
        ("改写后的问题：保修期多长？", "保修期多长？"),
        ("  「保修期多长？」 ", "保修期多长？"),
        ("How long is the warranty?", "How long is the warranty?"),
    ],
)
def test_clean_rewrite(reply, question):
    assert clean_rewrite(reply) == question


def test_prompt_language_follows_the_text():
    assert (language("Where is my order?"), language("我的订单在哪里？"), language("iPhone 保修")) == ("en", "zh", "zh")


def test_near_duplicates_are_refused_and_distinct_questions_kept():
    seen = NearDuplicates(["How long does a refund take to reach my card?"])
    assert not seen.add("How long does a refund take to reach my card")  # punctuation only
    assert not seen.add("how long does a REFUND take to reach my card?")  # case only
    assert seen.add("Can I change the delivery address after ordering?")
    assert seen.add("请问退款一般需要多久才能到账？")
    assert not seen.add("请问退款一般需要多久才能到账")
    assert seen.add("我可以修改收货地址吗？")
    assert not seen.add("   ")


# -- retries --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt, low, high", [(0, 0.25, 0.5), (1, 0.5, 1.0), (3, 2.0, 4.0), (10, 15.0, 30.0)])
def test_backoff_grows_with_jitter_up_to_the_cap(attempt, low, high):
    delays = [backoff_delay(attempt, 0.5, 30.0, None, random.Random(seed)) for seed in range(50)]
    assert all(low <= d <= high for d in delays)
    assert len(set(delays)) > 40  # jittered: clients that failed together come back apart


def test_retry_after_is_a_floor_with_a_little_spread():
    delays = [backoff_delay(0, 0.5, 30.0, 5.0, random.Random(seed)) for seed in range(50)]
    assert all(5.0 <= d <= 5.5 for d in delays) and len(set(delays)) > 40
    assert backoff_delay(6, 0.5, 30.0, 1.0, random.Random(1)) >= 15.0  # the backoff when it is the longer wait


NOW = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "headers, seconds",
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # OpenAI's finer header wins
        ({"retry-after": format_datetime(NOW + timedelta(seconds=20), usegmt=True)}, 20.0),
        ({"retry-after": format_datetime(NOW - timedelta(seconds=20), usegmt=True)}, 0.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_seconds(headers, seconds):
    assert retry_after_seconds(headers, now=NOW.timestamp()) == seconds


def completion(text: str) -> httpx.Response:
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return httpx.Response(
        200, json={"id": "c1", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}
    )


def client_on(responses: list, max_retries: int = 3) -> tuple[ChatClient, list[float], list[httpx.Request]]:
    """A ChatClient whose endpoint answers `responses` in turn (an exception is raised as the transport's)."""
    requests: list[httpx.Request] = []
    sleeps: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        response = responses[min(len(requests), len(responses)) - 1]
        if isinstance(response, Exception):
            raise response
        return response

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    client = ChatClient("http://endpoint/v1", "key", max_retries=max_retries, http_client=http, sleep=sleep)
    return client, sleeps, requests


def ask(client: ChatClient) -> str:
    async def run() -> str:
        async with client:
            return await client.chat("m", [{"role": "user", "content": "hi"}])

    return asyncio.run(run())


def test_transient_failures_are_retried_and_retry_after_honoured():
    error = {"error": {"message": "slow down"}}
    client, sleeps, requests = client_on(
        [
            httpx.Response(503, json=error),
            httpx.ConnectError("refused"),
            httpx.Response(429, json=error, headers={"Retry-After": "7"}),
            completion("fine"),
        ]
    )
    assert ask(client) == "fine"
    assert len(requests) == 4 and (client.requests, client.retries) == (4, 3)
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0 and 7.0 <= sleeps[2] <= 7.5
    assert requests[0].headers["authorization"] == "Bearer key"


def test_a_refused_request_is_not_retried():
    client, sleeps, requests = client_on([httpx.Response(401, json={"error": {"message": "invalid API key"}})])
    with pytest.raises(RequestRefused, match="HTTP 401: invalid API key"):
        ask(client)
    assert len(requests) == 1 and sleeps == []


def test_the_client_gives_up_after_its_retries():
    client, sleeps, requests = client_on([httpx.Response(502, json={"error": {"message": "bad gateway"}})], 2)
    with pytest.raises(GaveUp, match="HTTP 502 after 3 attempts"):
        ask(client)
    assert len(requests) == 3 and len(sleeps) == 2


def test_a_retry_after_beyond_the_cap_ends_the_retries():
    client, sleeps, _ = client_on([httpx.Response(429, json={}, headers={"Retry-After": "3600"})])
    with pytest.raises(GaveUp, match="asked to wait 3600 s"):
        ask(client)
    assert sleeps == []
