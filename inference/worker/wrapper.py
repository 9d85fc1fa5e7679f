"""Readiness wrapper around one vLLM OpenAI server: `python -m inference.worker.wrapper --index N`.

Reads: WorkerSettings (FLYWHEEL_*), the Redis hashes `flywheel:routes:<alias>` and
`flywheel:adapters`. Writes: `flywheel:workers:<index>` (JSON readiness record with a TTL;
layout in inference/worker/spec.py). Calls the child's `/health`, `/v1/models` and
`/v1/load_lora_adapter`.

Life cycle:
1. start the vLLM server (vllm_command) as a child; it dies with this process (PDEATHSIG);
2. wait for `/health`; meanwhile the record says ready=false;
3. every heartbeat: check `/health`, read the routes, load each routed adapter not yet listed by `/v1/models`,
   read `/v1/models` again, write the record (ready only if healthy and nothing is missing)
   with a TTL of a few heartbeats;
4. when the child exits, delete the record and exit with a failure status, so the supervisor
   restarts the wrapper, which loads the adapters again before it says ready;
5. on SIGTERM/SIGINT, delete the record, forward the signal to the child, wait, exit 0.

Example:
    FLYWHEEL_BASE_MODEL=.flywheel/models/tiny FLYWHEEL_REDIS_URL=redis://127.0.0.1:6379/0 \
        python -m inference.worker.wrapper --index 0
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import redis

from inference.adapters import AdapterLoadError
from inference.keys import ADAPTERS_KEY, ROUTES_PATTERN, worker_key
from inference.worker.spec import (
    WorkerSettings,
    encode_record,
    readiness_record,
    routed_adapters,
    vllm_command,
    vllm_env,
)
from schemas.logs import setup_logging
from schemas.settings import bearer

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM if this wrapper dies, even by SIGKILL, so a restarted
    # wrapper never finds an orphaned server holding its port.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class VllmClient:
    """The few calls of the vLLM server that the wrapper needs."""

    def __init__(self, base_url: str, timeout: float = 30.0, token: str = ""):
        self.http = httpx.Client(base_url=base_url, timeout=timeout, headers=bearer(token))

    def healthy(self) -> bool:
        try:
            return self.http.get("/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def loaded_adapters(self, served_name: str) -> list[str]:
        cards = self.http.get("/v1/models").raise_for_status().json()["data"]
        return sorted(c["id"] for c in cards if c["id"] != served_name)

    def load_adapter(self, name: str, path: str) -> None:
        r = self.http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        if r.status_code == 200 or (r.status_code == 400 and "already been loaded" in r.text):
            return
        # the worker stays not ready for that version and retries
        raise AdapterLoadError(name, str(self.http.base_url), f"load from {path}: HTTP {r.status_code} {r.text[:300]}")


class Worker:
    def __init__(self, settings: WorkerSettings, index: int):
        self.settings = settings
        self.index = index
        self.key = worker_key(index)
        self.redis = redis.Redis.from_url(settings.redis_dsn, decode_responses=True)
        self.token = settings.worker_token()
        self.vllm = VllmClient(settings.url(index), token=self.token)
        self.stopping = threading.Event()
        self.child: subprocess.Popen | None = None
        self.started_at = time.time()
        self.healthy = False
        self.ever_healthy = False

    def start_child(self) -> None:
        cmd = vllm_command(self.settings, self.index)
        env = {**os.environ, **vllm_env(self.settings, self.index)}
        if self.token:  # vLLM then refuses /v1/... without it (the environment, not `ps`'s command line)
            env["VLLM_API_KEY"] = self.token
        log.info("starting vLLM", extra={"index": self.index, "cmd": " ".join(cmd)})
        # Own process group: vLLM's engine core is a grandchild that outlives a killed API
        # server; the group lets us reap it (see _reap_group).
        self.child = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent, start_new_session=True)

    def sync_adapters(self) -> tuple[list[str], list[str]]:
        """Load every routed adapter that the server lacks; return (loaded, wanted)."""
        base = self.settings.served_model_name
        routes: dict[str, str] = {}
        for key in self.redis.scan_iter(match=ROUTES_PATTERN, count=100):
            routes.update(self.redis.hgetall(key))
        registry = self.redis.hgetall(ADAPTERS_KEY) if routes else {}
        wanted, unknown = routed_adapters(routes, registry, base)
        for version in unknown:
            log.error("routed adapter has no path", extra={"version": version, "key": ADAPTERS_KEY})
        loaded = self.vllm.loaded_adapters(base)
        for version, path in wanted.items():
            if version in loaded:
                continue
            try:
                self.vllm.load_adapter(version, path)
                log.info("loaded adapter", extra={"version": version, "path": path, "index": self.index})
            except AdapterLoadError as e:
                log.error(str(e), extra={"version": version, "index": self.index})
        if wanted:
            loaded = self.vllm.loaded_adapters(base)
        return loaded, [*wanted, *unknown]

    def heartbeat(self) -> None:
        loaded: list[str] = []
        wanted: list[str] = []
        was_healthy, self.healthy = self.healthy, self.vllm.healthy()  # checked every beat: a hung server drops out
        if self.healthy != was_healthy:
            log.info(
                "vLLM %s",
                "healthy" if self.healthy else "unhealthy",
                extra={"index": self.index, "after_s": round(time.time() - self.started_at, 1)},
            )
        if self.healthy:
            self.ever_healthy = True
            loaded, wanted = self.sync_adapters()
        record = readiness_record(
            self.settings,
            self.index,
            healthy=self.healthy,
            loaded=loaded,
            wanted=wanted,
            started_at=self.started_at,
            pid=os.getpid(),
        )
        self.redis.set(self.key, encode_record(record), ex=self.settings.ready_ttl_s)

    def run(self) -> int:
        self.start_child()
        assert self.child is not None
        deadline = time.monotonic() + self.settings.start_timeout_s
        period = self.settings.heartbeat_s
        try:
            while not self.stopping.is_set():
                rc = self.child.poll()
                if rc is not None:
                    log.error("vLLM exited", extra={"index": self.index, "rc": rc})
                    self._clear_record()
                    self._reap_group()
                    return rc if rc > 0 else 1  # always a failure: the supervisor restarts us
                if not self.ever_healthy and time.monotonic() > deadline:
                    log.error("vLLM not healthy in time", extra={"timeout_s": self.settings.start_timeout_s})
                    return 1
                try:
                    self.heartbeat()
                except (redis.RedisError, httpx.HTTPError) as e:
                    # Redis down or the server busy: skip a beat; the record's TTL says the rest.
                    log.warning("heartbeat failed", extra={"index": self.index, "error": repr(e)})
                # Poll fast while starting (readiness matters), at the heartbeat period after.
                self.stopping.wait(period if self.ever_healthy else min(period, 0.5))
            return 0
        finally:
            self._clear_record()
            self._stop_child()

    def _clear_record(self) -> None:
        try:
            self.redis.delete(self.key)
        except redis.RedisError:
            pass

    def _stop_child(self, wait_s: float = 20.0) -> None:
        if self.child is None:
            return
        if self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)  # vLLM shuts its engine down on SIGTERM
            try:
                self.child.wait(wait_s)
            except subprocess.TimeoutExpired:
                log.warning("vLLM ignored SIGTERM; killing", extra={"index": self.index})
                self.child.kill()
                self.child.wait()
        self._reap_group()

    def _reap_group(self, grace_s: float = 5.0) -> None:
        """Stop what is left of the child's process group: a killed API server leaves its engine core."""
        assert self.child is not None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.child.pid, sig)
            except (ProcessLookupError, PermissionError):
                return  # the group is empty
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                try:
                    os.killpg(self.child.pid, 0)
                except (ProcessLookupError, PermissionError):
                    return
                time.sleep(0.1)
        log.warning("processes of the vLLM group still present", extra={"pgid": self.child.pid})

    def request_stop(self, signum: int, _frame) -> None:
        log.info("stopping on a signal", extra={"index": self.index, "signal": signum})
        self._clear_record()  # leave the gateway's view before the server stops answering
        self.stopping.set()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, required=True, help="worker index (port = base port + index)")
    args = parser.parse_args(argv)
    settings = WorkerSettings()
    setup_logging(settings.log_level)
    worker = Worker(settings, args.index)
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    sys.exit(worker.run())


if __name__ == "__main__":
    main()
