"""LoRA admin client for the vLLM workers: load, verify, drain, unload.

Calls each worker's `POST /v1/load_lora_adapter`, `GET /v1/models`, `POST /v1/chat/completions`
(a smoke prompt with `"model": <version>`), `GET /metrics` and `POST /v1/unload_lora_adapter`.
Needs `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` on the servers (inference/worker/spec.py sets it).
Reads the ready workers from Redis (`flywheel:workers:*`, inference/worker/spec.py).

Concurrency: one asyncio lock per adapter name (as vLLM's own serving layer does), so a load and an
unload of the same version never interleave, while different versions proceed in parallel.
Errors: `validate_adapter_dir` returns an error string (a validation helper); load, verify and
unload raise `AdapterLoadError` naming the worker and the reason (control paths raise).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import defaultdict
from pathlib import Path

import httpx
from redis.asyncio import Redis

from inference.keys import WORKERS_PATTERN
from schemas.artifacts import manifest_problem
from schemas.settings import bearer

log = logging.getLogger(__name__)

SMOKE_MESSAGES = [{"role": "user", "content": "Hello, where is my order?"}]
_METRIC_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class AdapterLoadError(RuntimeError):
    """An adapter could not be loaded, verified or unloaded on a worker."""

    def __init__(self, version: str, worker: str, reason: str):
        super().__init__(f"adapter {version!r} on {worker}: {reason}")
        self.version = version
        self.worker = worker
        self.reason = reason


def validate_adapter_dir(path: str, registered: bool = False) -> str | None:
    """Why `path` cannot be a LoRA adapter every worker loads, or None. With `registered`, it must also be an
    intact registered version: its manifest present and every file's sha256 as recorded (schemas.artifacts)."""
    p = Path(path)
    if not p.is_absolute():
        return f"adapter path must be absolute (workers resolve it themselves): {path}"
    if not (p / "adapter_config.json").is_file():
        return f"no adapter_config.json in {path}"
    if not any((p / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        return f"no adapter weights in {path}"
    return manifest_problem(p) if registered else None


async def ready_workers(redis: Redis) -> list[str]:
    """URLs of the workers whose readiness record says ready."""
    keys = [k async for k in redis.scan_iter(match=WORKERS_PATTERN, count=100)]
    urls = []
    for raw in (await redis.mget(keys)) if keys else []:
        if not raw:
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if record.get("ready") and record.get("url"):
            urls.append(record["url"])
    return sorted(set(urls))


async def wait_advertised(redis: Redis, version: str, workers: list[str], timeout_s: float) -> None:
    """Wait until every worker's readiness record lists `version` (or `timeout_s` passes).

    The gateway sends a version's requests only to workers whose record lists it (inference/gateway/router.py), and
    records are rewritten once per worker heartbeat: routing the canary as soon as vLLM has loaded it made
    the canary's first requests fail ("no ready worker has model version ... loaded yet"), and those errors
    rolled good canaries back."""
    deadline = time.monotonic() + timeout_s
    pending = set(workers)
    while pending:
        keys = [k async for k in redis.scan_iter(match=WORKERS_PATTERN, count=100)]
        for raw in (await redis.mget(keys)) if keys else []:
            try:
                record = json.loads(raw) if raw else {}
            except ValueError:
                continue
            # Only records kept by a worker's heartbeat (inference/worker/wrapper.py) are rewritten with `adapters`.
            if record.get("url") in pending and (
                version in (record.get("adapters") or []) or "heartbeat_at" not in record
            ):
                pending.discard(record["url"])
        if not pending:
            break
        if time.monotonic() > deadline:  # the adapter answers on every worker (verified): route it anyway
            log.warning(
                "workers do not advertise the adapter yet", extra={"version": version, "workers": sorted(pending)}
            )
            break
        await asyncio.sleep(0.5)


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: (name, labels, value)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        samples.append((m["name"], dict(_LABEL.findall(m["labels"] or "")), value))
    return samples


def busy_with(samples: list[tuple[str, dict[str, str], float]], version: str) -> int | None:
    """Requests of `version` running or waiting on a worker, from its /metrics samples.

    vLLM's `vllm:lora_requests_info` gauge has one sample per state change whose value is the time of
    that change and whose labels list the running and waiting adapters; the latest sample is the
    current state. `vllm:num_requests_running`/`_waiting` at 0 mean idle whatever that gauge says;
    without the LoRA gauge every running or waiting request counts (a bound from above). None when
    neither metric is exposed.
    """
    totals = [value for name, _, value in samples if name in ("vllm:num_requests_running", "vllm:num_requests_waiting")]
    total = int(sum(totals)) if totals else None
    if total == 0:  # an idle engine serves no version (the LoRA gauge keeps its last state when idle)
        return 0
    lora = [(value, labels) for name, labels, value in samples if name == "vllm:lora_requests_info"]
    if lora:
        _, labels = max(lora, key=lambda s: s[0])
        names = [
            n for key in ("running_lora_adapters", "waiting_lora_adapters") for n in labels.get(key, "").split(",") if n
        ]
        return names.count(version)
    return total


class AdapterAdmin:
    """Load, verify, drain and unload LoRA adapters on vLLM workers."""

    def __init__(
        self,
        timeout_s: float = 60.0,
        client: httpx.AsyncClient | None = None,
        registered: bool = True,
        token: str = "",
    ):
        """`token`: the workers' bearer token (CommonSettings.worker_token)."""
        self.http = client or httpx.AsyncClient(timeout=timeout_s, headers=bearer(token))
        self.registered = registered  # load only intact registered versions (their manifest checked)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def load(self, version: str, path: str, workers: list[str]) -> None:
        """Load `version` from `path` on every worker and verify it there; AdapterLoadError on the first failure."""
        error = validate_adapter_dir(path, self.registered)
        if error:
            raise AdapterLoadError(version, "-", error)
        if not workers:
            raise AdapterLoadError(version, "-", "no ready worker")
        async with self._locks[version]:
            await asyncio.gather(*(self._load_one(version, path, w) for w in workers))

    async def _load_one(self, version: str, path: str, worker: str) -> None:
        try:
            r = await self.http.post(f"{worker}/v1/load_lora_adapter", json={"lora_name": version, "lora_path": path})
        except httpx.HTTPError as exc:
            raise AdapterLoadError(version, worker, f"load call failed: {exc!r}") from exc
        if r.status_code != 200 and not (r.status_code == 400 and "already been loaded" in r.text):
            raise AdapterLoadError(version, worker, f"load: HTTP {r.status_code} {r.text[:300]}")
        await self._verify_one(version, worker)
        log.info("adapter loaded and verified", extra={"version": version, "worker": worker})

    async def verify(self, version: str, workers: list[str]) -> None:
        """`version` is listed by /v1/models and answers a smoke prompt on every worker."""
        async with self._locks[version]:
            await asyncio.gather(*(self._verify_one(version, w) for w in workers))

    async def _verify_one(self, version: str, worker: str) -> None:
        try:
            models = await self.http.get(f"{worker}/v1/models")
            if models.status_code != 200:
                raise AdapterLoadError(version, worker, f"/v1/models: HTTP {models.status_code}")
            if version not in {card["id"] for card in models.json().get("data", [])}:
                raise AdapterLoadError(version, worker, "not listed by /v1/models")
            smoke = await self.http.post(
                f"{worker}/v1/chat/completions",
                json={"model": version, "messages": SMOKE_MESSAGES, "max_tokens": 4, "temperature": 0},
            )
        except httpx.HTTPError as exc:
            raise AdapterLoadError(version, worker, f"verify call failed: {exc!r}") from exc
        if smoke.status_code != 200:
            raise AdapterLoadError(version, worker, f"smoke prompt: HTTP {smoke.status_code} {smoke.text[:300]}")
        body = smoke.json()
        if body.get("model") != version or not body.get("choices"):
            raise AdapterLoadError(version, worker, f"smoke prompt answered by {body.get('model')!r}")

    async def loaded(self, worker: str) -> list[str]:
        r = await self.http.get(f"{worker}/v1/models")
        r.raise_for_status()
        return [card["id"] for card in r.json()["data"] if card.get("parent")]

    async def in_flight(self, version: str, worker: str) -> int | None:
        """Requests of `version` running or waiting on `worker` (None when the worker does not say)."""
        r = await self.http.get(f"{worker}/metrics")
        r.raise_for_status()
        return busy_with(parse_metrics(r.text), version)

    async def wait_drained(self, version: str, workers: list[str], timeout_s: float, poll_s: float = 0.5) -> bool:
        """Wait until no worker runs or queues a request of `version`; False if `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        pending = list(workers)
        while pending:
            still = []
            for worker in pending:
                try:
                    busy = await self.in_flight(version, worker)
                except httpx.HTTPError:
                    busy = None  # a worker that cannot answer serves nothing to drain
                if busy:
                    still.append(worker)
            pending = still
            if pending:
                if time.monotonic() > deadline:
                    log.warning("adapter not drained in time", extra={"version": version, "workers": pending})
                    return False
                await asyncio.sleep(poll_s)
        return True

    async def unload(self, version: str, workers: list[str]) -> None:
        """Unload `version` from every worker (idempotent: an adapter already gone is fine)."""
        async with self._locks[version]:
            await asyncio.gather(*(self._unload_one(version, w) for w in workers))

    async def _unload_one(self, version: str, worker: str) -> None:
        try:
            r = await self.http.post(f"{worker}/v1/unload_lora_adapter", json={"lora_name": version})
        except httpx.HTTPError as exc:
            raise AdapterLoadError(version, worker, f"unload call failed: {exc!r}") from exc
        # vLLM answers 404 "The lora adapter 'X' cannot be found." for a name it does not hold.
        if r.status_code in (200, 404):
            log.info("adapter unloaded", extra={"version": version, "worker": worker})
            return
        raise AdapterLoadError(version, worker, f"unload: HTTP {r.status_code} {r.text[:300]}")
