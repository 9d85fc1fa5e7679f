"""Shared set-up of the pipeline benchmark: a result row, what every section gets (`Env`), ChatResponse-sized
events, preloading a topic, the consumer settings every reader uses, and the sink's batch sizes.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Producer

from consumers.settings import SinkSettings

_SINK = SinkSettings()  # the raw pipeline and the decode baseline consume (and insert) in batches of the sink's sizes
BATCH, CONSUME = _SINK.sink_batch_rows, _SINK.sink_consume_batch


@dataclass(frozen=True)
class Row:
    """One line of the result table."""

    metric: str
    value: float
    unit: str
    goal: str = ""
    ok: bool | None = None


@dataclass
class Env:
    """What every section gets: the broker, the store client, the options."""

    bootstrap: str
    data_dir: Path
    client: object  # clickhouse-connect client on the bench's own chDB
    events: int
    repeats: int
    stream_events: int = 100_000
    feedbacks: int = 200
    feedback_rate: float = 20.0
    external_broker: bool = False


# -- shared set-up ---------------------------------------------------------------------------


def chat_response_dicts(
    n: int, tag: str, model_version: str = "support-v7", start: float | None = None, step_s: float = 0.0
) -> list[dict]:
    """ChatResponse-sized events (about 600 bytes of JSON each) with a full envelope; event i occurred at
    start + i * step_s (default: all now)."""
    start = time.time() if start is None else start
    text = "Your order ships in 3-5 business days; returns are free within 30 days of delivery. " * 2
    return [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "chat_response",
            "schema_version": 1,
            "occurred_at": datetime.fromtimestamp(start + i * step_s, UTC).isoformat(),
            "producer": tag,
            "session_id": f"session-{i % 1000:05d}",
            "message_id": f"msg-{i:08d}",
            "user_id": f"user-{i % 97}",
            "model_alias": "support",
            "model_version": model_version,
            "worker": "worker-0",
            "content": f"{text} #{i}",
            "finish_reason": "stop",
            "prompt_tokens": 120,
            "completion_tokens": 48,
            "ttft_ms": 31.5,
            "latency_ms": 400.0 + i % 50,
            "status": "ok",
            "error": None,
            "route": "openai",
        }
        for i in range(n)
    ]


def preload(bootstrap: str, topic: str, dicts: list[dict], key: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20})
    for d in dicts:
        while True:
            try:
                producer.produce(topic, json.dumps(d).encode(), str(d[key]).encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("preload: messages left undelivered")


def consumer_config(bootstrap: str, group: str) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
    }
