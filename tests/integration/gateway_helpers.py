"""Helpers shared by the gateway's integration tests (test_gateway.py, serving/test_gateway_vllm.py).

Processes are started and stopped here (the gateway as `python -m inference.gateway.app`), and events are consumed
back from the broker and decoded with schemas.codec, as a downstream consumer would.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
from confluent_kafka import Consumer
from redis.asyncio import Redis

from deploy.ports import free_ports
from inference.gateway.auth import ApiKeyStore
from schemas.codec import decode
from tests.reading import assign_all

ROOT = Path(__file__).resolve().parents[2]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Poll `url` until it answers (any status), failing early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


def stop(proc: subprocess.Popen, wait_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `wait_s`; returns once the process is reaped."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def run_gateway(env: dict[str, str], log_path: Path, port: int | None = None) -> Iterator[dict]:
    """The gateway as its own process (`python -m inference.gateway.app`) with `env` (FLYWHEEL_* settings).

    Yields {"url", "key" (the dev key it wrote under FLYWHEEL_DATA_DIR), "proc", "log"}; stops it on exit.
    """
    if port is None:
        (port,) = free_ports(1)
    env = {**env, "FLYWHEEL_GATEWAY_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inference.gateway.app"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_http(url + "/metrics", proc)
            key = (Path(env["FLYWHEEL_DATA_DIR"]) / "dev-api-key").read_text().strip()
            yield {"url": url, "key": key, "proc": proc, "log": log_path}
        finally:
            stop(proc)


def create_keys(redis_url: str, limited_rate: int = 2) -> dict[str, str]:
    """Extra API keys in the Redis at `redis_url`: chat-only at `limited_rate`/min, admin-only, chat-only, and
    chat-only with a token limit of 60 a minute."""

    async def make():
        redis = Redis.from_url(redis_url)
        store = ApiKeyStore(redis)
        limited, _ = await store.create("limited", {"chat"}, rate_per_minute=limited_rate)
        admin_only, _ = await store.create("ops", {"admin"}, rate_per_minute=1000)
        chat_only, _ = await store.create("app", {"chat"}, rate_per_minute=100_000)
        tokens, _ = await store.create("tokens", {"chat"}, rate_per_minute=100_000, tokens_per_minute=60)
        await redis.aclose()
        return {"limited": limited, "admin_only": admin_only, "chat_only": chat_only, "tokens": tokens}

    return asyncio.run(make())


def oai(gateway: dict, **headers) -> openai.OpenAI:
    """The official OpenAI client on the gateway, with the dev key and no retries."""
    return openai.OpenAI(
        base_url=gateway["url"] + "/v1", api_key=gateway["key"], default_headers=headers or None, max_retries=0
    )


def consume_topics(
    consumer_config: dict, wanted: dict[str, set[str]], timeout: float = 30.0
) -> dict[str, dict[str, object]]:
    """{topic: {message_id: event}}: the events on each topic of `wanted` whose message_id is in that topic's
    set, decoded and validated with schemas.codec. One consumer for all the topics; polls until every topic
    has every wanted id or the deadline passes (the caller asserts on what was found)."""
    consumer = Consumer(consumer_config)
    assign_all(consumer, list(wanted))
    found: dict[str, dict[str, object]] = {t: {} for t in wanted}
    deadline = time.monotonic() + timeout
    try:
        while any(ids - set(found[t]) for t, ids in wanted.items()) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            event = decode(msg.value())
            if getattr(event, "message_id", None) in wanted[msg.topic()]:
                found[msg.topic()][event.message_id] = event
    finally:
        consumer.close()
    return found


def consume(consumer_config: dict, topic: str, wanted: set[str], timeout: float = 30.0) -> dict[str, object]:
    """Events on `topic` whose message_id is in `wanted`, decoded and validated with schemas.codec."""
    return consume_topics(consumer_config, {topic: wanted}, timeout)[topic]
