"""The whole local stack for the end-to-end tests, once per module, on free ports in a temporary data dir.

Everything runs as `flywheel up` runs it (`deploy.stack.up(settings, infra_only=False)`: broker, Redis, store, a
vLLM CPU worker, gateway, streams, retrain worker, hot-swap controller), configured only through FLYWHEEL_*
environment variables: `deploy.sandbox.LocalLoop` puts the local loop settings (`deploy.sandbox.LOOP_SETTINGS`: retrain
threshold 8, canary steps of 5 s with 10 samples per arm) into this process's environment, which the services
inherit, and restores it afterwards. FLYWHEEL_E2E_* variables of the caller override durations, e.g.
`FLYWHEEL_E2E_RATE=25` (steady traffic, requests/s).

`quick_config` is the tiny model's job config with a short supervised stage, for jobs whose learning is not under test.

Collected events: `loop_events` consumes retrain.jobs, model.deployments and chat.responses from the beginning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml

from deploy.sandbox import EXPORTERS, Events, LocalLoop, RouteLog
from deploy.supervision import pid_alive

E2E_RATE = float(os.environ.get("FLYWHEEL_E2E_RATE", "22"))  # steady traffic through the gateway, requests/s
E2E_USERS = int(os.environ.get("FLYWHEEL_E2E_USERS", "200"))  # simulated users of the steady traffic
E2E_LOOP_TIMEOUT_S = float(os.environ.get("FLYWHEEL_E2E_LOOP_TIMEOUT_S", "600"))  # longest wait for one stage


# Set per stack by LocalLoop; a caller's values would point the services at another stack.
_PER_STACK = frozenset(
    {
        "FLYWHEEL_DATA_DIR",
        "FLYWHEEL_KAFKA_BOOTSTRAP",
        "FLYWHEEL_REDIS_URL",
        "FLYWHEEL_CLICKHOUSE_DSN",
        "FLYWHEEL_CLICKHOUSE_HTTP_PORT",
        "FLYWHEEL_GATEWAY_PORT",
        "FLYWHEEL_WORKER_BASE_PORT",
        *EXPORTERS.values(),
    }
)


@pytest.fixture(scope="module")
def loop(tmp_path_factory) -> LocalLoop:
    logging.getLogger("clickhouse_connect").setLevel(logging.ERROR)  # probes of a store still starting
    # The caller's FLYWHEEL_* settings (e.g. FLYWHEEL_CANARY_STEP_S) override the local loop's.
    overrides = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("FLYWHEEL_") and not k.startswith("FLYWHEEL_E2E_") and k not in _PER_STACK
    }
    local = LocalLoop(tmp_path_factory.mktemp("loop"), overrides=overrides)
    with local:
        from deploy import stack as local_stack

        pids = [row.pid for row in local_stack.status(local.settings) if row.pid]
        yield local
    left = [pid for pid in pids if pid_alive(pid)]
    assert not left, f"processes left running after down: {left}"


@pytest.fixture(scope="module")
def loop_events(loop: LocalLoop) -> Events:
    from schemas.topics import CHAT_RESPONSES, MODEL_DEPLOYMENTS, RETRAIN_JOBS

    events = Events(loop.settings.kafka_bootstrap, [RETRAIN_JOBS.name, MODEL_DEPLOYMENTS.name, CHAT_RESPONSES.name])
    yield events
    events.close()


@pytest.fixture(scope="module")
def routes(loop: LocalLoop) -> RouteLog:
    log = RouteLog(loop.redis(), loop.settings.served_model_name)
    yield log
    log.close()


@pytest.fixture(scope="session")
def quick_config(tmp_path_factory) -> Path:
    """The suite's job config (FLYWHEEL_RETRAIN_CONFIG, the tiny model's) with 2 supervised epochs instead of 100.

    The 100 epochs make the tiny model repeat its corrections, which the gate's learning check needs; a job whose
    learning is not under test (the gate's check off, or its verdict not obeyed) spends minutes on them for nothing.
    """
    config = yaml.safe_load(Path(os.environ["FLYWHEEL_RETRAIN_CONFIG"]).read_text())
    path = tmp_path_factory.mktemp("config") / "quick.yaml"
    path.write_text(yaml.safe_dump({**config, "sft_epochs": 2}))
    return path
