"""`flywheel models show` and `flywheel status` on a real Redis: the registry's metadata with what is live now.

A rollout record as the controller writes it (inference/controller/deployer.py):
a canary at 5% whose step holds, with what
it waits for. The commands must show the weight and the hold; a version outside the rollout shows its weight only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from inference.keys import ROLLOUT_KEY, ROUTES_KEY
from retrain.registry import Registry

pytestmark = pytest.mark.integration

FLYWHEEL = str(Path(sys.executable).parent / "flywheel")
WAITING = "waiting: evidence: thumbs-down 2/9 rated (canary) vs 14/80 ..."


def adapter(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    return path


def test_show_and_status_say_what_a_holding_rollout_waits_for(stack, tmp_path):
    alias = f"shop{uuid.uuid4().hex[:6]}"
    registry = Registry(tmp_path / "adapters")
    v1 = registry.register(alias, adapter(tmp_path / "a1"), {"verdict": "accepted"}).name
    v2 = registry.register(alias, adapter(tmp_path / "a2"), {"verdict": "accepted"}).name
    client = redis.Redis.from_url(stack.redis_dsn, decode_responses=True)
    client.hset(ROUTES_KEY.format(alias=alias), mapping={v1: 95, v2: 5})
    client.hset(
        ROLLOUT_KEY.format(alias=alias),
        mapping={
            "id": "r1",
            "phase": "canary",
            "current": v1,
            "canary": v2,
            "weight": 5,
            "started_at": time.time() - 125,
            "waiting": WAITING,
        },
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "FLYWHEEL_DATA_DIR": str(stack.data_dir),
        "FLYWHEEL_REDIS_URL": stack.redis_dsn,
        "FLYWHEEL_RETRAIN_REGISTRY_DIR": str(tmp_path / "adapters"),
        "FLYWHEEL_MODEL_ALIAS": alias,
    }

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([FLYWHEEL, *args], env=env, capture_output=True, text=True, timeout=120)

    try:
        shown = json.loads(run("models", "show", v2).stdout)
        assert shown["verdict"] == "accepted" and shown["path"].endswith("/v2")
        rollout = shown["serving"]["rollout"]
        assert shown["serving"]["weight"] == 5 and rollout["waiting"] == WAITING and rollout["current"] == v1
        assert rollout["phase"] == "canary" and 120 <= rollout["age_s"] < 240
        assert json.loads(run("models", "show", v1).stdout)["serving"] == {"weight": 95}
        status = run("status").stdout
        assert f"{alias}: {v1} 95%, {v2} 5%" in status
        assert f"rollout of {v2} (canary, at 5%, 2 min" in status and f"holding: {WAITING}" in status
        missing = run("models", "show", f"{alias}@v9")
        assert missing.returncode != 0 and f"{alias}@v9" in missing.stderr
    finally:
        client.delete(ROUTES_KEY.format(alias=alias), ROLLOUT_KEY.format(alias=alias))
        client.close()
