"""An event the broker will never take (over its message size) goes to its topic's DLQ with the reason, and never
jams the spool: the records around it in a spool segment are delivered, the segment is done."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from confluent_kafka import Consumer

from inference.gateway.publisher import EventPublisher
from inference.gateway.settings import GatewaySettings
from schemas.codec import decode
from schemas.events import ChatMessage, ChatRequest, DeadLetter
from schemas.topics import CHAT_REQUESTS
from tests.reading import assign_all

pytestmark = pytest.mark.integration


def request(content: str, messages: int = 1) -> ChatRequest:
    sid = f"s{uuid.uuid4().hex[:12]}"
    return ChatRequest(
        session_id=sid,
        message_id=f"m{uuid.uuid4().hex[:12]}",
        model_alias="support",
        messages=[ChatMessage(role="user", content=content)] * messages,
    )


def read(consumer: Consumer, want, timeout: float = 30.0) -> list:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline and not want(seen):
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            seen.append((msg.topic(), msg.value()))
    return seen


def test_an_oversized_event_is_dead_lettered_and_the_spool_drains(stack, tmp_path, consumer_config):
    settings = GatewaySettings(kafka_bootstrap=stack.kafka_bootstrap, data_dir=tmp_path)
    consumer = Consumer(consumer_config)
    assign_all(consumer, [CHAT_REQUESTS.name, CHAT_REQUESTS.dlq])
    small = [request(f"small {i}") for i in range(3)]
    big = request("x" * 50_000, messages=30)  # within the event's bounds, over librdkafka's 1,000,000 bytes

    async def run():
        publisher = EventPublisher(settings)
        await publisher.start()
        try:
            publisher.publish(big)  # refused at once: dead-lettered, not spooled
            assert not publisher.spool.has_records()
            # a spool segment from an outage, with an oversized record between two others
            for event in (small[0], big, small[1]):
                value = event.__pydantic_serializer__.to_json(event)
                publisher.spool.append(CHAT_REQUESTS.name, event.session_id, value)
            publisher.spool.flush()
            await asyncio.to_thread(publisher._replay)
            assert not publisher.spool.has_records()  # the segment is done: nothing jams
            publisher.publish(small[2])
        finally:
            await publisher.close()

    asyncio.run(run())
    wanted = {e.message_id for e in small}

    def complete(seen):
        ids = {decode(v).message_id for t, v in seen if t == CHAT_REQUESTS.name}
        return wanted <= ids and sum(t == CHAT_REQUESTS.dlq for t, _ in seen) >= 1

    seen = read(consumer, complete)
    consumer.close()
    assert complete(seen), seen[:3]
    letters = [decode(v, DeadLetter) for t, v in seen if t == CHAT_REQUESTS.dlq]
    assert all(x.error_type == "undeliverable" and "MSG_SIZE_TOO_LARGE" in x.error for x in letters), letters
    assert all(big.message_id in x.payload and len(x.payload) <= 65_536 for x in letters)
    # the same event dead-lettered twice (published, then replayed) has one dead-letter id
    assert len({x.event_id for x in letters}) == 1
