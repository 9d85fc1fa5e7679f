"""Request parsing at the gateway's edge: OpenAI-compatible (extras kept) and our own APIs (strict)."""

from __future__ import annotations

import json

import orjson
import pytest
from pydantic import ValidationError

from inference.gateway.protocol import (
    ChatCompletionRequest,
    FeedbackRequest,
    GatewayError,
    SessionChatRequest,
    describe_validation_errors,
    error_body,
    new_message_id,
    parse_request,
)


def test_declared_fields_and_allowed_extras_are_forwarded_others_named():
    req = ChatCompletionRequest.model_validate(
        {
            "model": "support",
            "messages": [{"role": "user", "content": "hi", "name": "bob"}],
            "top_p": 0.9,
            "logit_bias": {"1": 2},
            "top_k": 5,
            "stub_delay_ms": 5,
            "best_of": 3,
        }
    )
    assert req.unknown_fields() == ["best_of", "stub_delay_ms"]
    assert req.unknown_fields({"stub_delay_ms"}) == ["best_of"]
    body = req.upstream_body("support@v2")
    assert body["model"] == "support@v2"
    assert body["top_p"] == 0.9 and body["logit_bias"] == {"1": 2} and body["top_k"] == 5
    assert body["messages"][0] == {"role": "user", "content": "hi", "name": "bob"}
    assert "stream_options" not in body


def test_stream_requests_usage_upstream():
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    )
    assert not req.wants_usage
    assert req.upstream_body("v")["stream_options"] == {"include_usage": True}
    req2 = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "x"}],
        }
    )
    assert req2.wants_usage


def test_content_parts_to_text():
    req = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None},
            ]
        }
    )
    assert [m.text() for m in req.messages] == ["ab", ""]
    assert req.model is None


@pytest.mark.parametrize(
    "body, field",
    [
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages.0.role"),
    ],
)
def test_bad_completion_requests_name_the_field(body, field):
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    message, first = describe_validation_errors(info.value.errors())
    assert first == field
    assert field in message


@pytest.mark.parametrize(
    "body",
    [
        {"message": ""},
        {"message": "hi", "unknown": 1},  # our own API is strict
        {"message": "hi", "temperature": -1},
        {},
    ],
)
def test_bad_session_requests(body):
    with pytest.raises(ValidationError):
        SessionChatRequest.model_validate(body)


def test_session_request_defaults():
    req = SessionChatRequest.model_validate({"message": "hi"})
    assert req.session_id is None and req.max_tokens is None


@pytest.mark.parametrize(
    "body, ok",
    [
        ({"session_id": "s", "message_id": "m", "feedback": "thumbs_up"}, True),
        ({"session_id": "s", "message_id": "m", "feedback": "thumbs_down", "comment": "no", "correction": "yes"}, True),
        ({"session_id": "s", "message_id": "m", "feedback": "meh"}, False),
        ({"session_id": "s", "feedback": "thumbs_up"}, False),
        ({"session_id": "s", "message_id": "m", "feedback": "thumbs_up", "correction": ""}, False),
    ],
)
def test_feedback_requests(body, ok):
    if ok:
        FeedbackRequest.model_validate(body)
    else:
        with pytest.raises(ValidationError):
            FeedbackRequest.model_validate(body)


def test_error_body_is_openai_style():
    body = orjson.loads(error_body(429, "slow down", "rate_limit_exceeded"))
    assert body == {
        "error": {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit_exceeded", "param": None}
    }
    err = GatewayError(404, "nope")
    assert orjson.loads(err.body())["error"]["type"] == "not_found_error"


def test_message_ids_are_unique_and_key_safe():
    ids = {new_message_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("chatcmpl-") and len(i) == 41 and i.replace("-", "").isalnum() for i in ids)


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (b"", "<body>", "Invalid JSON"),
        (b'{"message": "hi"', "<body>", "Invalid JSON"),
        (b"[1, 2]", "<body>", "should be an object"),
        (b'{"session_id": "s"}', "message", "Field required"),
        (b'{"message": "hi", "temperature": "hot"}', "temperature", "valid number"),
        (b'{"message": "hi", "extra": 1}', "extra", "Extra inputs"),
    ],
)
def test_parse_request_answers_422_naming_the_field(raw, field, words):
    with pytest.raises(GatewayError) as err:
        parse_request(SessionChatRequest, raw)
    assert err.value.status == 422 and err.value.code == "invalid_request"
    assert err.value.param == field and words in err.value.message


def test_parse_request_parses_and_validates_in_one_pass():
    req = parse_request(ChatCompletionRequest, b'{"messages": [{"role": "user", "content": "hi"}], "best_of": 3}')
    assert req.messages[0].text() == "hi" and req.model_extra == {"best_of": 3}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"n": 2}, "n"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [{"role": "user", "content": "x" * 32_001}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "x"}] * 257}, "messages"),
    ],
)
def test_openai_requests_are_bounded(extra, field):
    raw = orjson.dumps({"messages": [{"role": "user", "content": "hi"}], **extra})
    with pytest.raises(GatewayError) as err:
        parse_request(ChatCompletionRequest, raw)
    assert err.value.status == 422 and err.value.param.startswith(field), err.value.param


def test_upstream_failures_tell_clients_no_worker_address():
    from inference.gateway.upstream import (
        UpstreamFailure,
        UpstreamHTTPError,
        UpstreamTimeout,
        UpstreamUnavailable,
        public_message,
    )

    worker = "http://127.0.0.1:8000"
    cases = [
        (UpstreamUnavailable(f"every worker is ejected (tried {worker})", worker), 503, "retry later"),
        (UpstreamTimeout(f"no answer from {worker} in 60 s", worker), 504, "timeout"),
        (UpstreamHTTPError(400, f"{worker}: maximum context length is 2048 tokens", worker), 400, "context length"),
        (UpstreamFailure(f"connection reset by {worker}", worker), 502, "request id r-1"),
    ]
    for exc, status, words in cases:
        message = public_message(exc, status, "r-1")
        assert words in message and "127.0.0.1" not in message, message


@pytest.mark.parametrize(
    "extra",
    [
        {"seed": 2**64},
        {"response_format": {"type": "json_schema", "n": [1, -(2**70)]}},
        {"messages": [{"role": "user", "content": "hi", "tool_calls": [{"id": 2**63}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "x": 2**65}]}]},
    ],
)
def test_integers_beyond_64_bits_are_refused_before_anything_is_sent(extra):
    """The worker's JSON (and the gateway's encoder) carry 64-bit integers: a larger one is the client's error."""
    body = {"model": "support", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(GatewayError) as refused:
        parse_request(ChatCompletionRequest, json.dumps(body).encode())  # the standard library writes big integers
    assert refused.value.status == 422 and (
        "64 bits" in str(refused.value) or "9223372036854775807" in str(refused.value)
    )


def test_integers_within_64_bits_pass_and_encode():
    body = {"messages": [{"role": "user", "content": "hi", "tool_calls": [{"id": -(2**63)}]}], "seed": 2**63 - 1}
    request = parse_request(ChatCompletionRequest, json.dumps(body).encode())
    assert orjson.loads(orjson.dumps(request.upstream_body("tiny")))["seed"] == 2**63 - 1
