"""Run the faust stream worker (streams.app) as a subprocess against the test stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer

from schemas.codec import decode, encode
from schemas.events import Event
from schemas.topics import BY_EVENT, create_topics
from tests.reading import assign_all

ROOT = Path(__file__).resolve().parents[2]


class StreamWorker:
    def __init__(self, stack, workdir: Path, **overrides: str):
        self.app_id = f"streams-test-{uuid.uuid4().hex[:8]}"
        self.log_path = workdir / f"{self.app_id}.log"
        self.env = {
            **os.environ,
            "FLYWHEEL_DATA_DIR": str(stack.data_dir),
            "FLYWHEEL_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "FLYWHEEL_STREAMS_APP_ID": self.app_id,
            "FLYWHEEL_STREAMS_STATE_DIR": str(workdir / self.app_id),
            "FLYWHEEL_STREAMS_WINDOW_SECONDS": "[2, 4]",
            "FLYWHEEL_STREAMS_WINDOW_GRACE_S": "1",
            "FLYWHEEL_STREAMS_WINDOW_IDLE_S": "1.5",
            "FLYWHEEL_STREAMS_PENDING_TIMEOUT_S": "3",
            "FLYWHEEL_STREAMS_TICK_INTERVAL_S": "0.5",
            "FLYWHEEL_STREAMS_RETRAIN_THRESHOLD": "4",
            "FLYWHEEL_STREAMS_RETRAIN_COOLDOWN_S": "2",
            **overrides,
        }
        self.proc: subprocess.Popen | None = None
        create_topics(stack.kafka_bootstrap)

    def start(self, timeout: float = 90.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115
        start_at = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.app", "worker", "--without-web", "-l", "info"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[start_at:]
            if b"Worker ready" in text:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"worker did not start:\n{self.log_path.read_text()[-4000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def produce(bootstrap: str, events: list[Event], raw: list[tuple[str, bytes, bytes]] = ()) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for event in events:
        topic = BY_EVENT[type(event)]
        producer.produce(topic.name, key=topic.key(event), value=encode(event))
    for topic_name, key, value in raw:
        producer.produce(topic_name, key=key, value=value)
    producer.flush(30)


class Collector:
    """Reads a topic from the beginning (fresh group) and keeps decoded events."""

    def __init__(self, bootstrap: str, topic: str):
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"collect-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "enable.auto.commit": False,
            }
        )
        assign_all(self.consumer, [topic])
        self.events: list = []

    def poll_until(self, done, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self.events):
                return self.events
            for msg in self.consumer.consume(1000, timeout=0.2):
                if msg.error() is None:
                    self.events.append(decode(msg.value()))
        return self.events

    def close(self) -> None:
        self.consumer.close()
