"""The broker's epoch: an id of the log the offsets belong to.

Offsets only mean something within one log. The embedded Tansu keeps its log in memory, so after
`flywheel down` / `flywheel up` offset 0 of chat.responses is another event than before, while the store
(chDB on disk) still holds the sink's ledger and deduplication tokens, which are built from offsets.
Keyed by the epoch as well, the old ranges and tokens no longer match the new log's batches (which the
store would otherwise drop as copies of old ones).

The epoch is the first record of a one-partition topic; whoever finds the topic empty writes a fresh
uuid, and everyone reads the record at offset 0, so concurrent writers agree. A broker that keeps its log
(Kafka) keeps its epoch.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from schemas.kafka import client_config
from schemas.topics import ensure_topics

EPOCH_TOPIC = "flywheel.broker-epoch"


def broker_epoch(bootstrap: str, timeout: float = 30.0) -> str:
    """This broker log's epoch (32 hex digits), created on first use."""
    ensure_topics(bootstrap, [NewTopic(EPOCH_TOPIC, num_partitions=1)], timeout)
    consumer = Consumer(client_config(bootstrap, {"group.id": "flywheel-epoch", "enable.auto.commit": False}))
    try:
        tp = TopicPartition(EPOCH_TOPIC, 0)
        _low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
        if high <= 0:
            producer = Producer(client_config(bootstrap, {"acks": "all"}))
            producer.produce(EPOCH_TOPIC, uuid.uuid4().hex.encode())
            if producer.flush(timeout) != 0:
                raise RuntimeError(f"could not write the broker epoch to {EPOCH_TOPIC} at {bootstrap}")
        consumer.assign([TopicPartition(EPOCH_TOPIC, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                return msg.value().decode()
        raise TimeoutError(f"no broker epoch in {EPOCH_TOPIC} at {bootstrap} after {timeout:g} s")
    finally:
        consumer.close()
