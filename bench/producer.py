"""Producer SDK throughput against a raw confluent-kafka loop, measured in the same run.

Reads nothing; writes ChatResponse-sized events to `chat.responses` on the broker given by
--bootstrap, or on a Tansu broker it starts (memory storage, free port) and stops at the end.
Repeats are interleaved (raw, sdk, sdk-prebuilt, raw, ...) and medians reported, so machine noise
hits every variant alike. Producer settings come from FLYWHEEL_PRODUCER_* like the SDK's.

    python -m bench.producer --events 100000 --repeats 5
    FLYWHEEL_PRODUCER_LINGER_MS=20 python -m bench.producer --bootstrap 127.0.0.1:9092

Variants:
  raw           confluent-kafka Producer (idempotent), produce(json.dumps(d).encode(), key) + poll(0), flush
  sdk           ChatResponse.model_validate(d) + ChatEventProducer.send, flush
  sdk-prebuilt  ChatEventProducer.send of events built before the clock starts (transport only)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

from deploy.sandbox import start_tansu
from producers.sdk import ChatEventProducer
from producers.settings import ProducerSettings
from schemas.events import ChatResponse
from schemas.topics import CHAT_RESPONSES, create_topics

RATIO_GOAL = 0.70
RATE_GOAL = 30_000
SESSIONS = 1_000
TOPIC = CHAT_RESPONSES.name


def make_dicts(n: int) -> list[dict]:
    """ChatResponse-shaped dicts with a full envelope: both variants serialize the same content."""
    now = datetime.now(UTC).isoformat()
    text = (
        "Your order ships in 3-5 business days; returns are free within 30 days of delivery. "
        "Open the order page, choose Return, print the label and drop the parcel at any carrier. "
    )
    return [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "chat_response",
            "schema_version": 1,
            "occurred_at": now,
            "producer": "bench",
            "session_id": f"session-{i % SESSIONS:05d}",
            "message_id": f"msg-{i:08d}",
            "user_id": f"user-{i % 97}",
            "model_alias": "support",
            "model_version": "support-v7",
            "worker": "worker-0",
            "content": f"{text[:190]} #{i}",
            "finish_reason": "stop",
            "prompt_tokens": 120,
            "completion_tokens": 48,
            "ttft_ms": 31.5,
            "latency_ms": 412.25,
            "status": "ok",
            "error": None,
            "route": "openai",
        }
        for i in range(n)
    ]


def run_raw(bootstrap: str, dicts: list[dict]) -> float:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.list_topics(TOPIC, timeout=10)  # connect before the clock starts
    produce, poll, dumps = producer.produce, producer.poll, json.dumps
    start = time.perf_counter()
    for d in dicts:
        value = dumps(d).encode()
        try:
            produce(TOPIC, value, d["session_id"])
        except BufferError:
            poll(0.05)
            produce(TOPIC, value, d["session_id"])
        poll(0)
    left = producer.flush(60)
    elapsed = time.perf_counter() - start
    assert left == 0, f"raw: {left} undelivered"
    return len(dicts) / elapsed


def run_sdk(settings: ProducerSettings, dicts: list[dict], prebuilt: bool) -> float:
    events = [ChatResponse.model_validate(d) for d in dicts] if prebuilt else None
    producer = ChatEventProducer(settings)
    producer._producer.list_topics(TOPIC, timeout=10)  # connect before the clock starts
    send, validate = producer.send, ChatResponse.model_validate
    start = time.perf_counter()
    if events is not None:
        for event in events:
            send(event)
    else:
        for d in dicts:
            send(validate(d))
    stats = producer.flush(60)
    elapsed = time.perf_counter() - start
    producer.close()
    assert stats.ok and stats.delivered == len(dicts), stats
    return len(dicts) / elapsed


def per_event_costs(dicts: list[dict]) -> list[tuple[str, float]]:
    """CPU cost of each step in microseconds per event, without the broker."""
    sample = dicts[:20_000]
    events = [ChatResponse.model_validate(d) for d in sample]

    def timed(fn: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(3):  # best of three: the least disturbed by other processes
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best / len(sample) * 1e6

    return [
        ("json.dumps(d).encode()", timed(lambda: [json.dumps(d).encode() for d in sample])),
        ("ChatResponse.model_validate(d)", timed(lambda: [ChatResponse.model_validate(d) for d in sample])),
        ("ChatResponse(**d)", timed(lambda: [ChatResponse(**d) for d in sample])),
        ("serializer.to_json(event)", timed(lambda: [e.__pydantic_serializer__.to_json(e) for e in events])),
        ("event.model_dump_json()", timed(lambda: [e.model_dump_json() for e in events])),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bootstrap", help="use this broker instead of starting Tansu")
    args = parser.parse_args(argv)

    console = Console()
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker, bootstrap = start_tansu()
        console.print(f"started Tansu at {bootstrap}")
    try:
        create_topics(bootstrap)
        settings = ProducerSettings(kafka_bootstrap=bootstrap)
        dicts = make_dicts(args.events)
        variants: dict[str, Callable[[], float]] = {
            "raw": lambda: run_raw(bootstrap, dicts),
            "sdk": lambda: run_sdk(settings, dicts, prebuilt=False),
            "sdk-prebuilt": lambda: run_sdk(settings, dicts, prebuilt=True),
        }
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, run in variants.items():
                rates[name].append(run())
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)

    medians = {name: statistics.median(r) for name, r in rates.items()}
    raw = medians["raw"]
    table = Table(title=f"producer throughput, {args.events:,} ChatResponse events x {args.repeats} repeats")
    for column in ("variant", "events/s (median)", "min", "max", "ratio to raw"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, r in rates.items():
        table.add_row(name, f"{medians[name]:,.0f}", f"{min(r):,.0f}", f"{max(r):,.0f}", f"{medians[name] / raw:.2f}")
    console.print(table)
    s = settings
    console.print(
        f"sdk settings: linger.ms={s.producer_linger_ms} batch.num.messages={s.producer_batch_num_messages} "
        f"batch.size={s.producer_batch_size} compression={s.producer_compression}"
    )

    costs = Table(title="CPU per event, no broker (µs)")
    costs.add_column("step")
    costs.add_column("µs/event", justify="right")
    for step, us in per_event_costs(dicts):
        costs.add_row(step, f"{us:.2f}")
    console.print(costs)

    sdk = medians["sdk"]
    ratio_ok, rate_ok = sdk / raw >= RATIO_GOAL, sdk >= RATE_GOAL
    console.print(
        f"goal sdk >= {RATIO_GOAL:.0%} of raw: {sdk / raw:.0%} "
        + ("[green]PASS[/green]" if ratio_ok else "[red]FAIL[/red]")
    )
    console.print(
        f"goal sdk >= {RATE_GOAL:,}/s: {sdk:,.0f}/s " + ("[green]PASS[/green]" if rate_ok else "[red]FAIL[/red]")
    )
    return 0 if ratio_ok and rate_ok else 1


if __name__ == "__main__":
    sys.exit(main())
