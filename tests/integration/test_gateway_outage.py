"""Broker outage: the gateway keeps serving, spools events to disk, and delivers them once the broker is back.

Uses a broker of its own (the embedded Tansu, memory storage) so that stopping it leaves the shared stack
alone. A restarted Tansu has forgotten everything, including topics and producer ids: the gateway must
recreate the topics and a fresh producer before replaying. Every request made while the broker was down
must have its events on the restarted broker exactly once.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer

from deploy.ports import free_ports
from deploy.sandbox import start_tansu
from schemas.codec import decode
from schemas.topics import create_topics
from tests.conftest import settings_env
from tests.integration.test_gateway import _stop, _wait_http, stub_url  # noqa: F401  (fixture)
from tests.reading import assign_all

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def wait_broker(bootstrap: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            create_topics(bootstrap, timeout=5.0)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


OUTAGE_S = 10.0  # the broker stays down for 10 s under steady traffic (every broker down: spooled at once)


def test_broker_outage_spools_and_replays(stack, stub_url, tmp_path):  # noqa: F811
    kafka_port, gw_port = free_ports(2)
    bootstrap = f"127.0.0.1:{kafka_port}"
    broker, _ = start_tansu(kafka_port)
    gateway = None
    try:
        wait_broker(bootstrap)
        env = {
            **os.environ,
            **settings_env(stack),
            "FLYWHEEL_KAFKA_BOOTSTRAP": bootstrap,
            "FLYWHEEL_DATA_DIR": str(tmp_path),
            "FLYWHEEL_GATEWAY_PORT": str(gw_port),
            "FLYWHEEL_GATEWAY_UPSTREAMS": stub_url,
            "FLYWHEEL_GATEWAY_DISCOVER_WORKERS": "false",
            "FLYWHEEL_LOG_LEVEL": "WARNING",
        }
        log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115
        gateway = subprocess.Popen(
            [sys.executable, "-m", "inference.gateway.app"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{gw_port}"
        _wait_http(url + "/metrics", gateway)
        key = (tmp_path / "dev-api-key").read_text().strip()
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10.0)

        def traffic(seconds: float) -> list[str]:
            ids = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                r = client.post(
                    "/v1/chat/completions", json={"model": "support", "messages": [{"role": "user", "content": "hi"}]}
                )
                assert r.status_code == 200, r.text  # every request is served, broker or not
                ids.append(r.json()["id"])
                time.sleep(0.02)
            return ids

        traffic(2.0)
        _stop(broker)
        down_ids = traffic(OUTAGE_S)
        assert len(down_ids) > 50
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["checks"]["kafka"]["spooling"]
        broker, _ = start_tansu(kafka_port)  # same port, empty memory
        after_ids = traffic(3.0)
        # the gateway recreates the topics and replays the spool by itself
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if client.get("/health").status_code == 200 and not list((tmp_path / "spool").glob("spool-*.jsonl")):
                break
            time.sleep(0.5)
        metrics = client.get("/metrics").text
        assert 'flywheel_gateway_events_total{outcome="spooled"}' in metrics

        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "outage-check",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "enable.auto.commit": False,
            }
        )
        assign_all(consumer, ["chat.requests", "chat.responses", "inference.latency"])
        counts: collections.Counter = collections.Counter()
        per_topic: dict[str, set[str]] = collections.defaultdict(set)
        wanted = set(down_ids) | set(after_ids)
        topics = ("chat.requests", "chat.responses", "inference.latency")
        # Wait on the condition (every event seen), not on a quiet spell: a loaded machine can pause
        # the fetches for seconds. Then keep reading a little, so that a duplicate would show.
        deadline = time.monotonic() + 120
        complete_at = None
        while time.monotonic() < deadline:
            if complete_at is None and all(wanted <= per_topic[t] for t in topics):
                complete_at = time.monotonic()
            if complete_at is not None and time.monotonic() - complete_at > 3:
                break
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            event = decode(msg.value())
            counts[event.event_id] += 1
            per_topic[msg.topic()].add(event.message_id)
        consumer.close()
        for topic in topics:
            missing = wanted - per_topic[topic]
            assert not missing, f"{len(missing)} of {len(wanted)} events missing on {topic}"
        twice = [e for e, n in counts.items() if n > 1]
        assert not twice, f"{len(twice)} events delivered twice"
        client.close()
    finally:
        if gateway is not None:
            _stop(gateway)
        _stop(broker)
