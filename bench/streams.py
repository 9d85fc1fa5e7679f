"""Bench the faust stream worker (streams.app): metric agent events/s and feedback-to-pair latency.

    python bench/streams.py [--events 100000] [--feedbacks 200] [--rate 20]

Starts its own embedded stack (Tansu, Redis, store) under a temp dir, then:
1. metric agent: pre-loads N ChatResponse events (1 ms of event time apart, 1 s windows), starts a fresh
   worker and times the windows coming out: events/s between 10% and 90% of the events accounted for;
   baseline in the same run: a plain confluent-kafka consumer decoding the same events with pydantic.
2. feedback -> pair: for each of F conversations (request + response produced up front) a thumbs-down
   with a correction at a steady rate; latency = pair consumed (dpo.pairs) - feedback produced.
Prints a rich table. Goals (issue 4): metric agent >= 10,000 events/s; feedback-to-pair p99 < 1 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Consumer, Producer
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy import stack as local_stack  # noqa: E402
from deploy.ports import free_ports  # noqa: E402
from schemas.codec import decode, encode  # noqa: E402
from schemas.events import ChatMessage, ChatRequest, ChatResponse, DPOPair, Feedback, MetricsWindow  # noqa: E402
from schemas.settings import CommonSettings  # noqa: E402
from schemas.topics import CHAT_RESPONSES, DPO_PAIRS, METRICS_WINDOWS, create_topics  # noqa: E402


def start_worker(settings: CommonSettings, workdir: Path, **env: str) -> subprocess.Popen:
    app_id = f"bench-{uuid.uuid4().hex[:6]}"
    log = workdir / f"{app_id}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.app", "worker", "--without-web", "-l", "warn"], cwd=ROOT,
        env={**os.environ, "FLYWHEEL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "FLYWHEEL_DATA_DIR": str(workdir),
             "FLYWHEEL_STREAMS_APP_ID": app_id, "FLYWHEEL_STREAMS_STATE_DIR": str(workdir / app_id), **env},
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip
    return proc


def stop_worker(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def consumer(settings: CommonSettings, topic: str) -> Consumer:
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "enable.auto.commit": False})
    c.subscribe([topic])
    return c


def preload(settings: CommonSettings, n: int) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5, "enable.idempotence": True})
    base = time.time() - n / 1000 - 120
    for i in range(n):
        r = ChatResponse(session_id=f"s{i % 97}", message_id=f"b{i}", model_alias="support", model_version="tiny",
                         content="ok", latency_ms=5 + i % 50, ttft_ms=1 + i % 7, completion_tokens=i % 30,
                         status="error" if i % 50 == 0 else "ok",
                         occurred_at=datetime.fromtimestamp(base + i / 1000, UTC))
        while True:
            try:
                producer.produce(CHAT_RESPONSES.name, key=r.session_id.encode(), value=encode(r))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)


def baseline(settings: CommonSettings, n: int) -> float:
    """Plain consumer + pydantic decode of the same events: what one Python process reads here."""
    c = consumer(settings, CHAT_RESPONSES.name)
    seen, t0 = 0, None
    while seen < n:
        msgs = c.consume(10_000, timeout=1.0)
        if msgs and t0 is None:
            t0 = time.perf_counter()
        for m in msgs:
            if m.error() is None:
                decode(m.value(), ChatResponse)
                seen += 1
    elapsed = time.perf_counter() - t0
    c.close()
    return n / elapsed


def metric_agent(settings: CommonSettings, workdir: Path, n: int) -> tuple[float, int]:
    proc = start_worker(settings, workdir, FLYWHEEL_STREAMS_WINDOW_SECONDS="[1]", FLYWHEEL_STREAMS_WINDOW_GRACE_S="1",
                        FLYWHEEL_STREAMS_WINDOW_IDLE_S="3", FLYWHEEL_STREAMS_TICK_INTERVAL_S="0.2")
    c = consumer(settings, METRICS_WINDOWS.name)
    arrivals: list[tuple[float, int]] = []
    total, deadline = 0, time.monotonic() + 600
    try:
        while total < n and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.2):
                if m.error() is None:
                    w = decode(m.value(), MetricsWindow)
                    total += w.requests
                    arrivals.append((time.perf_counter(), total))
    finally:
        c.close()
        stop_worker(proc)
    lo = next(t for t, cum in arrivals if cum >= 0.1 * n)
    lo_n = next(cum for t, cum in arrivals if cum >= 0.1 * n)
    hi, hi_n = next((t, cum) for t, cum in arrivals if cum >= 0.9 * n)
    return (hi_n - lo_n) / (hi - lo), total


def feedback_latency(settings: CommonSettings, workdir: Path, count: int, rate: float) -> list[float]:
    proc = start_worker(settings, workdir)
    try:
        time.sleep(15)  # group join and recovery
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 0})
        feedbacks = []
        for i in range(count):
            mid, sid = f"f{i}-{uuid.uuid4().hex[:6]}", f"fs{i}"
            q = f"Question number {i} about order {uuid.uuid4().hex[:8]}?"
            producer.produce("chat.requests", key=sid.encode(), value=encode(ChatRequest(
                session_id=sid, message_id=mid, model_alias="support", messages=[ChatMessage(role="user", content=q)])))
            producer.produce(CHAT_RESPONSES.name, key=sid.encode(), value=encode(ChatResponse(
                session_id=sid, message_id=mid, model_alias="support", model_version="tiny",
                content=f"Wrong answer {i}.", latency_ms=5)))
            feedbacks.append(Feedback(session_id=sid, message_id=mid, feedback="thumbs_down",
                                      correction=f"Right answer {i} {uuid.uuid4().hex[:8]}."))
        producer.flush(30)
        time.sleep(3)
        c = consumer(settings, DPO_PAIRS.name)
        c.consume(1, timeout=5)  # joined the group before the clock starts
        sent: dict[str, float] = {}
        received: dict[str, float] = {}
        interval = 1 / rate
        next_at = time.perf_counter()
        for fb in feedbacks:
            while time.perf_counter() < next_at:
                for m in c.consume(100, timeout=max(0.0, min(0.01, next_at - time.perf_counter()))):
                    if m.error() is None:
                        received.setdefault(decode(m.value(), DPOPair).feedback_event_id.hex, time.perf_counter())
            producer.produce("chat.feedback", key=fb.session_id.encode(), value=encode(fb))
            producer.flush(5)
            sent[fb.event_id.hex] = time.perf_counter()
            next_at += interval
        deadline = time.monotonic() + 30
        while len(set(sent) & set(received)) < len(sent) and time.monotonic() < deadline:
            for m in c.consume(100, timeout=0.1):
                if m.error() is None:
                    received.setdefault(decode(m.value(), DPOPair).feedback_event_id.hex, time.perf_counter())
        c.close()
        return sorted(received[k] - sent[k] for k in sent if k in received)
    finally:
        stop_worker(proc)


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--feedbacks", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="feedbacks per second")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    kafka, redis, store = free_ports(3)
    settings = CommonSettings(data_dir=workdir, kafka_bootstrap=f"127.0.0.1:{kafka}",
                              redis_url=f"redis://127.0.0.1:{redis}/0", clickhouse_http_port=store)
    local_stack.up(settings, infra_only=True, timeout=60.0)
    try:
        create_topics(settings.kafka_bootstrap)
        preload(settings, args.events)
        base = baseline(settings, args.events)
        rate, total = metric_agent(settings, workdir, args.events)
        lat = feedback_latency(settings, workdir, args.feedbacks, args.rate)
    finally:
        local_stack.down(settings)
    table = Table(title="streams bench (embedded Tansu, one worker, 2 shared cores)")
    for col in ("measure", "value", "goal"):
        table.add_column(col)
    table.add_row("baseline: plain consumer + pydantic decode", f"{base:,.0f} events/s", "")
    table.add_row("metric agent (1 s windows, full worker)", f"{rate:,.0f} events/s ({rate / base:.0%} of baseline)",
                  ">= 10,000/s")
    table.add_row("events accounted in windows", f"{total:,} / {args.events:,}", "all")
    if lat:
        table.add_row("feedback -> pair p50", f"{pct(lat, 0.5) * 1000:,.0f} ms", "")
        table.add_row("feedback -> pair p99", f"{pct(lat, 0.99) * 1000:,.0f} ms", "< 1 s")
    table.add_row("pairs received", f"{len(lat)} / {args.feedbacks}", "all")
    Console().print(table)


if __name__ == "__main__":
    main()
