"""`flywheel down`'s drain against the real broker and the store's sink (the session stack)."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from deploy.drain import drain, unread
from schemas.codec import encode
from schemas.events import Feedback
from schemas.topics import CHAT_FEEDBACK
from schemas.topology import SINK_GROUP
from tests.examples import examples

pytestmark = pytest.mark.integration


def _feedback(n: int) -> list[bytes]:
    event = next(e for e in examples() if isinstance(e, Feedback))
    return [encode(event.model_copy(update={"event_id": uuid.uuid4()})) for _ in range(n)]


def test_a_group_that_does_not_read_is_not_drained(kafka_bootstrap):
    """A group that committed offsets and then stopped: what came after is counted as unread."""
    group = f"drain-test-{uuid.uuid4().hex[:8]}"
    topic = CHAT_FEEDBACK.name
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    ends = []
    for partition in range(CHAT_FEEDBACK.partitions):
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        ends.append(TopicPartition(topic, partition, high))
    consumer.commit(offsets=ends, asynchronous=False)
    consumer.close()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for value in _feedback(20):
        producer.produce(topic, value)
    assert producer.flush(10) == 0

    left = unread(kafka_bootstrap, {group: (topic,)})
    assert left[group] >= 20
    assert drain(kafka_bootstrap, (), 1.0) == {}  # no service named: nothing to wait for
    from deploy import drain as module

    module_groups = module.group_topics
    try:
        module.group_topics = lambda services: {group: (topic,)}
        assert drain(kafka_bootstrap, ("any",), 2.0)[group] >= 20  # times out, says what is left
    finally:
        module.group_topics = module_groups


def test_the_sink_drains_what_was_produced(kafka_bootstrap, stack):
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 50})
    for value in _feedback(300):
        producer.produce(CHAT_FEEDBACK.name, value)
    assert producer.flush(10) == 0
    assert drain(kafka_bootstrap, ("store",), 60.0) == {}
    assert unread(kafka_bootstrap, {SINK_GROUP: (CHAT_FEEDBACK.name,)})[SINK_GROUP] == 0
