"""Crash test: kill -9 the sink (the embedded store process) three times while 200,000 events stream in.

Own Tansu broker and own store process (the session `stack` is shared and must not be killed).
At the end `flywheel.chat_responses` holds exactly 200,000 rows, each event_id once, counted
WITHOUT `FINAL`: re-read batches are cut at the ranges recorded in the ledger and dropped by
their insert deduplication token, not merged away later by ReplacingMergeTree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer

from deploy.ports import free_ports
from deploy.sandbox import start_tansu
from schemas import store
from schemas.settings import CommonSettings
from schemas.topics import CHAT_RESPONSES, create_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 200_000
KILLS = 3
REPO = Path(__file__).resolve().parents[2]


def start_store(env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "consumers.store_server"], cwd=REPO, env=env, stdout=out, stderr=out
        )


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the store or broker is still starting
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_exc})")


def payloads(n: int) -> list[tuple[bytes, bytes]]:
    now = datetime.now(UTC).isoformat()
    return [
        (
            f"session-{i % 500}".encode(),
            json.dumps(
                {
                    "event_id": str(uuid.uuid4()),
                    "event_type": "chat_response",
                    "occurred_at": now,
                    "producer": "crash-test",
                    "session_id": f"session-{i % 500}",
                    "message_id": f"m{i}",
                    "model_alias": "support",
                    "model_version": "v1",
                    "content": f"answer {i}",
                    "latency_ms": 12.5,
                }
            ).encode(),
        )
        for i in range(n)
    ]


def stream(bootstrap: str, messages: list[tuple[bytes, bytes]], seconds: float, done: threading.Event) -> None:
    """Produce at an even rate over `seconds` (so the kills land mid-stream), then flush."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 10})
    chunk = 1000
    interval = seconds / (len(messages) / chunk)
    start = time.monotonic()
    for i in range(0, len(messages), chunk):
        for key, value in messages[i : i + chunk]:
            while True:
                try:
                    producer.produce(CHAT_RESPONSES.name, value, key)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        time.sleep(max(0.0, start + (i // chunk + 1) * interval - time.monotonic()))
    assert producer.flush(60) == 0
    done.set()


def test_kill_9_three_times_no_loss_no_duplicates(tmp_path):
    kafka_port, http_port = free_ports(2)
    bootstrap = f"127.0.0.1:{kafka_port}"
    broker, _ = start_tansu(kafka_port)
    env = {
        **os.environ,
        "FLYWHEEL_DATA_DIR": str(tmp_path),
        "FLYWHEEL_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'chdb'}",
        "FLYWHEEL_CLICKHOUSE_HTTP_PORT": str(http_port),
        "FLYWHEEL_KAFKA_BOOTSTRAP": bootstrap,
        "FLYWHEEL_LOG_LEVEL": "INFO",
        # Widen the insert -> commit window so that kills land in it and force re-reads of inserted ranges.
        "FLYWHEEL_SINK_COMMIT_DELAY_S": "1.0",
    }
    log = tmp_path / "store.log"
    settings = CommonSettings(
        data_dir=tmp_path, clickhouse_dsn=env["FLYWHEEL_CLICKHOUSE_DSN"], clickhouse_http_port=http_port
    )
    server = None
    try:
        wait_for(lambda: create_topics(bootstrap, timeout=5) is not None, 30, "the broker")
        server = start_store(env, log)
        client = wait_for(lambda: store.connect(settings.query_url), 60, "the store")

        def counts() -> tuple[int, int]:
            return client.query("SELECT count(), uniqExact(event_id) FROM flywheel.chat_responses").result_rows[0]

        messages = payloads(EVENTS)
        done = threading.Event()
        producer = threading.Thread(target=stream, args=(bootstrap, messages, 24.0, done), daemon=True)
        producer.start()
        kills = []
        for k in range(KILLS):
            # Kill once the sink has made progress since the last restart (mid-stream, mid-flush).
            before = counts()[0] if k else 0
            wait_for(lambda b=before: counts()[0] > b, 60, f"progress before kill {k + 1}", interval=0.1)
            time.sleep(1.0 + 0.37 * k)
            rows_at_kill = counts()[0]
            os.kill(server.pid, signal.SIGKILL)
            server.wait(10)
            kills.append(rows_at_kill)
            server = start_store(env, log)
            client = wait_for(
                lambda: store.connect(settings.query_url),
                60,
                f"the store after kill {k + 1}",
            )
        producer.join(120)
        assert done.is_set(), "the producer did not finish"
        final = wait_for(lambda: counts()[0] >= EVENTS and counts(), 120, "all rows", interval=0.5)
        time.sleep(3)  # anything still in flight (a duplicate would show up here)
        final = counts()
        with_final = client.query("SELECT count() FROM flywheel.chat_responses FINAL").result_rows[0][0]
        replays = log.read_text().count("replaying recorded batch ranges")
        print(f"rows at each kill: {kills}; final count, uniq: {final}; FINAL: {with_final}; replays: {replays}")
        assert kills[-1] < EVENTS, "the last kill came after everything was written: not a mid-stream crash"
        assert final == (EVENTS, EVENTS)
        assert with_final == EVENTS
        assert replays >= 1, "no kill landed between insert and commit: the token path was not exercised"
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(40)
            except subprocess.TimeoutExpired:
                server.kill()
        broker.terminate()
        broker.wait(10)
