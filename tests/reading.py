"""Reading topics in tests by partition assignment: no consumer-group join (about 3 s each on the embedded
broker), nothing committed, every partition from its first offset."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def assign_all(consumer: Consumer, topics: Iterable[str], timeout: float = 10.0) -> None:
    """Assign `consumer` every partition of `topics`, from the beginning (the topics must exist)."""
    topics = list(topics)
    metadata = consumer.list_topics(timeout=timeout)
    missing = [t for t in topics if t not in metadata.topics]
    assert not missing, f"no such topics on the broker: {missing}"
    consumer.assign(
        [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in sorted(metadata.topics[t].partitions)]
    )
