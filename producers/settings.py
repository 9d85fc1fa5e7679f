"""Settings of the producer SDK: the bus address (from CommonSettings) and librdkafka tuning.

Every field reads `FLYWHEEL_<NAME>` (e.g. `FLYWHEEL_PRODUCER_LINGER_MS=10`) or `.env`.
Defaults were chosen with `bench/producer.py` against the embedded Tansu broker
(ChatResponse-sized events, idempotent producer): see the comments on each field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from schemas.kafka import client_config
from schemas.settings import CommonSettings


class ProducerSettings(CommonSettings):
    # Shown to the broker in logs and quotas.
    producer_client_id: str = Field("flywheel-producer", description="Kafka client.id")
    # How long librdkafka waits to fill a batch. 5 ms (librdkafka's default) was as fast as
    # larger values in the bench and keeps the per-event latency low.
    producer_linger_ms: float = Field(5.0, ge=0, description="linger.ms")
    # Messages per batch; the byte bound below is what limits ChatResponse-sized events.
    producer_batch_num_messages: int = Field(10_000, ge=1, description="batch.num.messages")
    producer_batch_size: int = Field(1_000_000, ge=1, description="batch.size (bytes)")
    # The local queue that absorbs bursts; when it is full, `send` blocks (see block_timeout).
    producer_queue_max_messages: int = Field(100_000, ge=1, description="queue.buffering.max.messages")
    producer_queue_max_kbytes: int = Field(262_144, ge=1, description="queue.buffering.max.kbytes")
    # none was the fastest against Tansu on loopback; lz4 pays off over a real network.
    producer_compression: Literal["none", "lz4", "zstd", "snappy", "gzip"] = Field(
        "none", description="compression.type"
    )
    # After this a message counts as failed (delivery callback with an error). librdkafka's default:
    # five minutes of retries rides out a broker restart.
    producer_message_timeout_ms: int = Field(300_000, ge=1, description="message.timeout.ms")
    # How long `send` waits for room in a full local queue before raising ProducerBackpressure.
    producer_block_timeout_s: float = Field(10.0, ge=0, description="max wait for queue room in send")
    # How long close() waits for the queue to drain.
    producer_flush_timeout_s: float = Field(30.0, ge=0, description="flush timeout on close")
    # Extra librdkafka properties (security, for example), as JSON in the environment.
    producer_config: dict[str, Any] = Field(default_factory=dict, description="extra librdkafka config")

    def kafka_config(self) -> dict[str, Any]:
        """The librdkafka configuration of an idempotent producer with these settings."""
        own = {
            "client.id": self.producer_client_id,
            "enable.idempotence": True,
            "linger.ms": self.producer_linger_ms,
            "batch.num.messages": self.producer_batch_num_messages,
            "batch.size": self.producer_batch_size,
            "queue.buffering.max.messages": self.producer_queue_max_messages,
            "queue.buffering.max.kbytes": self.producer_queue_max_kbytes,
            "compression.type": self.producer_compression,
            "message.timeout.ms": self.producer_message_timeout_ms,
        }
        return {**client_config(self.kafka_bootstrap, own), **self.producer_config}
