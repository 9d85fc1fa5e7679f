"""`flywheel demo`: the whole loop, shown, against a running local stack.

Simulated users ask the demo shop's questions (`retrain.demo`) through the gateway and judge every answer against
the shop's reference answer with ROUGE-L: a wrong answer to one of the corrected loop questions gets a thumbs-down
with the reference answer as the correction (what feeds DPO pairs), any other wrong answer a plain thumbs-down, a
right one a thumbs-up. The traffic keeps going while the stack builds pairs, trains, gates and canaries the adapter,
until the version trained from this run's pairs is promoted or rolled back (read from Kafka), or a timeout.
With `bad=True` the demo trains an adapter itself on the run's pairs with chosen and rejected swapped and announces
it, so that the same traffic shows a rollback. `deploy.demo_report` turns what was seen into the report.

Pure pieces (no I/O; unit-tested): `TrafficPlan`, `judge`, `LoopTracker`. The I/O pieces: `Gateway`, `BusWatcher`,
`Traffic`, `run_demo`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
import httpx

from retrain.demo import QA
from retrain.rouge import rouge_l

logger = logging.getLogger(__name__)

CORRECT_AT = 0.7  # ROUGE-L at or above which a user takes an answer as right
LEARNED_AT = 0.8  # ROUGE-L at or above which an answer after the loop counts as "answered with the correction"
USER_PREFIX = "demo-user-"
DEPLOYMENT_ACTIONS = ("adapter_ready", "canary_started", "hold", "step", "promoted", "rolled_back")


# -- the traffic plan and the judgement (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    user: str
    qa: QA
    kind: str  # "loop": a loop intent's asked question; "other": another intent's test question
    corrects: bool  # a wrong answer to it gets the reference answer as the correction


@dataclass(frozen=True)
class Judgement:
    score: float
    verdict: str  # thumbs_up | thumbs_down
    correction: str | None


def judge(answer: str, ask: Ask, correcting: bool = True) -> Judgement:
    """A user's verdict on `answer`: right at ROUGE-L >= CORRECT_AT against the reference answer."""
    score = rouge_l(answer, ask.qa.answer)
    if score >= CORRECT_AT:
        return Judgement(score, "thumbs_up", None)
    return Judgement(score, "thumbs_down", ask.qa.answer if ask.corrects and correcting else None)


def select_corrected(asked: Sequence[QA], wanted: Iterable[str] = ()) -> list[QA]:
    """The asked loop questions whose wrong answers get corrections: those whose intent id or text is in `wanted`
    (all of them when `wanted` is empty); ValueError names what matched nothing."""
    wanted = [w.strip() for w in wanted if w.strip()]
    if not wanted:
        return list(asked)
    unknown = [w for w in wanted if not any(w in (qa.intent, qa.question) for qa in asked)]
    if unknown:
        raise ValueError(f"not a loop intent or asked loop question: {', '.join(unknown)}")
    return [qa for qa in asked if qa.intent in wanted or qa.question in wanted]


class TrafficPlan:
    """Who asks what, in order: each ask a loop question with probability `loop_share`, else another intent's test
    question, from one of `users` users (`demo-user-<n>`). Seeded: the same arguments give the same sequence."""

    def __init__(self, loop_questions: Sequence[QA], other_questions: Sequence[QA], corrected: Sequence[QA],
                 users: int = 20, loop_share: float = 0.5, seed: int = 0):
        if users < 1:
            raise ValueError("users must be at least 1")
        if not 0 <= loop_share <= 1:
            raise ValueError("loop_share must be between 0 and 1")
        if not loop_questions and not other_questions:
            raise ValueError("no questions to ask")
        self.loop_questions = list(loop_questions)
        self.other_questions = list(other_questions)
        self.corrected = {qa.question for qa in corrected}
        self.users = [f"{USER_PREFIX}{n}" for n in range(users)]
        self.loop_share = loop_share if self.other_questions else 1.0
        if not self.loop_questions:
            self.loop_share = 0.0
        self._rng = random.Random(seed)

    def next(self) -> Ask:
        user = self._rng.choice(self.users)
        if self._rng.random() < self.loop_share:
            qa = self._rng.choice(self.loop_questions)
            return Ask(user, qa, "loop", qa.question in self.corrected)
        return Ask(user, self._rng.choice(self.other_questions), "other", False)

    def take(self, n: int) -> list[Ask]:
        return [self.next() for _ in range(n)]


# -- the loop's progress, from bus events (pure) ---------------------------------------------------------------------


@dataclass
class LoopState:
    pair_ids: set[str] = field(default_factory=set)
    pairs: list = field(default_factory=list)  # this run's DPOPair events
    job_id: str | None = None
    job_status: str | None = None
    version: str | None = None  # the adapter trained from this run's pairs
    gate_verdict: str | None = None
    deployments: list = field(default_factory=list)  # Deployment events of `version`
    all_deployments: list = field(default_factory=list)  # every Deployment event of the alias in the run
    outcome: str | None = None  # promoted | rolled_back | rejected | failed
    reason: str = ""

    @property
    def last_deployment(self):
        return self.all_deployments[-1] if self.all_deployments else None


class LoopTracker:
    """Follows the run's pairs to their job, the job's adapter to its rollout's end."""

    def __init__(self, alias: str):
        self.alias = alias
        self.target_version: str | None = None  # set for an adapter announced by the demo itself (--bad)

    def state(self, events: Sequence, message_ids: set[str]) -> LoopState:
        from schemas.events import Deployment, DPOPair, RetrainJob

        s = LoopState()
        for e in events:
            if isinstance(e, DPOPair) and e.message_id in message_ids and e.pair_id not in s.pair_ids:
                s.pair_ids.add(e.pair_id)
                s.pairs.append(e)
            elif isinstance(e, Deployment) and e.alias == self.alias:
                s.all_deployments.append(e)
        if self.target_version is None:
            for e in events:
                if not isinstance(e, RetrainJob):
                    continue
                if s.job_id is None and e.status == "requested" and s.pair_ids & set(e.pair_ids):
                    s.job_id, s.job_status = e.job_id, e.status
                elif s.job_id == e.job_id:
                    s.job_status = e.status
                    if e.status == "succeeded":
                        s.version, s.gate_verdict = e.adapter_version, e.verdict
                    elif e.status == "failed":
                        s.outcome, s.reason = "failed", e.error or ""
            if s.job_status == "succeeded" and s.gate_verdict == "rejected":
                s.outcome = "rejected"
                s.reason = next((e.error for e in events if isinstance(e, RetrainJob) and e.job_id == s.job_id
                                 and e.status == "succeeded" and e.error), "") or "the gate rejected the adapter"
        else:
            s.version = self.target_version
        if s.version:
            s.deployments = [d for d in s.all_deployments if d.version == s.version]
            end = next((d for d in s.deployments if d.action in ("promoted", "rolled_back")), None)
            if end is not None:
                s.outcome, s.reason = end.action, end.reason
        return s


# -- the gateway -----------------------------------------------------------------------------------------------------


@dataclass
class Exchange:
    """One question asked in the run, its answer, and the user's feedback."""

    at: float  # unix time the request was sent
    user: str
    question: str
    intent: str
    kind: str
    reference: str
    status: int = 0  # HTTP status; 0: no answer
    latency_s: float = 0.0
    version: str = ""
    message_id: str = ""
    session_id: str = ""
    answer: str = ""
    score: float | None = None
    verdict: str = ""  # the feedback sent ("" when none was sent)
    corrected: bool = False
    error: str = ""


class Gateway:
    """The OpenAI-compatible chat endpoint and /feedback, as a user of the gateway calls them."""

    def __init__(self, url: str, api_key: str, alias: str, max_tokens: int = 64, temperature: float = 0.0,
                 timeout: float = 180.0):
        self.url = url.rstrip("/")
        self.alias = alias
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.timeout = timeout

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=self.timeout)

    async def ask(self, http: httpx.AsyncClient, user: str, qa: QA, kind: str,
                  temperature: float | None = None) -> Exchange:
        ex = Exchange(time.time(), user, qa.question, qa.intent, kind, qa.answer)
        temperature = self.temperature if temperature is None else temperature
        body = {"model": self.alias, "messages": [{"role": "user", "content": qa.question}], "temperature": temperature,
                "max_tokens": self.max_tokens, "user": user}
        try:
            r = await http.post("/v1/chat/completions", json=body, headers={"X-User-Id": user})
            ex.status = r.status_code
            ex.version = r.headers.get("x-model-version", "")
            ex.session_id = r.headers.get("x-session-id", "")
            if r.status_code == 200:
                data = r.json()
                ex.message_id = data["id"]
                ex.answer = data["choices"][0]["message"].get("content") or ""
            else:
                ex.error = r.text[:300]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            ex.error = f"{type(exc).__name__}: {exc}"
        ex.latency_s = time.time() - ex.at
        return ex

    async def feedback(self, http: httpx.AsyncClient, ex: Exchange, verdict: str, correction: str | None) -> bool:
        body = {"session_id": ex.session_id, "message_id": ex.message_id, "feedback": verdict}
        if correction:
            body["correction"] = correction
        try:
            r = await http.post("/feedback", json=body, headers={"X-User-Id": ex.user})
        except httpx.HTTPError as exc:
            logger.warning("feedback failed: %s", exc)
            return False
        if r.status_code != 202:
            logger.warning("feedback refused: %s %s", r.status_code, r.text[:200])
        return r.status_code == 202

    def ask_all(self, user: str, qas: Sequence[QA], kind: str) -> list[Exchange]:
        """Ask each question once, in turn, at temperature 0 (no feedback): the after-the-loop answers."""

        async def run() -> list[Exchange]:
            async with self.client() as http:
                return [await self.ask(http, user, qa, kind, temperature=0.0) for qa in qas]

        return asyncio.run(run())


class Traffic:
    """Open-loop traffic at `rate` asks/s from `plan`, each answer judged and fed back; in its own thread."""

    def __init__(self, gateway: Gateway, plan: TrafficPlan, rate: float):
        self.gateway = gateway
        self.plan = plan
        self.rate = rate
        self.correcting = True  # off: wrong answers get plain thumbs-down (the --bad run once it has its pairs)
        self.exchanges: list[Exchange] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="demo-traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self, timeout: float = 300.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def snapshot(self) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges)

    async def _run(self) -> None:
        async with self.gateway.client() as http:
            tasks: set[asyncio.Task] = set()
            t0, k = time.monotonic(), 0
            while not self._stop.is_set():
                delay = t0 + k / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(min(delay, 0.5))
                    continue
                k += 1
                task = asyncio.create_task(self._one(http, self.plan.next()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, http: httpx.AsyncClient, ask: Ask) -> None:
        self.sent += 1
        ex = await self.gateway.ask(http, ask.user, ask.qa, ask.kind)
        if ex.status == 200:
            j = judge(ex.answer, ask, self.correcting)
            ex.score = j.score
            if await self.gateway.feedback(http, ex, j.verdict, j.correction):
                ex.verdict, ex.corrected = j.verdict, j.correction is not None
        with self._lock:
            self.exchanges.append(ex)


# -- the bus ---------------------------------------------------------------------------------------------------------


class BusWatcher:
    """Events of some topics from the beginning, those that occurred at or after `since`, in a consumer thread."""

    def __init__(self, bootstrap: str, topics: list[str], since: float):
        import uuid

        from confluent_kafka import Consumer

        self.since = since
        self.events: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"flywheel-demo-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
        })  # fmt: skip
        self._consumer.subscribe(topics)
        self._thread = threading.Thread(target=self._run, name="demo-bus", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from schemas.codec import decode

        try:
            while not self._stop.is_set():
                for msg in self._consumer.consume(500, 0.2):
                    if msg.error():
                        continue
                    try:
                        event = decode(msg.value())
                    except Exception as exc:  # noqa: BLE001 - a bad message on the bus is not the demo's failure
                        logger.debug("undecodable event: %s", exc)
                        continue
                    if event.occurred_at.timestamp() >= self.since:
                        with self._lock:
                            self.events.append(event)
        finally:
            self._consumer.close()

    def snapshot(self) -> list:
        with self._lock:
            return list(self.events)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def read_routes(redis_client, alias: str) -> dict[str, int] | None:
    """The alias's routing table {version: weight} (weights > 0); None when Redis cannot say."""
    from inference.routing import ROUTES_KEY

    try:
        raw = redis_client.hgetall(ROUTES_KEY.format(alias=alias))
    except Exception as exc:  # noqa: BLE001 - the display falls back to /v1/models
        logger.debug("routes from redis: %s", exc)
        return None
    return {_text(v): int(w) for v, w in raw.items() if int(w) > 0}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def routes_from_models(gateway: Gateway, alias: str) -> dict[str, int]:
    """The alias's routes as the gateway lists them (GET /v1/models)."""
    try:
        r = httpx.get(f"{gateway.url}/v1/models", headers=gateway.headers, timeout=10.0)
        entry = next((m for m in r.json()["data"] if m["id"] == alias), {})
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        logger.debug("routes from /v1/models: %s", exc)
        return {}
    return {v["version"]: int(v["weight"]) for v in entry.get("versions") or []}


# -- the bad adapter -------------------------------------------------------------------------------------------------


def swapped_pairs(pairs: Sequence) -> list[dict]:
    """The run's correction pairs with chosen and rejected swapped: an adapter that prefers the wrong answers."""
    return [{"pair_id": f"swapped-{p.pair_id}", "prompt": [m.model_dump() for m in p.prompt],
             "chosen": p.rejected, "rejected": p.chosen} for p in pairs if p.chosen]


def flywheel_executable() -> list[str]:
    """The `flywheel` command of this interpreter's environment."""
    beside = Path(sys.executable).parent / "flywheel"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("flywheel")
    return [found] if found else [sys.executable, "-c", "from deploy.cli import main; main()"]


def train_bad_adapter(pairs: Sequence, timeout: float) -> dict:
    """`flywheel train dpo --pairs` (the retrain job's code, continuing from the production adapter) on the swapped
    pairs; returns its JSON result (version, path, job_id, verdict, reasons)."""
    rows = swapped_pairs(pairs)
    if not rows:
        raise RuntimeError("no correction pairs of this run to swap")
    with tempfile.TemporaryDirectory(prefix="flywheel-demo-") as tmp:
        path = Path(tmp) / "swapped.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        done = subprocess.run([*flywheel_executable(), "train", "dpo", "--pairs", str(path)], env=dict(os.environ),
                              capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"flywheel train dpo failed: {(done.stderr or done.stdout)[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def announce_adapter(bootstrap: str, alias: str, result: dict, previous: str | None) -> None:
    """A Deployment adapter_ready for the bad adapter, as if it had passed the gate: the controller canaries it."""
    from producers.sdk import ChatEventProducer
    from producers.settings import ProducerSettings
    from schemas.events import Deployment

    producer = ChatEventProducer(ProducerSettings(kafka_bootstrap=bootstrap))
    try:
        producer.send(Deployment(alias=alias, action="adapter_ready", version=result["version"],
                                 previous_version=previous, adapter_path=result["path"], job_id=result["job_id"],
                                 producer="flywheel-demo",
                                 reason="demo --bad: trained on swapped pairs, announced regardless of the gate"))
        if producer.flush(30).pending:
            raise RuntimeError("the adapter_ready event was not delivered")
    finally:
        producer.close(strict=False)


# -- one run ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoConfig:
    gateway_url: str
    api_key: str
    kafka_bootstrap: str
    redis_url: str
    alias: str = "support"
    users: int = 20
    rate: float = 1.0
    loop_share: float = 0.5
    asked: int = 3
    questions: tuple[str, ...] = ()
    timeout: float = 1200.0
    bad: bool = False
    bad_pairs: int = 7  # the --bad run trains once it has this many pairs (below the trigger's threshold)
    max_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    base_version: str = ""  # what an empty routing table serves (the base model's served name)


@dataclass
class Progress:
    elapsed_s: float
    sent: int
    answers: int
    errors: int
    thumbs_up: int
    thumbs_down: int
    corrections: int
    state: LoopState
    routes: dict[str, int]
    note: str = ""


@dataclass
class DemoRun:
    config: DemoConfig
    started_at: float
    ended_at: float = 0.0
    traffic_ended_at: float = 0.0
    corrected: list[QA] = field(default_factory=list)  # the questions whose wrong answers get corrections
    exchanges: list[Exchange] = field(default_factory=list)
    after: list[Exchange] = field(default_factory=list)  # corrected questions asked again after the rollout
    unseen: list[Exchange] = field(default_factory=list)  # their unseen paraphrases, asked after the rollout
    state: LoopState = field(default_factory=LoopState)
    route_samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    bad_adapter: dict | None = None
    timed_out: bool = False
    note: str = ""


def _progress(run: DemoRun, traffic: Traffic, exchanges: list[Exchange], routes: dict[str, int], note: str):
    return Progress(time.time() - run.started_at, traffic.sent, sum(e.status == 200 for e in exchanges),
                    sum(e.status != 200 for e in exchanges), sum(e.verdict == "thumbs_up" for e in exchanges),
                    sum(e.verdict == "thumbs_down" for e in exchanges), sum(e.corrected for e in exchanges),
                    run.state, routes, note)


def nothing_to_correct(exchanges: Sequence[Exchange], corrected: Sequence[QA], min_asks: int = 2) -> bool:
    """Every corrected question asked `min_asks` times, none answered wrong: there is nothing for the loop to learn."""
    asks: dict[str, int] = {}
    for e in exchanges:
        if e.status == 200:
            asks[e.question] = asks.get(e.question, 0) + 1
    return (all(asks.get(qa.question, 0) >= min_asks for qa in corrected)
            and not any(e.corrected for e in exchanges))


def run_demo(config: DemoConfig, on_progress: Callable[[Progress], None] = lambda p: None) -> DemoRun:
    """Traffic, feedback and the loop's events until this run's adapter is promoted or rolled back (or timeout),
    then the corrected questions and their unseen paraphrases asked again."""
    import redis

    from retrain.demo import load_domain, loop_sets, sft_splits
    from schemas.topics import DPO_PAIRS, MODEL_DEPLOYMENTS, RETRAIN_JOBS

    intents = load_domain()
    asked, unseen = loop_sets(intents, config.asked)
    corrected = select_corrected(asked, config.questions)
    plan = TrafficPlan(asked, sft_splits(intents)["test"], corrected, config.users, config.loop_share, config.seed)
    gateway = Gateway(config.gateway_url, config.api_key, config.alias, config.max_tokens, config.temperature)
    run = DemoRun(config, started_at=time.time(), corrected=corrected)
    watcher = BusWatcher(config.kafka_bootstrap, [DPO_PAIRS.name, RETRAIN_JOBS.name, MODEL_DEPLOYMENTS.name],
                         since=run.started_at - 1.0)
    tracker = LoopTracker(config.alias)
    store = redis.Redis.from_url(config.redis_url, socket_timeout=5)
    traffic = Traffic(gateway, plan, config.rate).start()
    trainer: dict = {}
    deadline = time.monotonic() + config.timeout
    note = "asking"
    try:
        while True:
            exchanges = traffic.snapshot()
            run.state = tracker.state(watcher.snapshot(), {e.message_id for e in exchanges if e.corrected})
            routes = read_routes(store, config.alias)
            routes = routes if routes is not None else routes_from_models(gateway, config.alias)
            if not routes and config.base_version:  # no routes: the alias serves the base model
                routes = {config.base_version: 100}
            run.route_samples.append((time.time(), routes))
            if config.bad and tracker.target_version is None:
                note = _bad_step(config, run, traffic, trainer, routes, tracker)
            elif run.state.version:
                note = f"rolling out {run.state.version}"
            elif run.state.job_id:
                note = f"job {run.state.job_id[:8]} {run.state.job_status}"
            else:
                note = f"{len(run.state.pairs)} pairs from this run"
            on_progress(_progress(run, traffic, exchanges, routes, note))
            if run.state.outcome or "error" in trainer:
                break
            if not config.bad and nothing_to_correct(exchanges, corrected):
                run.note = "every corrected question was answered right: nothing for the loop to learn"
                break
            if time.monotonic() > deadline:
                run.timed_out = True
                run.note = f"timed out after {config.timeout:.0f} s ({note})"
                break
            time.sleep(1.0)
    finally:
        traffic.stop()
        run.traffic_ended_at = time.time()
        run.exchanges = traffic.snapshot()
        watcher_events = watcher.snapshot()
        watcher.close()
    run.state = tracker.state(watcher_events, {e.message_id for e in run.exchanges if e.corrected})
    if "error" in trainer:
        run.note = trainer["error"]
    # The gateway re-reads the routes every second: let it see the rollout's last table before asking again.
    time.sleep(2.0)
    taught = {e.question for e in run.exchanges if e.corrected}
    again = [qa for qa in corrected if qa.question in taught]
    intents_taught = {qa.intent for qa in again}
    run.after = gateway.ask_all(f"{USER_PREFIX}0", again, "after")
    run.unseen = gateway.ask_all(f"{USER_PREFIX}0", [qa for qa in unseen if qa.intent in intents_taught], "unseen")
    for ex in run.after + run.unseen:
        if ex.status == 200:
            ex.score = rouge_l(ex.answer, ex.reference)
    run.ended_at = time.time()
    return run


def _bad_step(config: DemoConfig, run: DemoRun, traffic: Traffic, trainer: dict, routes: dict[str, int],
              tracker: LoopTracker) -> str:
    """The --bad run: enough pairs -> train on them swapped (in a thread) -> announce the adapter."""
    if "thread" not in trainer:
        if len(run.state.pairs) < config.bad_pairs:
            return f"{len(run.state.pairs)}/{config.bad_pairs} pairs for the bad adapter"
        traffic.correcting = False  # the trigger must not start a good job from this run's pairs meanwhile
        pairs = list(run.state.pairs)

        def train() -> None:
            try:
                trainer["result"] = train_bad_adapter(pairs, config.timeout)
            except Exception as exc:  # noqa: BLE001 - reported in the run's note
                logger.exception("training the bad adapter failed")
                trainer["error"] = f"training the bad adapter failed: {exc}"

        trainer["thread"] = threading.Thread(target=train, name="demo-bad-adapter", daemon=True)
        trainer["thread"].start()
        return f"training a bad adapter on {len(pairs)} swapped pairs"
    if "result" not in trainer:
        return "training a bad adapter"
    result = trainer["result"]
    previous = max(routes, key=routes.get) if routes else None
    announce_adapter(config.kafka_bootstrap, config.alias, result, previous)
    run.bad_adapter = result
    # The version is the demo's own: follow its rollout, not a worker job's.
    tracker.target_version = result["version"]
    return f"announced {result['version']} (gate: {result['verdict']})"


# -- the command -----------------------------------------------------------------------------------------------------


def _view(p: Progress):
    from rich.table import Table

    s = p.state
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("elapsed", f"{p.elapsed_s:.0f} s")
    table.add_row("requests", f"{p.sent} sent, {p.answers} answered, {p.errors} failed")
    table.add_row("feedback", f"[green]{p.thumbs_up} up[/], [red]{p.thumbs_down} down[/] "
                              f"({p.corrections} with a correction)")
    table.add_row("pairs / job", f"{len(s.pairs)} pairs from this run; job {s.job_id or '-'} {s.job_status or ''}")
    table.add_row("routes", ", ".join(f"{v} {w}%" for v, w in sorted(p.routes.items())) or "-")
    last = s.last_deployment
    table.add_row("last deployment", f"{last.action} {last.version}" + (f" @{last.weight}%" if last.weight is not None
                                                                          else "") + f" {last.reason[:80]}"
                  if last else "-")
    table.add_row("now", p.note)
    return table


@click.command("demo")
@click.option("--users", type=click.IntRange(min=1), default=20, show_default=True, help="Simulated users.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Requests per second, all users together.")
@click.option("--loop-share", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of the traffic that asks loop questions (the rest: other intents' test questions).")
@click.option("--questions", multiple=True, metavar="INTENT|QUESTION",
              help="Loop intents (or asked questions) whose wrong answers get corrections [default: all].")
@click.option("--asked", type=click.IntRange(1, 5), default=3, show_default=True,
              help="Asked questions per loop intent; the rest are the unseen paraphrases.")
@click.option("--timeout", type=click.FloatRange(min=1), default=1200.0, show_default=True,
              help="Seconds to wait for the run's adapter to be promoted or rolled back.")
@click.option("--bad", is_flag=True, help="Train an adapter on the run's pairs swapped and roll it out: a rollback.")
@click.option("--bad-pairs", type=click.IntRange(min=1), default=None,
              help="Pairs the --bad run collects before training [default: the retrain threshold minus one].")
@click.option("--alias", default=None, help="Model alias [default: FLYWHEEL_MODEL_ALIAS].")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.0, show_default=True,
              help="Sampling temperature of the users' traffic (the after-the-loop questions use 0).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the traffic plan.")
@click.option("--gateway", "gateway_url", default=None, help="Gateway URL [default: http://127.0.0.1:<gateway port>].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder [default: <data_dir>/demo/<run id>].")
@click.pass_obj
def demo_command(settings, users, rate, loop_share, questions, asked, timeout, bad, bad_pairs, alias, max_tokens,
                 temperature, seed, gateway_url, out_dir) -> None:
    """Simulated users chat with the running stack and give feedback until the loop promotes (or, with --bad, rolls
    back) an adapter trained from their corrections; then a report of what changed."""
    from datetime import datetime

    from rich.console import Console
    from rich.live import Live

    from deploy import analytics
    from deploy.demo_report import build_report, print_report, write_report
    from inference.settings import GatewaySettings

    console = Console()
    key_file = settings.data_dir / "dev-api-key"
    if not key_file.is_file():
        raise click.ClickException(f"no API key at {key_file}: is the stack up? (`flywheel up`)")
    if bad and bad_pairs is None:
        from streams.settings import StreamsSettings

        bad_pairs = max(1, StreamsSettings().streams_retrain_threshold - 1)
    config = DemoConfig(
        gateway_url=gateway_url or f"http://127.0.0.1:{GatewaySettings().gateway_port}",
        api_key=key_file.read_text().strip(), kafka_bootstrap=settings.kafka_bootstrap, redis_url=settings.redis_url,
        alias=alias or settings.model_alias, users=users, rate=rate, loop_share=loop_share, asked=asked,
        questions=tuple(questions), timeout=timeout, bad=bad, bad_pairs=bad_pairs or 7, max_tokens=max_tokens,
        temperature=temperature, seed=seed, base_version=settings.served_model_name)
    run_id = datetime.now().strftime("%Y%m%d-%H%M%S") + ("-bad" if bad else "")
    try:
        select_corrected(loop_sets_default(asked), questions)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--questions") from exc
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        run = run_demo(config, on_progress=lambda p: live.update(_view(p)))
    try:
        client = analytics.connect(settings.query_url)
        try:
            report = build_report(run, client, run_id)
        finally:
            client.close()
    except analytics.AnalyticsError as exc:
        raise click.ClickException(str(exc)) from exc
    print_report(report, console)
    written = write_report(report, out_dir or settings.data_dir / "demo" / run_id)
    console.print(f"report: {', '.join(str(p) for p in written)}")


def loop_sets_default(asked: int) -> list[QA]:
    from retrain.demo import load_domain, loop_sets

    return loop_sets(load_domain(), asked)[0]
