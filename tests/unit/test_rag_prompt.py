"""The prompt a rag answer is built from (inference/gateway/rag.py): passages in the system message, numbered as the
model is asked to cite them; what is looked up; the Retrieval event of a lookup."""

from __future__ import annotations

from types import SimpleNamespace

from inference.gateway.rag import INSTRUCTION, PASSAGE_CHARS, Lookup, Passage, grounded, query_of, retrieval_event

RETURNS = Passage("en/returns.md", 2, "en/returns.md#0", 0.033, "Returns", "Items can be returned within 30 days.")
REFUNDS = Passage("en/refunds.md", 1, "en/refunds.md#1", 0.016, "Refunds", "Refunds take 5 business days.")


def test_without_passages_the_conversation_is_unchanged():
    messages = [{"role": "user", "content": "Hi"}]
    assert grounded(messages, []) is messages


def test_passages_become_a_numbered_system_message_before_the_conversation():
    messages = [{"role": "user", "content": "How long do I have to return it?"}]
    system, user = grounded(messages, [RETURNS, REFUNDS])
    assert user == messages[0]
    assert system["role"] == "system"
    assert system["content"].startswith(INSTRUCTION)
    first, second = system["content"].index("[1] Returns\n"), system["content"].index("[2] Refunds\n")
    assert first < system["content"].index(RETURNS.text) < second < system["content"].index(REFUNDS.text)


def test_the_clients_system_message_keeps_its_text_and_gets_the_passages():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Refunds?"},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "How long?"},
    ]
    out = grounded(messages, [REFUNDS])
    assert len(out) == 4 and out[1:] == messages[1:]
    assert out[0]["content"].startswith("Be brief.\n\n" + INSTRUCTION) and REFUNDS.text in out[0]["content"]


def test_a_long_passage_is_cut_in_the_prompt():
    long = Passage("en/a.md", 1, "en/a.md#0", 0.1, "A", "x" * (PASSAGE_CHARS + 500))
    (system, _) = grounded([{"role": "user", "content": "?"}], [long])
    assert "x" * PASSAGE_CHARS in system["content"] and "x" * (PASSAGE_CHARS + 1) not in system["content"]


def test_the_last_user_message_is_looked_up():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": ""},
    ]
    assert query_of(messages) == "second"
    assert query_of([{"role": "system", "content": "S"}]) == ""


def test_the_public_source_has_no_passage_text():
    assert RETURNS.source() == {
        "document": "en/returns.md",
        "version": 2,
        "passage": "en/returns.md#0",
        "score": 0.033,
        "title": "Returns",
    }


def test_a_failed_lookup_is_an_error_event_with_no_sources():
    turn = SimpleNamespace(session_id="s", message_id="m", user_id="u", alias="support", version="support@v2")
    event = retrieval_event(
        turn,
        "me@x.org asks",
        Lookup([], 5001.0, "retrieval took longer than 5.0 s"),
        3,
        "hybrid",
        lambda t: t.replace("me@x.org", "[EMAIL]"),
    )
    assert (event.status, event.error, event.sources, event.k) == ("error", "retrieval took longer than 5.0 s", [], 3)
    assert event.query == "[EMAIL] asks" and event.model_version == "support@v2"
    ok = retrieval_event(turn, "q", Lookup([RETURNS], 4.0), 3, "bm25", str)
    assert ok.status == "ok" and ok.error is None and ok.retriever == "bm25"
    assert [s.model_dump() for s in ok.sources] == [RETURNS.source()]


def test_a_lookup_the_gateway_stopped_waiting_for_is_skipped():
    import time

    from inference.gateway import rag

    assert rag._KB is None  # no index in this process: a lookup that ran would fail
    assert rag._search("How long is the return window?", 3, "hybrid", deadline=time.time() - 1) == []
