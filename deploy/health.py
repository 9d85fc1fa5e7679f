"""Health checks of the stack's parts, each a short real round trip with a timeout; none raises."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from schemas.kafka import client_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def kafka_health(bootstrap: str, timeout: float = 2.0) -> Health:
    """Metadata request through confluent-kafka's AdminClient."""
    from confluent_kafka.admin import AdminClient

    # log_level 0: librdkafka would otherwise print a connect error per attempt while the broker starts.
    admin = AdminClient(client_config(bootstrap, {"log_level": 0, "error_cb": lambda _err: None}))
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception as exc:
        return Health(False, _reason(exc))
    return Health(True, f"{len(metadata.brokers)} broker(s), {len(metadata.topics)} topics")


def redis_health(url: str, timeout: float = 2.0) -> Health:
    """PING."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
        version = client.info("server").get("redis_version", "?")
    except Exception as exc:
        return Health(False, _reason(exc))
    finally:
        client.close()
    return Health(True, f"PONG (redis {version})")


def store_health(query_url: str, timeout: float = 3.0) -> Health:
    """`SELECT 1` through clickhouse-connect's HTTP client, as every reader of the store connects."""
    from schemas import store

    try:
        client = store.connect(query_url, connect_timeout=timeout, send_receive_timeout=timeout, query_retries=0)
    except Exception as exc:
        return Health(False, _reason(exc))
    try:
        rows = client.query("SELECT 1").result_rows
    except Exception as exc:
        return Health(False, _reason(exc))
    finally:
        client.close()
    if rows != [(1,)]:
        return Health(False, f"SELECT 1 returned {rows!r}")
    return Health(True, f"ClickHouse {client.server_version}")


def worker_health(redis_url: str, key: str, timeout: float = 2.0) -> Health:
    """The vLLM worker's readiness record in Redis: written by its wrapper once the adapters are loaded."""
    import json

    import redis

    client = redis.Redis.from_url(url=redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        raw = client.get(key)
    except Exception as exc:
        return Health(False, _reason(exc))
    finally:
        client.close()
    if raw is None:
        return Health(False, "no readiness record yet (vLLM starting)")
    record = json.loads(raw)
    if not record.get("ready"):
        return Health(False, f"not ready; missing adapters {record.get('missing')}")
    adapters = ", ".join(record.get("adapters") or []) or "none"
    return Health(True, f"ready at {record.get('url')}; adapters: {adapters}")


def http_health(url: str, headers: dict[str, str] | None = None, timeout: float = 3.0) -> Health:
    """GET a health endpoint; 200 is healthy, anything else shows its body."""
    import httpx

    try:
        response = httpx.get(url, headers=headers, timeout=timeout)
    except Exception as exc:
        return Health(False, _reason(exc))
    if response.status_code != 200:
        return Health(False, f"{response.status_code}: {response.text[:150]}")
    return Health(True, "200 OK")


def group_health(bootstrap: str, group_id: str, timeout: float = 3.0) -> Health:
    """A consumer service is healthy when its consumer group is stable (joined, partitions assigned)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(bootstrap, {"log_level": 0, "error_cb": lambda _err: None}))
    try:
        group = admin.describe_consumer_groups([group_id], request_timeout=timeout)[group_id].result(timeout=timeout)
    except Exception as exc:
        return Health(False, _reason(exc))
    state = group.state.name.lower()
    return Health(state == "stable", f"consumer group {group_id}: {state}")
