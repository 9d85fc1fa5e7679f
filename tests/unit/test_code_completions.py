"""The code assistant at the gateway's edge: fill-in-the-middle prompts, the completion routes' request validation,
an editor's accept/reject as feedback, and the demo snippets."""

from __future__ import annotations

import ast
import json

import orjson
import pytest

from inference.gateway.fim import PLAIN, QWEN, STARCODER, detect_template, resolve_template, vocabulary
from inference.gateway.protocol import (
    COMPLETION_ID_PREFIX,
    CodeCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    GatewayError,
    feedback_verdict,
    new_completion_id,
    new_message_id,
    parse_request,
)
from retrain.demo.code import load_snippets

# -- fill-in-the-middle prompts -----------------------------------------------------------------------------


def test_token_templates_frame_prefix_and_suffix():
    assert STARCODER.prompt("def f(x):\n", "\n    return y\n") == (
        "<fim_prefix>def f(x):\n<fim_suffix>\n    return y\n<fim_middle>"
    )
    assert QWEN.prompt("a = ", "") == "<|fim_prefix|>a = <|fim_suffix|><|fim_middle|>"  # end of file: empty suffix
    assert STARCODER.prompt("print(", None) == "print("  # no suffix: a plain completion
    assert STARCODER.prompt("x", "y", language="python", path="a.py") == "<fim_prefix>x<fim_suffix>y<fim_middle>"


def test_plain_template_puts_the_code_before_the_gap_last():
    assert PLAIN.prompt("def f(x):\n    y = ", "\n    return y\n") == (
        "[code after the cursor]\n\n    return y\n\n[code before the cursor]\ndef f(x):\n    y = "
    )
    assert PLAIN.prompt("import os\n", "", language="python", path="src/app.py") == (
        "[language: python]\n[path: src/app.py]\nimport os\n"
    )
    assert PLAIN.prompt("x = ", "", language="python").startswith("[language: python]\nx = ")
    assert PLAIN.prompt("Once upon a time", None) == "Once upon a time"


@pytest.mark.parametrize(
    "tokens, expected",
    [
        ({"<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|endoftext|>"}, STARCODER),
        ({"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"}, QWEN),
        ({"<fim_prefix>", "<fim_suffix>"}, PLAIN),  # one token missing: no template
        ({"<|im_start|>", "<|im_end|>", "<repo_name>", "<filename>"}, PLAIN),  # SmolLM2's special tokens
        (set(), PLAIN),
    ],
)
def test_detect_template(tokens, expected):
    assert detect_template(tokens) == expected


def test_vocabulary_from_each_kind_of_tokenizer_file(tmp_path):
    fast = tmp_path / "fast"
    fast.mkdir()
    (fast / "tokenizer.json").write_text(
        json.dumps(
            {
                "added_tokens": [{"id": 0, "content": "<|endoftext|>"}, {"id": 1, "content": "<fim_prefix>"}],
                "model": {"type": "BPE", "vocab": {"<fim_suffix>": 2, "<fim_middle>": 3, "def": 4}},
            }
        )
    )
    assert {"<fim_prefix>", "<fim_suffix>", "<fim_middle>", "def"} <= vocabulary(fast)
    assert resolve_template("auto", fast) == STARCODER
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "vocab.json").write_text(json.dumps({"hello": 0, "<|fim_prefix|>": 1}))
    (slow / "added_tokens.json").write_text(json.dumps({"<|fim_suffix|>": 2}))
    (slow / "tokenizer_config.json").write_text(
        json.dumps({"added_tokens_decoder": {"3": {"content": "<|fim_middle|>"}}, "model_max_length": 512})
    )
    assert vocabulary(slow) == {"hello", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"}
    assert resolve_template("auto", slow) == QWEN
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    assert resolve_template("auto", tmp_path / "broken") == PLAIN


def test_named_templates_win_and_a_missing_model_dir_means_plain(tmp_path):
    assert resolve_template("starcoder", tmp_path / "absent") == STARCODER
    assert resolve_template("plain", tmp_path) == PLAIN
    assert resolve_template("auto", tmp_path / "absent") == PLAIN


def test_tiny_model_tokenizer_has_no_fim_tokens():
    """The tiny test model's tokenizer (retrain/tiny_model.py) knows only its chat tokens: the plain template."""
    from retrain.tiny_model import SPECIAL_TOKENS, _train_tokenizer, corpus

    raw = _train_tokenizer(corpus(0, 60), 400)
    tokens = set(raw.get_vocab())
    assert set(SPECIAL_TOKENS) <= tokens
    assert detect_template(tokens) == PLAIN


# -- request validation ------------------------------------------------------------------------------------


def _error(model, body: dict) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        parse_request(model, orjson.dumps(body))
    assert info.value.status == 422
    error = orjson.loads(info.value.body())["error"]
    assert error["type"] == "invalid_request_error" and error["message"] == info.value.message
    return info.value


def test_completion_request_forwards_the_built_prompt_never_the_suffix():
    req = parse_request(
        CompletionRequest,
        orjson.dumps(
            {
                "model": "support",
                "prompt": ["def f():\n"],
                "suffix": "\n",
                "max_tokens": 8,
                "temperature": 0,
                "stop": ["\n\n"],
                "stream": True,
                "user": "alice",
                "n": 1,
                "echo": False,
                "logprobs": None,
            }
        ),
    )
    assert req.prompt == "def f():\n" and req.unknown_fields() == [] and not req.wants_usage
    body = req.upstream_body("tiny@v2", "<built>")
    assert body == {
        "model": "tiny@v2",
        "prompt": "<built>",
        "max_tokens": 8,
        "temperature": 0,
        "stop": ["\n\n"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_completion_request_keeps_unknown_fields_for_the_route_to_refuse():
    req = CompletionRequest.model_validate({"prompt": "x", "best_of": 3, "stub_delay_ms": 5})
    assert req.unknown_fields() == ["best_of", "stub_delay_ms"]
    assert req.unknown_fields({"stub_delay_ms"}) == ["best_of"]
    assert req.upstream_body("v", "x")["stub_delay_ms"] == 5


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({}, "prompt", "Field required"),
        ({"prompt": [1, 2, 3]}, "prompt", "token ids are not supported"),
        ({"prompt": [[1, 2]]}, "prompt", "token ids are not supported"),
        ({"prompt": ["a", "b"]}, "prompt", "one prompt per request"),
        ({"prompt": []}, "prompt", "one prompt per request"),
        ({"prompt": "x", "echo": True}, "echo", "echo is not supported"),
        ({"prompt": "x", "logprobs": 2}, "logprobs", "logprobs are not returned"),
        ({"prompt": "x", "n": 2}, "n", "1"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"prompt": "x", "temperature": 3}, "temperature", "less than or equal to 2"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"prompt": "x" * 32_001}, "prompt", "at most 32000"),
        ({"prompt": "x", "suffix": 5}, "suffix", "valid string"),
    ],
)
def test_completion_request_errors_name_the_field(body, field, words):
    err = _error(CompletionRequest, body)
    assert err.param.split(".")[0] == field
    assert field in err.message and words in err.message, err.message


def test_code_completion_request_defaults():
    req = parse_request(CodeCompletionRequest, b'{"prefix": "def f():\\n"}')
    assert (req.suffix, req.max_tokens, req.temperature, req.session_id, req.language) == ("", 64, 0.2, None, None)


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"suffix": "x"}, "prefix", "Field required"),
        ({"prefix": "", "suffix": ""}, "<body>", "prefix and suffix are both empty"),
        ({"prefix": "x", "cursor": 3}, "cursor", "Extra inputs are not permitted"),
        ({"prefix": "x", "max_tokens": 5000}, "max_tokens", "less than or equal to 4096"),
        ({"prefix": "x", "language": "py thon"}, "language", "pattern"),
        ({"prefix": "x", "path": "a.py\n[code before the cursor]"}, "path", "pattern"),
        ({"prefix": "x", "temperature": -1}, "temperature", "greater than or equal to 0"),
        ({"prefix": "x", "session_id": ""}, "session_id", "at least 1"),
    ],
)
def test_code_completion_request_errors_name_the_field(body, field, words):
    err = _error(CodeCompletionRequest, body)
    assert err.param == field
    assert field in err.message and words in err.message, err.message


# -- accept / reject as feedback ---------------------------------------------------------------------------

CHAT_ID = new_message_id()
COMPLETION_ID = new_completion_id()


@pytest.mark.parametrize(
    "feedback, message_id, verdict, kind",
    [
        ("accepted", COMPLETION_ID, "thumbs_up", "completion"),
        ("rejected", COMPLETION_ID, "thumbs_down", "completion"),
        ("thumbs_up", COMPLETION_ID, "thumbs_up", "completion"),
        ("thumbs_down", COMPLETION_ID, "thumbs_down", "completion"),
        ("thumbs_up", CHAT_ID, "thumbs_up", "rating"),
        ("thumbs_down", CHAT_ID, "thumbs_down", "rating"),
    ],
    ids=["accepted", "rejected", "up-completion", "down-completion", "up-chat", "down-chat"],  # stable across runs
)
def test_feedback_verdict_and_kind(feedback, message_id, verdict, kind):
    req = FeedbackRequest(session_id="s", message_id=message_id, feedback=feedback, correction="    return x\n")
    assert feedback_verdict(req) == (verdict, kind)


@pytest.mark.parametrize("feedback", ["accepted", "rejected"])
def test_accept_or_reject_of_a_chat_answer_is_refused(feedback):
    with pytest.raises(GatewayError) as info:
        feedback_verdict(FeedbackRequest(session_id="s", message_id=CHAT_ID, feedback=feedback))
    err = info.value
    assert (err.status, err.code, err.param) == (422, "invalid_feedback", "feedback")
    assert "code completions" in err.message and "thumbs_up or thumbs_down" in err.message


def test_completion_ids_are_message_ids_of_their_own_prefix():
    ids = {new_completion_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith(COMPLETION_ID_PREFIX) and len(i) == len(COMPLETION_ID_PREFIX) + 32 for i in ids)
    assert not CHAT_ID.startswith(COMPLETION_ID_PREFIX)


def test_feedback_word_outside_both_scales_is_refused():
    err = _error(FeedbackRequest, {"session_id": "s", "message_id": COMPLETION_ID, "feedback": "meh"})
    assert err.param == "feedback" and "accepted" in err.message


# -- the demo snippets ---------------------------------------------------------------------------------------


def test_snippets_are_valid_python_with_a_middle_to_write():
    snippets = load_snippets()
    assert 25 <= len(snippets) <= 40
    assert len({s.id for s in snippets}) == len(snippets)
    for s in snippets:
        ast.parse(s.source, filename=s.id)
        assert s.prefix and s.middle.strip(), s.id
        assert s.middle.count("\n") <= 4, s.id  # one line or a short block
        assert s.prefix.endswith("\n") and s.middle.endswith("\n"), s.id  # the gap starts and ends at a line
