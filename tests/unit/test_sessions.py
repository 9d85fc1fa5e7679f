"""Session ids and history parsing without Redis."""

import re

import pytest

from inference.gateway.sessions import InvalidId, new_session_id, parse_history, resolve_session_id, valid_id


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("abc", True),
        ("a", True),
        ("0f3c2a9e4b7d4c1e9a6b5d8c7e2f1a0b", True),
        ("123e4567-e89b-12d3-a456-426614174000", True),
        ("user_42-chat", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        (None, False),
        ("has space", False),
        ("a:b", False),
        ("a*", False),
        ("a/b", False),
        ("a.b", False),
        ("ünïcode", False),
        ("line\nbreak", False),
        ("abc\n", False),
    ],
)
def test_valid_id(value, ok):
    assert valid_id(value) is ok


def test_new_session_ids_are_uuid4_hex_and_valid():
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) and valid_id(i) for i in ids)


@pytest.mark.parametrize("absent", [None, ""])
def test_resolve_session_id_generates_when_absent(absent):
    assert valid_id(resolve_session_id(absent))


def test_resolve_session_id_keeps_a_valid_one_and_refuses_a_bad_one():
    assert resolve_session_id("chat-1") == "chat-1"
    with pytest.raises(InvalidId):
        resolve_session_id("bad id")


def test_parse_history_accepts_bytes_and_str():
    raw = [b'{"role":"user","content":"hi"}', '{"role":"assistant","content":"hello"}']
    assert parse_history(raw) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
