"""Before the embedded broker stops, let its consumers read what they have not read yet.

The local broker keeps its log in memory, so events the sink and the stream processors have not consumed when it
stops are gone. `flywheel down` stops the services that bring new events in (the gateway first, whose spool keeps
what it could not deliver), waits until the sink and the streams are drained, stops the streams, waits for the sink
again (the streams' last windows and pairs), and only then stops the rest.

Drained means: from each group's committed offsets, a fetch finds nothing. Tansu's reported high watermark can be
short of the log's end (the base offset of the newest batch + 1), so the remaining records are read, not computed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable

from schemas import topology
from schemas.kafka import client_config

log = logging.getLogger(__name__)

FETCH_S = 1.0  # one look at what is left after the committed offsets


def group_topics(services: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Consumer group -> the topics it consumes, for the named services of the topology."""
    return {s.group: s.consumes for s in topology.SERVICES if s.name in services and s.group}


def unread(bootstrap: str, groups: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Records each group has not committed yet (a lower bound: one fetch's worth per partition)."""
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(bootstrap, {"log_level": 0}))
    metadata = admin.list_topics(timeout=10)
    left: dict[str, int] = {}
    for group, topics in groups.items():
        partitions = [
            TopicPartition(t, p) for t in topics if t in metadata.topics for p in metadata.topics[t].partitions
        ]
        if not partitions:
            continue
        request = [ConsumerGroupTopicPartitions(group, partitions)]
        committed = admin.list_consumer_group_offsets(request)[group].result(timeout=10).topic_partitions
        start = [TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)) for tp in committed]
        reader = Consumer(
            client_config(
                bootstrap,
                {
                    "group.id": f"flywheel-drain-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "log_level": 0,
                    "fetch.wait.max.ms": 100,
                },
            )
        )
        try:
            reader.assign(start)
            found, deadline = 0, time.monotonic() + FETCH_S
            while time.monotonic() < deadline:
                found += sum(1 for m in reader.consume(500, timeout=0.2) if m.error() is None)
            left[group] = found
        finally:
            reader.close()
    return left


def drain(bootstrap: str, services: Iterable[str], timeout: float) -> dict[str, int]:
    """Wait until the services' groups have nothing left to read, or `timeout`; what was left at the end."""
    groups = group_topics(services)
    deadline = time.monotonic() + timeout
    while True:
        try:
            left = unread(bootstrap, groups)
        except Exception as exc:  # the broker is gone: nothing more can be read from it
            log.warning("drain check failed", extra={"error": repr(exc)})
            return {group: -1 for group in groups}
        waiting = {g: n for g, n in left.items() if n}
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(1.0)
