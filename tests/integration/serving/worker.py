"""The vLLM CPU worker the modules of this folder share, started as production starts it.

The worker is the readiness wrapper (`python -m inference.worker.wrapper`, which starts the vLLM OpenAI server as
its child) serving the tiny model as `SERVED`, with its readiness record in Redis database `REDIS_DB` (the wrapper
reads every routing table of its database). The controller's tests load adapters on it directly and unload
them after; the gateway's tests route to it through its record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from deploy.ports import free_ports
from inference.keys import worker_key

ROOT = Path(__file__).resolve().parents[3]
SERVED = "tiny"  # the base model's served name
TOKEN = "worker-token-for-tests"  # vLLM refuses /v1/... without it, as on the stack
REDIS_DB = 8  # apart from the stack's database 0, the controller tests' 6 and test_vllm_worker.py's 7
INDEX = 0
START_TIMEOUT_S = 300


@dataclass(frozen=True)
class Worker:
    url: str
    redis_url: str
    log: Path


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def running_worker(model_dir: Path, redis_url: str, log_path: Path) -> Iterator[Worker]:
    """The wrapper and its vLLM server, ready (its record in Redis says so); stopped with SIGTERM after, checking
    that no process of its tree is left."""
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "FLYWHEEL_BASE_MODEL": str(model_dir),
        "FLYWHEEL_SERVED_MODEL_NAME": SERVED,
        "FLYWHEEL_REDIS_URL": redis_url,
        "FLYWHEEL_WORKER_API_KEY": TOKEN,
        "FLYWHEEL_WORKER_BASE_PORT": str(port - INDEX),
        "FLYWHEEL_HEARTBEAT_S": "0.5",
        "FLYWHEEL_READY_TTL_S": "5",
        "FLYWHEEL_START_TIMEOUT_S": str(START_TIMEOUT_S),
        "FLYWHEEL_LOG_LEVEL": "INFO",
    }
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    alive: list = []
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inference.worker.wrapper", "--index", str(INDEX)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        tree: list = []
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"worker exited with {proc.returncode}:\n{log_tail(log_path)}")
                raw = r.get(worker_key(INDEX))
                record = json.loads(raw) if raw else None
                if record and record["ready"]:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker not ready in {START_TIMEOUT_S}s; {record}:\n{log_tail(log_path)}")
                time.sleep(0.2)
            tree = psutil.Process(proc.pid).children(recursive=True)
            yield Worker(record["url"], redis_url, log_path)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _, alive = psutil.wait_procs(tree, timeout=15)
            for p in alive:
                p.kill()
            r.close()
    assert not alive, f"vLLM processes left after the worker stopped: {alive}"
