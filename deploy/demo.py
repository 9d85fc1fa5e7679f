"""`flywheel demo`: the whole loop, shown, against a running local stack.

Simulated users ask the questions of a case (deploy/demo_cases.py: the demo shop's customer service, the same to an
alias marked rag, or an editor's code completions) through the gateway and judge every answer against the
reference answer with ROUGE-L: a wrong answer to one of the corrected loop questions gets a thumbs-down
with the reference answer as the correction (what feeds DPO pairs), any other wrong answer a plain thumbs-down, a
right one a thumbs-up. The traffic keeps going while the stack builds pairs, trains, gates and canaries the adapter,
until the version trained from this run's pairs is promoted or rolled back (read from Kafka), or a timeout.
With `bad=True` the demo trains an adapter itself on the run's pairs with chosen and rejected swapped and announces
it, so that the same traffic shows a rollback. `deploy.demo_report` turns what was seen into the report.

The users and their traffic are `deploy.demo_traffic`; here: `LoopTracker` (pure: which job and rollout are this
run's), `BusWatcher` (the loop's events from Kafka), `run_demo`; the --bad adapter is deploy/demo_bad.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from deploy.demo_bad import announce_adapter, train_bad_adapter
from deploy.demo_cases import case_questions
from deploy.demo_traffic import USER_PREFIX, Exchange, Gateway, Traffic, TrafficPlan, select_corrected
from retrain.demo import QA
from retrain.rouge import rouge_l
from schemas.kafka import client_config

log = logging.getLogger(__name__)

DEPLOYMENT_ACTIONS = ("adapter_ready", "canary_started", "hold", "step", "promoted", "rolled_back")


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
                s.reason = (
                    next(
                        (
                            e.error
                            for e in events
                            if isinstance(e, RetrainJob)
                            and e.job_id == s.job_id
                            and e.status == "succeeded"
                            and e.error
                        ),
                        "",
                    )
                    or "the gate rejected the adapter"
                )
        else:
            s.version = self.target_version
        if s.version:
            s.deployments = [d for d in s.all_deployments if d.version == s.version]
            end = next((d for d in s.deployments if d.action in ("promoted", "rolled_back")), None)
            if end is not None:
                s.outcome, s.reason = end.action, end.reason
        return s


# -- the gateway -----------------------------------------------------------------------------------------------------


class BusWatcher:
    """Events of some topics from the beginning, those that occurred at or after `since`, in a consumer thread."""

    def __init__(self, bootstrap: str, topics: list[str], since: float):
        import uuid

        from confluent_kafka import Consumer

        self.since = since
        self.events: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(
            client_config(
                bootstrap,
                {
                    "group.id": f"flywheel-watch-{uuid.uuid4().hex[:8]}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "session.timeout.ms": 6000,
                    "heartbeat.interval.ms": 1000,
                },
            )
        )
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
                        log.debug("undecodable event", extra={"error": repr(exc)})
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
    from inference.keys import ROUTES_KEY

    try:
        raw = redis_client.hgetall(ROUTES_KEY.format(alias=alias))
    except Exception as exc:  # noqa: BLE001 - the display falls back to /v1/models
        log.debug("routes from redis failed", extra={"error": repr(exc)})
        return None
    return {_text(v): int(w) for v, w in raw.items() if int(w) > 0}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- one run ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoConfig:
    gateway_url: str
    api_key: str
    kafka_bootstrap: str
    redis_url: str
    alias: str = "support"
    case: str = "support"  # support | rag | code (deploy.demo_cases)
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
    return Progress(
        time.time() - run.started_at,
        traffic.sent,
        sum(e.status == 200 for e in exchanges),
        sum(e.status != 200 for e in exchanges),
        sum(e.verdict == "thumbs_up" for e in exchanges),
        sum(e.verdict == "thumbs_down" for e in exchanges),
        sum(e.corrected for e in exchanges),
        run.state,
        routes,
        note,
    )


def nothing_to_correct(exchanges: Sequence[Exchange], corrected: Sequence[QA], min_asks: int = 2) -> bool:
    """Every corrected question asked `min_asks` times, none answered wrong: there is nothing for the loop to learn."""
    asks: dict[str, int] = {}
    for e in exchanges:
        if e.status == 200:
            asks[e.question] = asks.get(e.question, 0) + 1
    return all(asks.get(qa.question, 0) >= min_asks for qa in corrected) and not any(e.corrected for e in exchanges)


def run_demo(config: DemoConfig, on_progress: Callable[[Progress], None] = lambda p: None) -> DemoRun:
    """Traffic, feedback and the loop's events until this run's adapter is promoted or rolled back (or timeout),
    then the corrected questions and their unseen paraphrases asked again."""
    import redis

    from schemas.topics import DPO_PAIRS, MODEL_DEPLOYMENTS, RETRAIN_JOBS

    questions = case_questions(config.case, config.asked)
    corrected = select_corrected(questions.asked, config.questions)
    plan = TrafficPlan(questions.asked, questions.other, corrected, config.users, config.loop_share, config.seed)
    gateway = Gateway(config.gateway_url, config.api_key, config.alias, config.max_tokens, config.temperature)
    if config.case == "rag":
        check_rag(gateway, questions.other[0])
    run = DemoRun(config, started_at=time.time(), corrected=corrected)
    watcher = BusWatcher(
        config.kafka_bootstrap, [DPO_PAIRS.name, RETRAIN_JOBS.name, MODEL_DEPLOYMENTS.name], since=run.started_at - 1.0
    )
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
            routes = routes if routes is not None else gateway.routes()
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
    unseen = [qa for qa in questions.unseen if qa.intent in intents_taught]
    run.unseen = gateway.ask_all(f"{USER_PREFIX}0", unseen, "unseen")
    for ex in run.after + run.unseen:
        if ex.status == 200:
            ex.score = rouge_l(ex.answer, ex.reference)
    run.ended_at = time.time()
    return run


class DemoError(Exception):
    """The stack cannot run this demo case as it is set up; the message says what to change."""


def check_rag(gateway: Gateway, qa: QA) -> None:
    """One question to the alias: its answer must carry sources, or the alias is not marked rag."""
    ex = gateway.ask_all(f"{USER_PREFIX}0", [qa], "probe")[0]
    if ex.status != 200:
        raise DemoError(f"the gateway did not answer the rag probe: {ex.status} {ex.error}")
    if not ex.sources:
        raise DemoError(
            f"the alias {gateway.alias!r} answers without sources: it is not marked rag, or the knowledge base is "
            "empty. Index the bundled shop pages and restart the stack with the alias marked: "
            "`flywheel kb add inference/retrieval/examples/shop --root inference/retrieval/examples/shop`, then "
            f"`FLYWHEEL_GATEWAY_RAG_ALIASES={gateway.alias} flywheel up`"
        )


def _bad_step(
    config: DemoConfig, run: DemoRun, traffic: Traffic, trainer: dict, routes: dict[str, int], tracker: LoopTracker
) -> str:
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
                log.exception("training the bad adapter failed")
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
