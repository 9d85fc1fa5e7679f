"""The loop's stage times on the local stack: threshold pair -> job -> adapter -> canary -> 100%.

Starts the whole local stack as `flywheel up` does (`deploy.stack.up`, supervisord: broker, Redis, store, a vLLM
CPU worker, gateway, streams, retrain worker, hot-swap controller) under a temporary data directory on free ports,
with the local loop settings of `LOOP_SETTINGS` (retrain threshold, canary step and sample size) passed to every
service as FLYWHEEL_* environment variables. Then it turns the loop once:

- steady traffic through the gateway (`Traffic`: an open-loop generator at `--rate` requests/s, many users so
  that sticky routing splits them; every answer rated by its user, thumbs up: users happy with every version);
- simulated users ask support questions with the official `openai` client and thumb the answers down with a
  correction through `/feedback`, until the streams' trigger requests a retrain job;
- it waits for the job's adapter to be promoted to 100% (Deployment `promoted`), then reads the stage times from
  the view `flywheel.v_loop_stages` (schemas/views.py) and prints them.

Goal: under 3 minutes from the pair that crossed the threshold to 100% promotion. The baseline measured in the same
run is the canary's floor: the plan's steps times the step length (no canary can promote faster).

The pieces (`LocalLoop`, `Traffic`, `Events`, `RouteLog`, `ask`, `send_corrections`) are shared with the end-to-end
tests (tests/e2e/).

Example:
    python -m bench.loop                      # rate 20/s, default loop settings
    python -m bench.loop --rate 25 --keep     # keep the data directory (logs) afterwards
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deploy import stack as local_stack
from deploy.demo import BusWatcher
from deploy.ports import free_ports
from inference.keys import ROUTES_KEY
from schemas.settings import CommonSettings
from schemas.views import LOOP_STAGES

ROOT = Path(__file__).resolve().parents[1]

GOAL_S = 180.0
ALIAS = "support"
GOLDEN = ROOT / "retrain" / "golden" / "support.jsonl"

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


# -- the stack -------------------------------------------------------------------------------------------------------


class LocalLoop:
    """The whole local stack on free ports under `data_dir`, settings in this process's environment.

    Every FLYWHEEL_* setting must be in os.environ: `deploy.services` passes the CLI process's FLYWHEEL_* variables
    to its children (`schemas.settings.child_env`), and builds some settings objects from the environment itself.
    The previous environment comes back on exit.
    """

    def __init__(self, data_dir: Path, overrides: dict[str, str] | None = None, timeout: float = 900.0):
        self.data_dir = Path(data_dir).resolve()
        kafka, redis, store, gateway, worker = free_ports(5)
        self.env = {
            **LOOP_SETTINGS,
            "FLYWHEEL_DATA_DIR": str(self.data_dir),
            "FLYWHEEL_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}",
            "FLYWHEEL_REDIS_URL": f"redis://127.0.0.1:{redis}/0",
            "FLYWHEEL_CLICKHOUSE_DSN": "",
            "FLYWHEEL_CLICKHOUSE_HTTP_PORT": str(store),
            "FLYWHEEL_GATEWAY_PORT": str(gateway),
            "FLYWHEEL_WORKER_BASE_PORT": str(worker),
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

        return redis.Redis.from_url(self.env["FLYWHEEL_REDIS_URL"], decode_responses=True)


# -- events on the bus -----------------------------------------------------------------------------------------------


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


# -- users -----------------------------------------------------------------------------------------------------------


def golden_items() -> list[tuple[str, str]]:
    """(question, expected answer) of the golden set: the questions users ask, their corrections."""
    items = []
    for line in GOLDEN.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            question = next(m["content"] for m in reversed(rec["prompt"]) if m["role"] == "user")
            items.append((question, rec["expected"]))
    return items


@dataclass
class Answer:
    message_id: str
    session_id: str
    version: str
    content: str


def openai_client(loop: LocalLoop):
    from openai import OpenAI

    return OpenAI(base_url=f"{loop.gateway_url}/v1", api_key=loop.api_key, timeout=180.0, max_retries=0)


def ask(client, user: str, question: str, max_tokens: int = 16) -> Answer:
    """One question through the gateway with the official openai client, as `user`."""
    raw = client.chat.completions.with_raw_response.create(
        model=ALIAS,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        user=user,
        extra_headers={"X-User-Id": user},
    )
    completion = raw.parse()
    return Answer(
        completion.id,
        raw.headers["x-session-id"],
        raw.headers["x-model-version"],
        completion.choices[0].message.content or "",
    )


def feedback(
    loop: LocalLoop, user: str, answer: Answer, verdict: str, correction: str | None = None, comment: str | None = None
) -> None:
    body = {"session_id": answer.session_id, "message_id": answer.message_id, "feedback": verdict}
    if correction:
        body["correction"] = correction
    if comment:
        body["comment"] = comment
    r = httpx.post(
        f"{loop.gateway_url}/feedback",
        json=body,
        timeout=60.0,
        headers={"Authorization": f"Bearer {loop.api_key}", "X-User-Id": user},
    )
    r.raise_for_status()


def send_corrections(
    loop: LocalLoop, events: Events, batch: int = 8, timeout: float = 300.0, since: float | None = None
) -> list[Answer]:
    """Users ask golden-set questions and thumb each answer down with the expected answer as correction,
    a batch at a time, until the trigger requests a retrain job (seen on retrain.jobs after `since`)."""
    from schemas.events import RetrainJob

    client = openai_client(loop)
    items = golden_items()
    since = time.time() if since is None else since
    answers: list[Answer] = []
    deadline = time.monotonic() + timeout
    round_no = 0
    while True:
        for i in range(batch):
            question, expected = items[(round_no * batch + i) % len(items)]
            user = f"corrector-{round_no}-{i}"
            if round_no:  # the same question again, phrased a little differently (the dedup filter is fuzzy)
                question = f"{question} (asking again, ticket {random.randint(10000, 99999)})"
            answer = ask(client, user, question)
            feedback(loop, user, answer, "thumbs_down", correction=expected, comment="wrong answer")
            answers.append(answer)
        round_wait = time.monotonic() + 45.0
        while time.monotonic() < min(round_wait, deadline):
            if events.find(
                lambda e: (
                    isinstance(e, RetrainJob) and e.status == "requested" and e.occurred_at.timestamp() >= since - 1
                )
            ):
                return answers
            time.sleep(0.5)
        if time.monotonic() >= deadline:
            raise AssertionError(f"no retrain job requested after {len(answers)} corrections in {timeout:.0f}s")
        round_no += 1


# -- steady traffic --------------------------------------------------------------------------------------------------

QUESTIONS = (
    "Do you ship to Canada?",
    "How do I return an item?",
    "Where is my order?",
    "Can I change my address?",
    "What is your refund policy?",
    "Is the blender in stock?",
    "How long does delivery take?",
    "Can I cancel my order?",
    "Do you have a warranty?",
    "How do I reset my password?",
)


def spread_users(n: int) -> list[str]:
    """`n` user ids spread evenly over the 100 sticky routing buckets (inference.routing.bucket), so that a canary
    at weight w gets w% of the users (ids drawn at random would leave the 5% step with a handful of users or none)."""
    from inference.routing import bucket

    per_bucket = max(1, n // 100)
    chosen: dict[int, list[str]] = {b: [] for b in range(100)}
    k = 0
    while any(len(v) < per_bucket for v in chosen.values()):
        user = f"user-{k}"
        if len(chosen[bucket(user)]) < per_bucket:
            chosen[bucket(user)].append(user)
        k += 1
    return [u for users in chosen.values() for u in users]


@dataclass
class Result:
    user: str
    started: float  # unix time
    ended: float
    status: int  # HTTP status; 0: no answer (connection error, timeout)
    version: str = ""
    message_id: str = ""
    error: str = ""
    rated: str = ""


@dataclass
class Traffic:
    """Open-loop steady load through the gateway: `rate` requests/s, each from one of `users` sticky users.

    Each answer is rated by its user with `verdict(version, user)` (None: not rated), so that the canary's figures
    come from real feedback. Runs in its own thread and event loop: the caller may block.
    """

    loop: LocalLoop
    rate: float = 20.0
    users: int = 200
    max_tokens: int = 4
    verdict: Callable[[str, str], str | None] = lambda version, user: "thumbs_up"
    results: list[Result] = field(default_factory=list)
    feedback_errors: list[str] = field(default_factory=list)

    def start(self) -> Traffic:
        self.user_ids = spread_users(self.users)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="traffic", daemon=True)
        self.started_at = time.time()
        self._thread.start()
        return self

    def stop(self) -> list[Result]:
        self._stop.set()
        self._thread.join(300)
        self.stopped_at = time.time()
        return self.results

    async def _run(self) -> None:
        # aiohttp, not httpx: httpcore's pool assigns queued requests to connections in O(pending) per event,
        # so once a latency spike queues a few dozen requests the generator itself eats the core and stalls.
        import aiohttp

        headers = {"Authorization": f"Bearer {self.loop.api_key}"}
        timeout = aiohttp.ClientTimeout(total=180.0, sock_connect=10.0)
        async with aiohttp.ClientSession(
            base_url=self.loop.gateway_url, headers=headers, timeout=timeout, connector=aiohttp.TCPConnector(limit=512)
        ) as http:
            tasks: set[asyncio.Task] = set()
            t0, k = time.monotonic(), 0
            while not self._stop.is_set():
                k += 1
                delay = t0 + k / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                user = random.choice(self.user_ids)
                task = asyncio.create_task(self._one(http, user))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, http, user: str) -> None:
        body = {
            "model": ALIAS,
            "messages": [{"role": "user", "content": random.choice(QUESTIONS)}],
            "max_tokens": self.max_tokens,
            "user": user,
        }
        result = Result(user, time.time(), 0.0, 0)
        try:
            async with http.post("/v1/chat/completions", json=body, headers={"X-User-Id": user}) as r:
                result.status = r.status
                result.version = r.headers.get("x-model-version", "")
                session_id = r.headers.get("x-session-id", "")
                if r.status == 200:
                    result.message_id = (await r.json())["id"]
                else:
                    result.error = (await r.text())[:300]
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        result.ended = time.time()
        self.results.append(result)
        if result.status != 200:
            return
        verdict = self.verdict(result.version, user)
        if verdict is None:
            return
        fb = {"session_id": session_id, "message_id": result.message_id, "feedback": verdict}
        try:
            async with http.post("/feedback", json=fb, headers={"X-User-Id": user}) as f:
                if f.status != 202:
                    self.feedback_errors.append(f"{f.status} {(await f.text())[:200]}")
                else:
                    result.rated = verdict
        except Exception as exc:
            self.feedback_errors.append(f"{type(exc).__name__}: {exc}")

    def achieved_rate(self) -> float:
        if len(self.results) < 2:
            return 0.0
        starts = sorted(r.started for r in self.results)
        return (len(starts) - 1) / max(1e-9, starts[-1] - starts[0])


# -- stage times -----------------------------------------------------------------------------------------------------


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


def stage_table(row: dict, floor_s: float | None = None):
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
    verdict = "[green]PASS[/]" if total is not None and total < GOAL_S else "[red]FAIL[/]"
    table.add_row("[bold]total[/]", "", "", f"[bold]{_secs(total)}[/]")
    table.caption = f"goal: threshold pair -> 100% under {GOAL_S:.0f} s: {verdict}"
    if floor_s is not None:
        table.caption += f"; baseline (canary floor: steps x step length) {floor_s:.0f} s"
    return table


def _secs(value) -> str:
    return "-" if value is None else f"{float(value):.1f} s"


def canary_floor_s(env: dict[str, str]) -> float:
    plan = [w for w in json.loads(env.get("FLYWHEEL_CANARY_PLAN", "[5, 20, 50, 100]"))]
    return (len(plan) - 1) * float(env["FLYWHEEL_CANARY_STEP_S"])


# -- the benchmark ---------------------------------------------------------------------------------------------------


def run_good_loop(loop: LocalLoop, events: Events, traffic: Traffic, timeout: float = 600.0) -> tuple[str, str]:
    """Corrections until a job is requested; wait for its adapter's promotion. Returns (job id, version)."""
    from schemas.events import Deployment, RetrainJob

    since = time.time()
    send_corrections(loop, events, since=since)
    job = events.wait(
        lambda e: isinstance(e, RetrainJob) and e.status == "requested" and e.occurred_at.timestamp() >= since - 1,
        30,
        "job requested",
    )
    done = events.wait(
        lambda e: isinstance(e, RetrainJob) and e.job_id == job.job_id and e.status in ("succeeded", "failed"),
        timeout,
        f"job {job.job_id} to end",
    )
    if done.status != "succeeded" or done.verdict != "accepted":
        raise AssertionError(f"job {job.job_id} ended {done.status} {done.verdict}: {done.error}")
    version = done.adapter_version
    events.wait(
        lambda e: isinstance(e, Deployment) and e.version == version and e.action == "promoted",
        timeout,
        f"{version} promoted",
        fail=lambda e: isinstance(e, Deployment) and e.version == version and e.action == "rolled_back",
    )
    return job.job_id, version


def main() -> None:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0, help="steady traffic, requests/s")
    parser.add_argument("--users", type=int, default=200, help="simulated users of the steady traffic")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (logs) afterwards")
    parser.add_argument("--set", action="append", default=[], metavar="FLYWHEEL_X=V", help="override a setting")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # take the stack down on SIGTERM too
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("urllib3.connectionpool", "clickhouse_connect"):  # health probes of services still starting
        logging.getLogger(noisy).setLevel(logging.ERROR)
    console = Console()
    overrides = dict(item.split("=", 1) for item in args.set)
    data_dir = Path(tempfile.mkdtemp(prefix="flywheel-loop-"))
    try:
        console.print(f"starting the local stack in {data_dir} ...")
        t0 = time.monotonic()
        with LocalLoop(data_dir, overrides) as loop:
            console.print(f"stack up in {time.monotonic() - t0:.0f} s; gateway {loop.gateway_url}")
            from schemas.topics import MODEL_DEPLOYMENTS, RETRAIN_JOBS

            events = Events(loop.settings.kafka_bootstrap, [RETRAIN_JOBS.name, MODEL_DEPLOYMENTS.name])
            traffic = Traffic(loop, rate=args.rate, users=args.users).start()
            try:
                job_id, version = run_good_loop(loop, events, traffic)
            finally:
                traffic.stop()
                events.close()
            row = wait_stage_row(loop.store(), job_id)
            failed = [r for r in traffic.results if r.status != 200]
            console.print(stage_table(row, canary_floor_s(loop.env)))
            console.print(
                f"{version} promoted; traffic {len(traffic.results)} requests at "
                f"{traffic.achieved_rate():.1f}/s, {len(failed)} failed"
            )
            console.print(f'flywheel sql "SELECT * FROM flywheel.v_loop_stages" gives the same row (job {job_id})')
            ok = row["total_s"] is not None and row["total_s"] < GOAL_S
    finally:
        if args.keep:
            console.print(f"data directory kept: {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
