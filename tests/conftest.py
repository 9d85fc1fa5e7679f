"""Shared fixtures: a real local stack (Tansu broker, Redis, chDB store server) on free ports.

`stack` brings it up once per test session through the same code as `flywheel up --infra-only`
(supervisord under a temporary data dir) and takes it down at the end, checking that no
process is left. Fixtures that need no stack cost nothing: the stack starts on first use.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from deploy import stack as local_stack
from deploy.ports import free_ports
from deploy.supervision import pid_alive
from schemas.settings import CommonSettings

# The suite runs on the tiny random-weight model (seconds per job instead of minutes): its services and the
# stacks the tests start inherit these. A caller's own values win. The gate's paraphrase and regression
# checks need a model that answers sensibly, so they are off here (tests/integration/test_learning.py
# checks learning on the real model).
TEST_ENV = {
    "FLYWHEEL_SERVED_MODEL_NAME": "tiny",
    "FLYWHEEL_RETRAIN_CONFIG": str(Path(__file__).resolve().parent.parent / "retrain" / "configs" / "tiny.yaml"),
    "FLYWHEEL_SFT_BOOTSTRAP": "false",
    "FLYWHEEL_GATE_MIN_PARAPHRASES": "0",
    "FLYWHEEL_GATE_MIN_KEPT": "0",
    "FLYWHEEL_GATE_REGRESSION_SIZE": "8",
    "HF_HUB_OFFLINE": "1",
}
for _name, _value in TEST_ENV.items():
    os.environ.setdefault(_name, _value)


def stack_settings(data_dir, kafka_port: int, redis_port: int, store_port: int) -> CommonSettings:
    """Settings for a stack under `data_dir` on the given ports (nothing read from the environment)."""
    return CommonSettings(
        data_dir=data_dir,
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        clickhouse_dsn="",
        clickhouse_http_port=store_port,
    )


def settings_env(settings: CommonSettings) -> dict[str, str]:
    """FLYWHEEL_* variables that make a child process (or the CLI) see `settings`."""
    return {
        "FLYWHEEL_DATA_DIR": str(settings.data_dir),
        "FLYWHEEL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "FLYWHEEL_REDIS_URL": settings.redis_dsn,
        "FLYWHEEL_CLICKHOUSE_DSN": settings.clickhouse_dsn,
        "FLYWHEEL_CLICKHOUSE_HTTP_PORT": str(settings.clickhouse_http_port),
    }


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> CommonSettings:
    settings = stack_settings(tmp_path_factory.mktemp("stack"), *free_ports(3))
    local_stack.up(settings, infra_only=True, timeout=60.0)
    pids = [row.pid for row in local_stack.status(settings) if row.pid]
    try:
        yield settings
    finally:
        local_stack.down(settings)
        left = [pid for pid in pids if pid_alive(pid)]
        assert not left, f"processes left running after down: {left}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random-weight model, built once per run; read-only for the tests that share it."""
    from retrain.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: CommonSettings) -> str:
    return stack.kafka_bootstrap


@pytest.fixture(scope="session")
def redis_url(stack: CommonSettings) -> str:
    return stack.redis_dsn


@pytest.fixture(scope="session")
def store_url(stack: CommonSettings) -> str:
    """The store's ClickHouse HTTP endpoint (read-only), as analysts and controllers use it."""
    return stack.query_url


@pytest.fixture
def consumer_config(kafka_bootstrap: str) -> dict:
    """confluent-kafka consumer settings for tests: a fresh group, fast joins on the embedded broker."""
    return {
        "bootstrap.servers": kafka_bootstrap,
        "group.id": f"test-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,  # group join waits session_timeout/2 on Tansu: 3 s instead of 23 s
        "heartbeat.interval.ms": 1000,
        "enable.auto.commit": False,
    }
