"""The producer SDK against a real broker: volume, keys, order, replay, asyncio, failures made visible.

Uses the shared `kafka_bootstrap` / `consumer_config` fixtures (tests/conftest.py, the local stack).
The failure tests need no broker: they point the producer at a port where nothing listens.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer

from deploy.ports import free_ports
from producers import (
    AsyncChatEventProducer,
    ChatEventProducer,
    DeliveryError,
    DeliveryFailed,
    ProducerBackpressure,
    ProducerSettings,
    replay_file,
)
from producers.cli import produce_command
from schemas.codec import decode, encode
from schemas.errors import EventError
from schemas.events import ChatMessage, ChatRequest, ChatResponse, Event, Feedback
from schemas.topics import BY_EVENT, CHAT_RESPONSES, create_topics
from tests.reading import assign_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bootstrap(kafka_bootstrap: str) -> str:
    create_topics(kafka_bootstrap)  # idempotent; producing first would let Tansu auto-create them
    return kafka_bootstrap


@pytest.fixture
def settings(bootstrap: str) -> ProducerSettings:
    return ProducerSettings(kafka_bootstrap=bootstrap)


@pytest.fixture
def dead_settings() -> ProducerSettings:
    """Settings for a broker that is down: delivery fails after one second."""
    (port,) = free_ports(1)
    return ProducerSettings(kafka_bootstrap=f"127.0.0.1:{port}", producer_message_timeout_ms=1000)


def consume(config: dict, topics: list[str], keep: Callable[[Event], bool], expected: int, timeout: float = 60):
    """Read `topics` from the start until `expected` events pass `keep`; return (key, event) in order."""
    consumer = Consumer(config)
    assign_all(consumer, topics)
    found: list[tuple[str, Event]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=2000, timeout=1.0):
                assert msg.error() is None, msg.error()
                try:
                    event = decode(msg.value())
                except EventError:  # other tests' deliberately bad events share the stack's topics
                    continue
                if keep(event):
                    found.append((msg.key().decode(), event))
    finally:
        consumer.close()
    return found


def response(session: str, seq: int) -> ChatResponse:
    return ChatResponse(
        session_id=session,
        message_id=f"{seq:06d}",
        model_alias="support",
        model_version="support-v1",
        content="x" * 200,
        latency_ms=float(seq),
    )


def test_ten_thousand_events_arrive_once_keyed_and_in_session_order(settings, consumer_config):
    prefix = f"s-{uuid.uuid4().hex[:8]}"
    events = [response(f"{prefix}-{i % 100:03d}", i // 100) for i in range(10_000)]
    with ChatEventProducer(settings) as producer:
        for event in events:
            producer.send(event)
        stats = producer.flush()
    assert (stats.sent, stats.delivered, stats.failed, stats.pending) == (10_000, 10_000, 0, 0)

    found = consume(consumer_config, [CHAT_RESPONSES.name], lambda e: e.session_id.startswith(prefix), 10_000)
    assert len(found) == 10_000  # no duplicates, nothing missing
    assert {e.event_id for _, e in found} == {e.event_id for e in events}
    assert all(key == event.session_id for key, event in found)
    by_session: dict[str, list[int]] = defaultdict(list)
    for _, event in found:
        by_session[event.session_id].append(int(event.message_id))
    assert len(by_session) == 100
    assert all(seqs == list(range(100)) for seqs in by_session.values())


def good_events(tag: str) -> list[Event]:
    return [
        ChatRequest(
            session_id=f"{tag}-a",
            message_id="m1",
            model_alias="support",
            messages=[ChatMessage(role="user", content="Where is my order?")],
        ),
        response(f"{tag}-a", 1),
        Feedback(session_id=f"{tag}-a", message_id="000001", feedback="thumbs_down", comment="wrong"),
        response(f"{tag}-b", 1),
    ]


def write_mixed_file(path, events: list[Event]) -> list[int]:
    """Good events with bad and blank lines between them; returns the bad lines' numbers."""
    good = [encode(e).decode() for e in events]
    feedback = json.loads(good[2])
    lines = [
        good[0],  # 1
        "{this is not json",  # 2
        "",  # 3 (blank, skipped)
        good[1],  # 4
        json.dumps({**feedback, "event_type": "nope"}),  # 5
        json.dumps({**feedback, "schema_version": 99}),  # 6
        good[2],  # 7
        json.dumps({**feedback, "colour": "red"}),  # 8
        good[3],  # 9
    ]
    path.write_text("\n".join(lines) + "\n")
    return [2, 5, 6, 8]


def test_replay_sends_every_good_line_and_reports_every_bad_one(settings, consumer_config, tmp_path):
    tag = f"r-{uuid.uuid4().hex[:8]}"
    events = good_events(tag)
    path = tmp_path / "mixed.jsonl"
    bad_lines = write_mixed_file(path, events)

    with ChatEventProducer(settings) as producer:
        result = replay_file(path, producer)

    assert (result.sent, result.invalid, result.failed) == (4, 4, 0)
    assert [n for n, _ in result.errors] == bad_lines
    reasons = dict(result.errors)
    assert "not a JSON object" in reasons[2]
    assert "unknown event_type 'nope'" in reasons[5]
    assert "unsupported schema_version 99" in reasons[6]
    assert "colour" in reasons[8]

    topics = sorted({BY_EVENT[type(e)].name for e in events})
    found = consume(consumer_config, topics, lambda e: getattr(e, "session_id", "").startswith(tag), len(events))
    assert sorted(str(e.event_id) for _, e in found) == sorted(str(e.event_id) for e in events)


def test_produce_command_prints_counts_and_fails_on_bad_lines(bootstrap, tmp_path):
    path = tmp_path / "mixed.jsonl"
    write_mixed_file(path, good_events(f"c-{uuid.uuid4().hex[:8]}"))
    result = CliRunner().invoke(produce_command, [str(path), "--bootstrap", bootstrap])
    assert result.exit_code == 1, result.output
    assert "sent 4, invalid 4" in result.output
    assert "line 5" in result.output

    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(encode(e).decode() for e in good_events(f"c-{uuid.uuid4().hex[:8]}")))
    result = CliRunner().invoke(produce_command, [str(good), "--bootstrap", bootstrap])
    assert result.exit_code == 0, result.output
    assert "sent 4, invalid 0" in result.output


def test_async_send_delivers_without_blocking_the_loop(settings):
    prefix = f"a-{uuid.uuid4().hex[:8]}"

    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        tick_task = asyncio.create_task(ticker())
        async with AsyncChatEventProducer(settings) as producer:
            deliveries = await asyncio.gather(*(producer.send(response(f"{prefix}-{i % 10}", i)) for i in range(1000)))
            one = await producer.send_dict(
                {"event_type": "feedback", "session_id": prefix, "message_id": "m", "feedback": "thumbs_up"}
            )
            with pytest.raises(EventError):
                await producer.send_json(b'{"event_type": "feedback"}')
            stats = producer.stats
        done.set()
        await tick_task
        return deliveries, one, stats, ticks

    deliveries, one, stats, ticks = asyncio.run(main())
    assert len(deliveries) == 1000
    assert all(d.topic == CHAT_RESPONSES.name and d.offset >= 0 for d in deliveries)
    assert len({(d.partition, d.offset) for d in deliveries}) == 1000
    assert one.topic == "chat.feedback"
    assert (stats.sent, stats.delivered, stats.failed) == (1001, 1001, 0)
    assert ticks > 5  # the loop kept running while deliveries were awaited


def test_delivery_failures_are_counted_reported_and_raised_on_close(dead_settings):
    errors = []
    producer = ChatEventProducer(dead_settings, on_error=errors.append)
    for i in range(5):
        producer.send(response("s-dead", i))
    stats = producer.flush(timeout=10)
    assert (stats.sent, stats.delivered, stats.failed, stats.pending) == (5, 0, 5, 0)
    assert producer.failed == 5 and not stats.ok
    assert [e.code for e in errors] == ["_MSG_TIMED_OUT"] * 5
    assert stats.last_errors[0].topic == CHAT_RESPONSES.name and stats.last_errors[0].key == "s-dead"
    with pytest.raises(DeliveryFailed) as raised:
        producer.close()
    assert raised.value.stats.failed == 5

    with pytest.raises(DeliveryFailed):
        with ChatEventProducer(dead_settings) as producer:
            producer.send(response("s-dead", 0))


def test_async_delivery_failure_raises_delivery_error(dead_settings):
    async def main():
        producer = AsyncChatEventProducer(dead_settings)
        with pytest.raises(DeliveryError) as raised:
            await producer.send(response("s-dead", 0))
        assert raised.value.code == "_MSG_TIMED_OUT"
        stats = await producer.aclose(strict=False)
        assert (stats.failed, stats.delivered) == (1, 0)

    asyncio.run(main())


def test_a_full_queue_raises_backpressure_instead_of_dropping(dead_settings):
    settings = dead_settings.model_copy(update={"producer_queue_max_messages": 5, "producer_block_timeout_s": 0.3})
    producer = ChatEventProducer(settings)
    for i in range(5):
        producer.send(response("s-full", i))
    start = time.monotonic()
    with pytest.raises(ProducerBackpressure):
        producer.send(response("s-full", 5))
    assert 0.3 <= time.monotonic() - start < 2
    assert producer.stats.sent == 5  # the refused event was not counted as sent
    stats = producer.close(timeout=10, strict=False)
    assert (stats.sent, stats.failed, stats.pending) == (5, 5, 0)


def test_bad_input_raises_event_error_and_sends_nothing(dead_settings):
    producer = ChatEventProducer(dead_settings)
    with pytest.raises(EventError, match="missing field 'event_type'"):
        producer.send_dict({"session_id": "s"})
    with pytest.raises(EventError, match="not a JSON object"):
        producer.send_json(b"{nope")
    with pytest.raises(EventError, match="not JSON-serializable"):
        producer.send_dict({"event_type": "feedback", "blob": object()})
    assert producer.stats.sent == 0
    producer.close(timeout=1)
