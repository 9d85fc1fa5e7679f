"""One vLLM CPU worker for this folder's modules (see worker.py): a vLLM start costs about 40 s on 2 cores."""

from __future__ import annotations

import pytest
import redis

from .worker import REDIS_DB, Worker, running_worker


@pytest.fixture(scope="package")
def worker_db(stack) -> str:
    """The worker's Redis database, empty before and after."""
    url = stack.redis_dsn.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    r = redis.Redis.from_url(url)
    r.flushdb()
    yield url
    r.flushdb()
    r.close()


@pytest.fixture(scope="package")
def worker(tiny_model, worker_db, tmp_path_factory) -> Worker:
    pytest.importorskip("vllm")
    with running_worker(tiny_model, worker_db, tmp_path_factory.mktemp("worker") / "worker.log") as w:
        yield w
