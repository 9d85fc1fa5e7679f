import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from schemas.codec import decode, encode
from schemas.errors import EventError, InvalidField, NotJSON, UnknownEventType, UnsupportedSchemaVersion
from schemas.events import EVENT_TYPES, ChatResponse, Feedback
from schemas.export import export_json_schemas
from tests.examples import examples

EXAMPLES = examples()


def test_every_event_type_has_an_example():
    assert {type(e) for e in EXAMPLES} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.event_type)
def test_round_trip(event):
    data = encode(event)
    assert decode(data) == event
    assert decode(data, expected=type(event)) == event


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.event_type)
def test_events_are_frozen(event):
    with pytest.raises(ValidationError, match="frozen"):
        event.producer = "someone-else"


def test_envelope_defaults():
    a, b = EXAMPLES[0], EXAMPLES[1]
    assert isinstance(a.event_id, uuid.UUID) and a.event_id != b.event_id
    assert a.occurred_at.utcoffset() == timedelta(0)
    assert a.schema_version == 1


def test_occurred_at_is_normalized_to_utc():
    plus2 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    e = Feedback(session_id="s", message_id="m", feedback="thumbs_up", occurred_at=plus2)
    assert e.occurred_at.tzinfo is not None and e.occurred_at.utcoffset() == timedelta(0)
    assert e.occurred_at.hour == 10


def _good() -> dict:
    return json.loads(encode(EXAMPLES[1]))  # a ChatResponse


def _with(**changes) -> bytes:
    d = _good()
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d).encode()


_DROP = object()

BAD = [
    ("not json", b"{oops", NotJSON, None),
    ("empty", b"", NotJSON, None),
    ("json array", b"[1, 2]", NotJSON, None),
    ("json string", b'"hello"', NotJSON, None),
    ("unknown event_type", _with(event_type="chat_reply"), UnknownEventType, "event_type"),
    ("missing event_type", _with(event_type=_DROP), InvalidField, "event_type"),
    ("schema_version 2", _with(schema_version=2), UnsupportedSchemaVersion, "schema_version"),
    ("schema_version text", _with(schema_version="one"), UnsupportedSchemaVersion, "schema_version"),
    ("missing session_id", _with(session_id=_DROP), InvalidField, "session_id"),
    ("empty session_id", _with(session_id=""), InvalidField, "session_id"),
    ("negative latency", _with(latency_ms=-1), InvalidField, "latency_ms"),
    ("latency as text", _with(latency_ms="fast"), InvalidField, "latency_ms"),
    ("bad status", _with(status="meh"), InvalidField, "status"),
    ("unknown field", _with(colour="red"), InvalidField, "colour"),
    ("naive timestamp", _with(occurred_at="2026-01-01T00:00:00"), InvalidField, "occurred_at"),
    ("bad uuid", _with(event_id="not-a-uuid"), InvalidField, "event_id"),
]


@pytest.mark.parametrize("data, error, field", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_any_type(data, error, field):
    with pytest.raises(error) as info:
        decode(data)
    assert isinstance(info.value, EventError)
    assert info.value.field == field
    if field:
        assert field in str(info.value)


@pytest.mark.parametrize("data, error, field", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_expected_type(data, error, field):
    if field == "event_type" and error is InvalidField:
        pytest.skip("with an expected type, event_type may be omitted")
    with pytest.raises(error) as info:
        decode(data, expected=ChatResponse)
    assert info.value.field == field


def test_expected_type_mismatch_names_both():
    with pytest.raises(UnknownEventType, match="chat_response"):
        decode(encode(EXAMPLES[2]), expected=ChatResponse)


def test_feedback_values():
    with pytest.raises(EventError):
        decode(json.dumps({"event_type": "feedback", "session_id": "s", "message_id": "m", "feedback": "meh"}))


def test_export_json_schemas(tmp_path):
    paths = export_json_schemas(tmp_path)
    assert len(paths) == len(EVENT_TYPES)
    schema = json.loads((tmp_path / "chat_response.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert "latency_ms" in schema["required"]


def test_an_event_is_bounded_in_its_text_and_its_messages():
    from schemas.events import MAX_MESSAGES, MAX_TEXT_CHARS, ChatRequest

    ok = {"session_id": "s", "message_id": "m", "model_alias": "support"}
    ChatRequest(**ok, messages=[{"role": "user", "content": "x" * MAX_TEXT_CHARS}] * 2)
    with pytest.raises(ValidationError, match="at most 100000 characters"):
        ChatRequest(**ok, messages=[{"role": "user", "content": "x" * (MAX_TEXT_CHARS + 1)}])
    with pytest.raises(ValidationError, match="at most 512 items"):
        ChatRequest(**ok, messages=[{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1))
    raw = encode(ChatResponse(**ok, model_version="v1", latency_ms=1.0))
    big = raw.replace(b'"content":""', b'"content":"' + b"x" * (MAX_TEXT_CHARS + 1) + b'"')
    assert len(big) > MAX_TEXT_CHARS
    with pytest.raises(InvalidField) as err:  # what the sink dead-letters, with the field named
        decode(big, ChatResponse)
    assert "content" in str(err.value)
