"""Replay input parsing and routing, without a broker: bad lines are reported with number and reason."""

from __future__ import annotations

import json

import pytest

from producers.errors import UnroutableEvent
from producers.replay import parse_lines
from producers.routing import route, static_routes
from producers.settings import ProducerSettings
from schemas.codec import encode
from schemas.errors import EventError
from schemas.events import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    DeadLetter,
    Deployment,
    Feedback,
    InferenceLatency,
)
from schemas.topics import BY_EVENT

FEEDBACK = {"event_type": "feedback", "session_id": "s1", "message_id": "m1", "feedback": "thumbs_up"}


def line(**changes) -> str:
    data = {**FEEDBACK, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...})


# (line, kind, field, words in the reason)
BAD_LINES = [
    ("{not json", "not_json", None, "not a JSON object"),
    ("[1, 2]", "not_json", None, "not a JSON object"),
    (
        line(event_type="chat_nonsense"),
        "unknown_event_type",
        "event_type",
        "unknown event_type 'chat_nonsense'",
    ),
    (line(event_type=...), "invalid_field", "event_type", "missing field 'event_type'"),
    (line(message_id=...), "invalid_field", "message_id", "Field required"),
    (line(feedback=3), "invalid_field", "feedback", "'thumbs_up' or 'thumbs_down'"),
    (line(session_id=["s"]), "invalid_field", "session_id", "valid string"),
    (
        line(schema_version=99),
        "unsupported_schema_version",
        "schema_version",
        "unsupported schema_version 99",
    ),
    (line(colour="red"), "invalid_field", "colour", "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(
    ("text", "kind", "field", "reason"), BAD_LINES, ids=[b[1] + ":" + str(b[2]) for b in BAD_LINES]
)
def test_a_bad_line_is_reported_with_its_reason(text, kind, field, reason):
    [(number, error)] = list(parse_lines([text]))
    assert number == 1
    assert isinstance(error, EventError)
    assert (error.kind, error.field) == (kind, field)
    assert reason in str(error)


def test_line_numbers_count_every_line_and_blank_lines_are_skipped():
    good = encode(Feedback(session_id="s1", message_id="m1", feedback="thumbs_down"))
    lines = [good, b"\n", b"{oops\n", b"   \n", good + b"\n", line(schema_version=99).encode(), b""]
    parsed = list(parse_lines(lines))
    assert [n for n, _ in parsed] == [1, 3, 5, 6]
    assert [type(item).__name__ for _, item in parsed] == [
        "Feedback",
        "NotJSON",
        "Feedback",
        "UnsupportedSchemaVersion",
    ]


EVENTS = [
    ChatRequest(session_id="s1", message_id="m1", model_alias="a", messages=[ChatMessage(role="user", content="hi")]),
    ChatResponse(session_id="s2", message_id="m2", model_alias="a", model_version="v3", latency_ms=1.0),
    Feedback(session_id="s3", message_id="m3", feedback="thumbs_up"),
    InferenceLatency(model_version="v4", session_id="s4", message_id="m4", latency_ms=2.0),
    Deployment(alias="support", action="promoted", version="v5"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.event_type)
def test_events_go_to_their_registry_topic_and_key(event):
    topic = BY_EVENT[type(event)]
    assert route(event) == (topic.name, topic.key(event).decode())
    assert static_routes()[type(event)] == (topic.name, topic.key_field)


def test_dead_letters_go_to_their_source_topics_dlq():
    letter = DeadLetter(source_topic="chat.feedback", key="s1", payload="{}", error_type="x", error="y")
    assert route(letter) == ("chat.feedback.dlq", "s1")
    with pytest.raises(UnroutableEvent):
        route(letter.model_copy(update={"source_topic": "nowhere"}))


def test_settings_give_an_idempotent_producer_and_read_the_environment(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_PRODUCER_LINGER_MS", "20")
    monkeypatch.setenv("FLYWHEEL_PRODUCER_CONFIG", '{"acks": "all"}')
    config = ProducerSettings(kafka_bootstrap="broker:9092").kafka_config()
    assert config["enable.idempotence"] is True
    assert config["bootstrap.servers"] == "broker:9092"
    assert config["linger.ms"] == 20
    assert config["acks"] == "all"
