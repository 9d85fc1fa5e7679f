"""A whole local stack on free ports under a directory, for the benchmarks and the end-to-end tests.

`LocalLoop` starts everything as `flywheel up` does (`deploy.stack.up`, supervisord: broker, Redis, store, a vLLM
CPU worker, gateway, streams, retrain worker, hot-swap controller) under its own data directory, with the local
loop's small settings (`LOOP_SETTINGS`: retrain threshold, canary steps and samples) passed to every service as
FLYWHEEL_* environment variables. `Events` and `RouteLog` watch the bus and the routing table; `stage_rows` reads
a job's stage times from `flywheel.v_loop_stages`. `start_tansu` starts a lone throwaway broker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from deploy import stack as local_stack
from deploy.demo import BusWatcher
from deploy.ports import free_ports
from deploy.services import tansu_command
from inference.keys import ROUTES_KEY
from schemas.settings import CommonSettings
from schemas.views import LOOP_STAGES

ALIAS = "support"

# The local loop: small thresholds and short canary steps, so the loop turns in minutes on 2 shared cores.
LOOP_SETTINGS: dict[str, str] = {
    "FLYWHEEL_WORKERS": "1",
    "FLYWHEEL_STREAMS_RETRAIN_THRESHOLD": "8",
    # One automatic job per run: later thumbs-downs (a bad canary's) must not start another job mid-test.
    "FLYWHEEL_STREAMS_RETRAIN_COOLDOWN_S": "3600",
    "FLYWHEEL_STREAMS_WINDOW_SECONDS": "[10]",
    "FLYWHEEL_CANARY_STEP_S": "5",
    "FLYWHEEL_CANARY_MIN_STEP_SAMPLES": "5",
    "FLYWHEEL_CANARY_POLL_S": "1",
    # The first weight follows the measured traffic (22/s gives 5%); a short window, because the steady traffic
    # may have run for less than the default 120 s when the first adapter is ready.
    "FLYWHEEL_CANARY_RATE_WINDOW_S": "30",
    "FLYWHEEL_RETRAIN_PAIRS_WAIT_S": "120",
    "FLYWHEEL_LOG_LEVEL": "INFO",
    "HF_HUB_OFFLINE": "1",
}


# Services whose /metrics port is off by default; the sandbox gives each a free one.
EXPORTERS = {
    "controller": "FLYWHEEL_CONTROLLER_METRICS_PORT",
    "retrain": "FLYWHEEL_RETRAIN_METRICS_PORT",
    "streams": "FLYWHEEL_STREAMS_METRICS_PORT",
}


class LocalLoop:
    """The whole local stack on free ports under `data_dir`, settings in this process's environment.

    Every FLYWHEEL_* setting must be in os.environ: `deploy.services` passes the CLI process's FLYWHEEL_* variables
    to its children (`schemas.settings.child_env`), and builds some settings objects from the environment itself.
    The previous environment comes back on exit.
    """

    def __init__(self, data_dir: Path, overrides: dict[str, str] | None = None, timeout: float = 900.0):
        self.data_dir = Path(data_dir).resolve()
        kafka, redis, store, gateway, worker, *exporters = free_ports(5 + len(EXPORTERS))
        self.env = {
            **LOOP_SETTINGS,
            "FLYWHEEL_DATA_DIR": str(self.data_dir),
            "FLYWHEEL_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}",
            "FLYWHEEL_REDIS_URL": f"redis://127.0.0.1:{redis}/0",
            "FLYWHEEL_CLICKHOUSE_DSN": "",
            "FLYWHEEL_CLICKHOUSE_HTTP_PORT": str(store),
            "FLYWHEEL_GATEWAY_PORT": str(gateway),
            "FLYWHEEL_WORKER_BASE_PORT": str(worker),
            **{setting: str(port) for setting, port in zip(EXPORTERS.values(), exporters, strict=True)},
            **(overrides or {}),
        }
        self.timeout = timeout
        self._saved: dict[str, str | None] = {}
        self.settings: CommonSettings | None = None

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.env['FLYWHEEL_GATEWAY_PORT']}"

    @property
    def worker_url(self) -> str:
        return f"http://127.0.0.1:{self.env['FLYWHEEL_WORKER_BASE_PORT']}"

    def worker_headers(self) -> dict[str, str]:
        """What a direct call to a worker's /v1/... needs: the stack's worker token."""
        from schemas.settings import bearer

        return bearer(self.settings.worker_token())

    def metrics_urls(self) -> dict[str, str]:
        """Every service's Prometheus endpoint (the gateway's needs an admin key; the store's serves the sink's)."""
        ports = {name: self.env[setting] for name, setting in EXPORTERS.items()}
        return {
            "gateway": f"{self.gateway_url}/metrics",
            "sink": f"http://127.0.0.1:{self.env['FLYWHEEL_CLICKHOUSE_HTTP_PORT']}/metrics",
            **{name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()},
        }

    @property
    def api_key(self) -> str:
        return (self.data_dir / "dev-api-key").read_text().strip()

    def child_env(self) -> dict[str, str]:
        """The environment a helper process (the `flywheel` CLI) needs to see this stack."""
        return {**os.environ, **self.env}

    def __enter__(self) -> LocalLoop:
        for name, value in self.env.items():
            self._saved[name] = os.environ.get(name)
            os.environ[name] = value
        try:
            self.settings = CommonSettings()
            from retrain.base_model import ensure_base_model

            ensure_base_model(self.settings)
            local_stack.up(self.settings, infra_only=False, timeout=self.timeout)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.settings is not None:
                local_stack.down(self.settings, timeout=60.0)
        finally:
            self._restore()

    def _restore(self) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved.clear()

    def store(self):
        from schemas import store

        return store.connect(self.settings.query_url)

    def redis(self):
        import redis

        return redis.Redis.from_url(self.settings.redis_dsn, decode_responses=True)


def start_listening(
    command: list[str] | tuple[str, ...], port: int, env: dict | None = None, timeout: float = 20.0
) -> subprocess.Popen:
    """Start `command` (output discarded) and return it once it accepts connections on 127.0.0.1:`port`."""
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})}
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{command[0]} did not start listening within {timeout:g} s")


def start_tansu(
    port: int | None = None, timeout: float = 20.0, storage: str = "memory://tansu/", env: dict | None = None
) -> tuple[subprocess.Popen, str]:
    """A lone Tansu broker on `port` (default: a free one), in memory unless `storage` says otherwise (`env`: the
    object store's AWS_* variables); the process and its bootstrap address once it listens."""
    if port is None:
        (port,) = free_ports(1)
    return start_listening(tansu_command("127.0.0.1", port, storage), port, env, timeout), f"127.0.0.1:{port}"


class Events(BusWatcher):
    """Every event of some topics from the beginning (the demo's consumer thread), with waits for the tests."""

    def __init__(self, bootstrap: str, topics: list[str]):
        super().__init__(bootstrap, topics, since=0.0)

    def find(self, predicate: Callable) -> list:
        return [e for e in self.snapshot() if predicate(e)]

    def wait(self, predicate: Callable, timeout: float, what: str, fail: Callable | None = None):
        """The first event matching `predicate`; raises after `timeout` s or when an event matches `fail`."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.snapshot()
            for event in events:
                if fail is not None and fail(event):
                    raise AssertionError(f"while waiting for {what}: {event!r}")
                if predicate(event):
                    return event
            if time.monotonic() > deadline:
                seen = [_describe(e) for e in events if type(e).__name__ in ("RetrainJob", "Deployment")]
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; saw {seen}")
            time.sleep(0.2)


def _describe(event) -> str:
    kind = getattr(event, "status", None) or getattr(event, "action", "")
    extra = getattr(event, "version", None) or getattr(event, "adapter_version", None) or ""
    weight = getattr(event, "weight", None)
    return f"{type(event).__name__}:{kind}:{extra}" + (f"@{weight}%" if weight is not None else "")


class RouteLog:
    """The routing table `flywheel:routes:<alias>` sampled every `period` s: [(unix time, {version: weight})].

    An empty or missing table routes the alias to the base model (inference.gateway.router.RouteTable.versions): it is
    sampled as {base_model: 100}.
    """

    def __init__(self, redis_client, base_model: str, alias: str = ALIAS, period: float = 0.2):
        self.redis = redis_client
        self.key = ROUTES_KEY.format(alias=alias)
        self.base_model = base_model
        self.period = period
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="routes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                raw = self.redis.hgetall(self.key)
                routes = {v: int(w) for v, w in raw.items() if int(w) > 0}
                self.samples.append((time.time(), routes or {self.base_model: 100}))
            except Exception:  # a transient Redis error is a missing sample, not a test failure
                pass
            self._stop.wait(self.period)

    def routed_between(self, start: float, end: float) -> set[str]:
        """Versions routed at any sample in [start, end], plus the last sample before `start`."""
        versions: set[str] = set()
        before = None
        for at, routes in self.samples:
            if at < start:
                before = routes
            elif at <= end:
                versions |= set(routes)
        if before is not None:
            versions |= set(before)
        return versions

    def max_weight(self, version: str) -> int:
        return max((routes.get(version, 0) for _, routes in self.samples), default=0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def stage_rows(store, job_id: str | None = None) -> list[dict]:
    where = "WHERE job_id = %(job)s " if job_id else ""
    result = store.query(
        f"SELECT * FROM flywheel.v_loop_stages {where}ORDER BY requested_at",
        parameters={"job": job_id} if job_id else None,
    )
    return list(result.named_results())


def wait_stage_row(store, job_id: str, column: str = "promoted_at", timeout: float = 60.0) -> dict:
    """The job's row once `column` is set (the sink lags the bus by a flush interval or so)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = stage_rows(store, job_id)
        if rows and rows[0].get(column) is not None and rows[0].get("threshold_pair_at") is not None:
            return rows[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"v_loop_stages has no {column} for job {job_id} after {timeout:.0f}s: {rows}")
        time.sleep(1.0)


def stage_table(row: dict, goal_s: float | None = None, floor_s: float | None = None):
    """The job's stage times as a rich table; with `goal_s`, whether the whole turn met it."""
    from rich.table import Table

    table = Table(title=f"loop stage times, job {row['job_id'][:8]} -> {row.get('adapter_version')}")
    table.add_column("stage")
    table.add_column("at (UTC)")
    table.add_column("since previous", justify="right")
    table.add_column("since threshold pair", justify="right")
    start = row["threshold_pair_at"]
    for name, at_col, dur_col in LOOP_STAGES:
        at = row.get(at_col)
        dur = row.get(dur_col) if dur_col else None
        since = (at - start).total_seconds() if at is not None and start is not None else None
        table.add_row(name, at.strftime("%H:%M:%S.%f")[:-3] if at else "-", _secs(dur), _secs(since))
    total = row.get("total_s")
    table.add_row("[bold]total[/]", "", "", f"[bold]{_secs(total)}[/]")
    notes = []
    if goal_s is not None:
        verdict = "[green]PASS[/]" if total is not None and total < goal_s else "[red]FAIL[/]"
        notes.append(f"goal: threshold pair -> 100% under {goal_s:.0f} s: {verdict}")
    if floor_s is not None:
        notes.append(f"baseline (canary floor: steps x step length) {floor_s:.0f} s")
    table.caption = "; ".join(notes) or None
    return table


def _secs(value) -> str:
    return "-" if value is None else f"{float(value):.1f} s"
