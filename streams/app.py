"""Flywheel stream processors: one faust app, one agent per concern.

Reads  chat.requests, chat.responses, chat.feedback, dpo.pairs, retrain.jobs
Writes metrics.windows, dpo.pairs, retrain.jobs, chat.feedback.dlq

    python -m streams.app worker --without-web -l info      # or: python -m streams.app  (main())

Topology (internal topics and tables below are named by constants; renaming one is a migration):

    chat.responses + streams.feedback-joined --[metric_windows]--> (table metric-checkpoints)
                                         [close_windows timer] --> metrics.windows
    chat.requests + chat.responses + chat.feedback + streams.pair-ticks
                                         --[join_feedback]-----> streams.feedback-joined, chat.feedback.dlq
                                            (tables pair-context, pair-pending)
    streams.feedback-joined --[build_pairs]--> dpo.pairs, chat.feedback.dlq   (table pair-answers)
    dpo.pairs + retrain.jobs --[forward_to_trigger]--> streams.trigger-input (1 partition)
    streams.trigger-input --[retrain_trigger]--> retrain.jobs   (tables trigger-state, trigger-covered)
    [pair_tick timer] --> streams.pair-ticks (every partition);  [trigger_tick timer] --> streams.trigger-input

Agent groups (FLYWHEEL_STREAMS_AGENTS, default all: one process, app id flywheel-streams):
    metrics = metric_windows + close_windows;  pairs = join_feedback + build_pairs + pair_tick;
    trigger = forward_to_trigger + retrain_trigger + trigger_tick.
A subset runs as its own faust app "<app id>-<groups>" (e.g. `FLYWHEEL_STREAMS_AGENTS=metrics` ->
flywheel-streams-metrics, `pairs,trigger` -> flywheel-streams-pairs-trigger): its own consumer group and
changelog topics, so the metric agent's throughput does not share a process with the join agent's table writes.
Undecodable input is skipped, logged and counted (the ClickHouse sink dead-letters it); the DLQ gets only
what these agents cannot process: feedback for an unknown message or too late, thumbs-down on an error.

Delivery is at-least-once (Tansu gives faust no producer id): every output carries a deterministic
event_id (windows, pairs, jobs, dead letters) so that idempotent sinks keep it once.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import faust
import httpx
import orjson
from faust.types import TP

from schemas import topology
from schemas.codec import decode, encode
from schemas.epoch import broker_epoch
from schemas.errors import EventError
from schemas.events import ChatRequest, ChatResponse, DPOPair, Feedback, RetrainJob
from schemas.logs import json_logging_config
from schemas.topics import (
    CHAT_FEEDBACK,
    CHAT_REQUESTS,
    CHAT_RESPONSES,
    DPO_PAIRS,
    METRICS_WINDOWS,
    RETRAIN_JOBS,
    create_topics,
    ensure_topics,
)
from streams import transport
from streams.pairing import NearDuplicateFilter
from streams.pairs import FeedbackJoiner, JoinOutput, PairBuilder, question_partition
from streams.settings import StreamSettings
from streams.teacher import ask_teacher
from streams.trigger import TriggerState
from streams.windows import WindowBook

log = logging.getLogger(__name__)
settings = StreamSettings()

# -- names: the consumer group is the app id; changelog topics are "<app id>-<table>-changelog" --------
# FLYWHEEL_STREAMS_AGENTS picks the agent groups of this process. All three (default, `flywheel up`): app id
# "flywheel-streams". A subset runs as its own app "flywheel-streams-<groups>" (StreamSettings.app_id), e.g.
# "flywheel-streams-metrics" beside "flywheel-streams-pairs-trigger": own group, own changelogs.
AGENTS = settings.agents
APP_ID = settings.app_id
PARTITIONS = CHAT_RESPONSES.partitions  # every session-keyed source topic has this many (registry)
TABLE_METRIC_CHECKPOINTS = "metric-checkpoints"
TABLE_PAIR_CONTEXT = "pair-context"
TABLE_PAIR_PENDING = "pair-pending"
TABLE_PAIR_ANSWERS = "pair-answers"
TABLE_TRIGGER_STATE = "trigger-state"
TABLE_TRIGGER_COVERED = "trigger-covered"
TOPIC_FEEDBACK_JOINED = topology.FEEDBACK_JOINED.name
TOPIC_PAIR_TICKS = topology.PAIR_TICKS.name
TOPIC_TRIGGER_INPUT = topology.TRIGGER_INPUT.name
INTERNAL_TOPICS = {t.name: t.partitions for t in topology.INTERNAL_TOPICS}
AGENT_METRIC_WINDOWS = "streams.metric-windows"
AGENT_JOIN_FEEDBACK = "streams.join-feedback"
AGENT_BUILD_PAIRS = "streams.build-pairs"
AGENT_FORWARD_TO_TRIGGER = "streams.forward-to-trigger"
AGENT_RETRAIN_TRIGGER = "streams.retrain-trigger"


transport.install(settings.streams_fetch_max_wait_ms)  # before the app: its consumer class

app = faust.App(
    APP_ID,
    broker="kafka://" + settings.kafka_bootstrap.replace(",", ";"),
    store="rocksdb://",
    datadir=str(settings.state_dir / APP_ID),
    processing_guarantee="at_least_once",
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=settings.streams_session_timeout_s,
    broker_heartbeat_interval=1.0,
    broker_commit_interval=settings.streams_commit_interval_s,
    # Tansu's "latest" offset is the base offset of the newest batch + 1: with one record per batch that is
    # the true highwater, so rocksdb changelog recovery after a restart works (ENVIRONMENT.md). Slower
    # producing, hence only against the embedded broker.
    producer_max_batch_size=1 if settings.streams_embedded_broker else 16384,
    web_enabled=False,
    table_standby_replicas=0,
    logging_config=json_logging_config(settings.log_level),
)


def _topic(*names: str, partitions: int = PARTITIONS, internal: bool = False) -> faust.TopicT:
    return app.topic(
        *names,
        partitions=partitions,
        internal=internal,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )


# -- topics ---------------------------------------------------------------------------------------------
metric_source = _topic(CHAT_RESPONSES.name, TOPIC_FEEDBACK_JOINED)
join_source = _topic(CHAT_REQUESTS.name, CHAT_RESPONSES.name, CHAT_FEEDBACK.name, TOPIC_PAIR_TICKS)
feedback_joined = _topic(TOPIC_FEEDBACK_JOINED, internal=True)
pair_ticks = _topic(TOPIC_PAIR_TICKS, internal=True)
trigger_source = _topic(DPO_PAIRS.name, RETRAIN_JOBS.name)
trigger_input = _topic(TOPIC_TRIGGER_INPUT, partitions=topology.TRIGGER_INPUT.partitions, internal=True)
metrics_windows = _topic(METRICS_WINDOWS.name)
dpo_pairs = _topic(DPO_PAIRS.name)
retrain_jobs = _topic(RETRAIN_JOBS.name)
feedback_dlq = _topic(CHAT_FEEDBACK.dlq, partitions=1)

_recovered: set[str] = set()  # tables whose recovery finished: timers wait for their agent's state
skipped_undecodable: Counter[str] = Counter()  # topic -> undecodable events skipped (the sink dead-letters them)


def _skip_undecodable(topic: str, partition: int, offset: int, exc: EventError) -> None:
    """Undecodable input is skipped, logged and counted here, never dead-lettered: the ClickHouse sink
    reads every topic and owns that DLQ (one letter per bad message, id from its position)."""
    skipped_undecodable[topic] += 1
    log.warning(
        "undecodable event skipped",
        extra={
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "error_type": exc.kind,
            "error": str(exc),
            "skipped": skipped_undecodable[topic],
        },
    )


# -- metric windows -------------------------------------------------------------------------------------
if "metrics" in AGENTS:
    metric_checkpoints = app.Table(TABLE_METRIC_CHECKPOINTS, partitions=PARTITIONS)  # source partition -> state
    book = WindowBook(
        settings.streams_window_seconds,
        settings.streams_window_grace_s,
        settings.streams_window_idle_s,
        settings.streams_quantile_accuracy,
        now=time.time(),
    )

    @metric_checkpoints.on_recover
    async def _restore_windows() -> None:
        for key, value in metric_checkpoints.items():
            book.restore(int(key), value)
        # The start-up hold on wall-clock closing counts from here, not from import: group join and recovery
        # can outlast it, and a window closed before the replay begins would be emitted short.
        book.started_wall = time.time()
        _recovered.add(TABLE_METRIC_CHECKPOINTS)
        log.info("metric windows restored", extra={"partitions": sorted(book.partitions), "horizon": book.horizon})

    @app.agent(metric_source, name=AGENT_METRIC_WINDOWS)
    async def metric_windows(stream: faust.StreamT) -> None:
        """Aggregate in memory; checkpoint a partition's partials to the table, then ack its events."""
        unacked: dict[int, list[faust.EventT]] = defaultdict(list)
        manual = stream.noack()
        async for event in manual.events():
            message = event.message
            partition, now = message.partition, time.time()
            _apply_metric(message.topic, partition, message.offset, event.value, now)
            unacked[partition].append(event)
            if book.checkpoint_due(
                partition, now, settings.streams_checkpoint_interval_s, settings.streams_checkpoint_max_events
            ):
                metric_checkpoints[str(partition)] = book.checkpoint(partition, now)
                for done in unacked.pop(partition):
                    await manual.ack(done)

    def _apply_metric(topic: str, partition: int, offset: int, value: bytes, now: float) -> None:
        if topic == CHAT_RESPONSES.name:
            try:
                r = decode(value, ChatResponse)
            except EventError as exc:
                _skip_undecodable(topic, partition, offset, exc)
                return
            book.add_response(
                topic,
                partition,
                offset,
                now,
                model_version=r.model_version,
                route=r.route,
                event_time=r.occurred_at.timestamp(),
                status=r.status,
                latency_ms=r.latency_ms,
                ttft_ms=r.ttft_ms,
                completion_tokens=r.completion_tokens,
            )
        else:
            rec = orjson.loads(value)
            book.add_feedback(
                topic,
                partition,
                offset,
                now,
                model_version=rec["model_version"],
                route=rec["route"],
                event_time=rec["occurred_at"],
                feedback=rec["feedback"],
                feedback_id=rec["feedback_id"],
            )
            book.release(rec["feedback_id"])

    def _backlog() -> dict[tuple[str, int], int | None]:
        """Per source this worker's windows wait for: events between the last one applied and the highwater
        (aiokafka's, from the latest fetch); None: events there, none applied since the start."""
        watched = {CHAT_RESPONSES.name, TOPIC_FEEDBACK_JOINED} | ({CHAT_FEEDBACK.name} if "pairs" in AGENTS else set())
        behind: dict[tuple[str, int], int | None] = {}
        for tp in app.consumer.assignment():
            if tp.topic in watched:
                highwater, applied = app.consumer.highwater(tp), book.applied_offset(tp.topic, tp.partition)
                if highwater is not None:
                    behind[(tp.topic, tp.partition)] = (
                        highwater - 1 - applied if applied is not None else None if highwater > 0 else 0
                    )
        return behind

    @app.timer(interval=settings.streams_tick_interval_s)
    async def close_windows() -> None:
        if TABLE_METRIC_CHECKPOINTS not in _recovered:  # before recovery a window could be emitted half-full
            return
        for window in book.close(time.time(), _backlog()):
            await metrics_windows.send(key=window.model_version.encode(), value=encode(window))
            log.info(
                "window emitted",
                extra={
                    "event_id": str(window.event_id),
                    "model_version": window.model_version,
                    "route": window.route,
                    "window_start": window.window_start.isoformat(),
                    "window_seconds": window.window_seconds,
                    "requests": window.requests,
                    "late_events": book.late_events,
                },
            )


# -- feedback -> DPO pairs ------------------------------------------------------------------------------
if "pairs" in AGENTS:
    pair_context = app.Table(TABLE_PAIR_CONTEXT, partitions=PARTITIONS)  # message id -> prompt, answer
    pair_pending = app.Table(TABLE_PAIR_PENDING, partitions=PARTITIONS)  # message id -> waiting feedback
    pair_answers = app.Table(TABLE_PAIR_ANSWERS, partitions=PARTITIONS)  # normalized question -> thumbs-up answers
    joiner = FeedbackJoiner(
        pair_context,
        pair_pending,
        settings.streams_context_ttl_s,
        settings.streams_pending_timeout_s,
        settings.streams_pending_catch_up_s,
    )
    _join_read: dict[tuple[str, int], int] = {}  # (requests|responses topic, partition) -> last offset joined
    _teacher_client: httpx.AsyncClient | None = None

    async def _teacher(messages: list[dict]) -> str | None:
        global _teacher_client
        if _teacher_client is None:
            _teacher_client = httpx.AsyncClient()
        return await ask_teacher(
            _teacher_client,
            settings.streams_teacher_url,
            settings.streams_teacher_model,
            messages,
            settings.streams_teacher_timeout_s,
        )

    builder = PairBuilder(
        pair_answers,
        settings.served_model_name,
        NearDuplicateFilter(settings.streams_dedup_threshold, settings.streams_dedup_recent),
        settings.streams_pair_min_chars,
        settings.streams_pair_max_chars,
        teacher=_teacher if settings.streams_teacher_url else None,
    )

    @pair_pending.on_recover
    async def _index_pairs() -> None:
        joiner.index()
        _recovered.add(TABLE_PAIR_PENDING)

    @app.agent(join_source, name=AGENT_JOIN_FEEDBACK)
    async def join_feedback(stream: faust.StreamT) -> None:
        """Join feedback with its prompt and answer (same session, same partition); re-key by question."""
        decoders = {CHAT_REQUESTS.name: ChatRequest, CHAT_RESPONSES.name: ChatResponse, CHAT_FEEDBACK.name: Feedback}
        async for event in stream.events():
            message = event.message
            topic, partition, offset, now = message.topic, message.partition, message.offset, time.time()
            if topic == TOPIC_PAIR_TICKS:
                out = joiner.sweep(partition, now, _join_behind(partition))
            else:
                if topic != CHAT_FEEDBACK.name:  # read, even if it does not decode: it is no backlog
                    _join_read[(topic, partition)] = offset
                try:
                    parsed = decode(event.value, decoders[topic])
                except EventError as exc:
                    _skip_undecodable(topic, partition, offset, exc)
                    if topic == CHAT_FEEDBACK.name and "metrics" in AGENTS:
                        book.observe(topic, partition, offset, None, now)
                    continue
                if isinstance(parsed, ChatRequest):
                    out = joiner.on_request(parsed, partition, now)
                elif isinstance(parsed, ChatResponse):
                    out = joiner.on_response(parsed, partition, now)
                else:
                    out = joiner.on_feedback(parsed, partition, offset, now)
            if "metrics" in AGENTS:  # the windows wait for feedback still to join, or joined and on its way
                _hold_windows(topic, partition, offset, parsed if topic == CHAT_FEEDBACK.name else None, out, now)
            for rec in out.joined:
                await feedback_joined.send(
                    key=rec["question"].encode(),
                    value=orjson.dumps(rec),
                    partition=question_partition(rec["question"], PARTITIONS),
                )
            for dead in out.dead:
                await feedback_dlq.send(key=(dead.key or "").encode(), value=encode(dead))
                log.warning(
                    "feedback dead-lettered",
                    extra={"error_type": dead.error_type, "offset": dead.offset, "event_id": str(dead.event_id)},
                )

    def _join_behind(partition: int) -> bool:
        """Whether the join reads this partition's requests or responses behind their highwater (a catch-up)."""
        for topic in (CHAT_REQUESTS.name, CHAT_RESPONSES.name):
            highwater = app.consumer.highwater(TP(topic, partition))
            read = _join_read.get((topic, partition))
            if highwater is not None and read is not None and highwater - 1 > read:
                return True
        return False

    def _hold_windows(
        topic: str, partition: int, offset: int, feedback: Feedback | None, out: JoinOutput, now: float
    ) -> None:
        # Joined feedback is in the producer's buffer, then the broker, before the metric agent applies it (and
        # during a catch-up the join runs far ahead of the metrics): it holds its windows until applied.
        wait = settings.streams_pending_timeout_s + settings.streams_window_idle_s
        for rec in out.joined:
            book.hold(rec["feedback_id"], rec["occurred_at"], now + wait)
        for feedback_id in out.expired:  # dead-lettered: it will never reach a window
            book.release(feedback_id)
        if feedback is not None:
            book.observe(topic, partition, offset, feedback.occurred_at.timestamp(), now)
            if not out.joined and not out.dead:  # waiting for its response (longer during a catch-up)
                book.hold(
                    str(feedback.event_id),
                    feedback.occurred_at.timestamp(),
                    now + wait + settings.streams_pending_catch_up_s,
                )

    @app.agent(feedback_joined, name=AGENT_BUILD_PAIRS)
    async def build_pairs(stream: faust.StreamT) -> None:
        """One question's thumbs-up answers and thumbs-downs meet in this partition: build DPO pairs."""
        async for value in stream:
            rec = orjson.loads(value)
            outcome = await builder.on_joined(rec)
            if outcome.pair is not None:
                pair = outcome.pair
                await dpo_pairs.send(key=pair.base_model.encode(), value=encode(pair))
                log.info(
                    "pair emitted",
                    extra={"pair_id": pair.pair_id, "source": pair.source, "message_id": pair.message_id},
                )
            elif outcome.dead is not None:
                await feedback_dlq.send(key=(outcome.dead.key or "").encode(), value=encode(outcome.dead))
                log.warning(
                    "feedback dead-lettered",
                    extra={"error_type": outcome.dead.error_type, "message_id": rec["message_id"]},
                )
            elif outcome.dropped:
                log.info("pair dropped", extra={"reason": outcome.dropped, "message_id": rec["message_id"]})

    @app.timer(interval=settings.streams_tick_interval_s)
    async def pair_tick() -> None:
        """Time passes even when no event does: every partition's joiner sweeps its TTLs and timeouts."""
        if TABLE_PAIR_PENDING not in _recovered:
            return
        for partition in range(PARTITIONS):
            await pair_ticks.send(value=b"tick", partition=partition)


# -- retrain trigger ------------------------------------------------------------------------------------
if "trigger" in AGENTS:
    trigger_state = app.Table(TABLE_TRIGGER_STATE, partitions=1)  # base model -> TriggerState
    trigger_covered = app.Table(TABLE_TRIGGER_COVERED, partitions=1)  # pair id -> job id

    @trigger_state.on_recover
    async def _trigger_recovered() -> None:
        _recovered.add(TABLE_TRIGGER_STATE)

    @app.agent(trigger_source, name=AGENT_FORWARD_TO_TRIGGER)
    async def forward_to_trigger(stream: faust.StreamT) -> None:
        """dpo.pairs and retrain.jobs are keyed by base model but partitioned by different producers:
        funnel both into one single-partition topic so one state machine per model sees both in order."""
        async for event in stream.events():
            message = event.message
            try:
                parsed = decode(event.value)
            except EventError as exc:
                _skip_undecodable(message.topic, message.partition, message.offset, exc)
                continue
            if isinstance(parsed, DPOPair):
                rec = {
                    "kind": "pair",
                    "base_model": parsed.base_model,
                    "pair_id": parsed.pair_id,
                    "usable": parsed.source != "needs_chosen" and parsed.chosen is not None,
                }
            elif isinstance(parsed, RetrainJob):
                rec = {
                    "kind": "job",
                    "base_model": parsed.base_model,
                    "job_id": parsed.job_id,
                    "status": parsed.status,
                    "pair_ids": parsed.pair_ids,
                    "at": parsed.occurred_at.timestamp(),
                }
            else:
                continue
            await trigger_input.send(value=orjson.dumps(rec), partition=0)

    @app.agent(trigger_input, name=AGENT_RETRAIN_TRIGGER)
    async def retrain_trigger(stream: faust.StreamT) -> None:
        async for value in stream:
            rec, now = orjson.loads(value), time.time()
            models = [rec["base_model"]] if "base_model" in rec else list(trigger_state.keys())
            for base_model in models:
                state = (
                    TriggerState.from_json(trigger_state[base_model])
                    if base_model in trigger_state
                    else TriggerState(base_model)
                )
                if rec["kind"] == "pair":
                    state.on_pair(rec["pair_id"], rec["usable"], trigger_covered)
                elif rec["kind"] == "job":
                    state.on_job(
                        rec["job_id"],
                        rec["status"],
                        rec["pair_ids"],
                        rec["at"],
                        settings.streams_retrain_cooldown_s,
                        trigger_covered,
                    )
                job = state.decide(now, settings.streams_retrain_threshold, trigger_covered)
                if job is not None:  # send before saving: a crash in between re-decides the same job id
                    await retrain_jobs.send(key=base_model.encode(), value=encode(job))
                    log.info("retrain job requested", extra={"job_id": job.job_id, "pairs": len(job.pair_ids)})
                trigger_state[base_model] = state.to_json()

    @app.timer(interval=settings.streams_tick_interval_s)
    async def trigger_tick() -> None:
        """Cool-downs end without an event: a tick makes every model's state machine decide again."""
        if TABLE_TRIGGER_STATE not in _recovered:
            return
        await trigger_input.send(value=b'{"kind": "tick"}', partition=0)


def create_internal_topics(bootstrap: str, timeout: float = 30.0) -> None:
    """Create the registry's topics and ours before anything produces: Tansu would auto-create them with
    4 partitions and faust then refuses a table whose changelog has 3."""
    from confluent_kafka.admin import NewTopic

    create_topics(bootstrap, timeout)
    ensure_topics(bootstrap, [NewTopic(name, num_partitions=n) for name, n in INTERNAL_TOPICS.items()], timeout)


def _state_for_epoch(state_dir: Path, epoch: str) -> None:
    """The tables' local state mirrors changelogs of one broker log: kept for the same log only. After the
    embedded broker restarted empty, faust would refuse it (persisted offsets above the new highwaters)."""
    marker = state_dir / "broker-epoch"
    if state_dir.exists() and (not marker.is_file() or marker.read_text() != epoch):
        log.warning("table state of another broker log removed", extra={"state_dir": str(state_dir), "epoch": epoch})
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    marker.write_text(epoch)


def main(argv: list[str] | None = None) -> None:
    """Run the worker: `python -m streams.app [faust worker arguments]`, web server off by default."""
    create_internal_topics(settings.kafka_bootstrap)
    _state_for_epoch(settings.state_dir / APP_ID, broker_epoch(settings.kafka_bootstrap))
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        args = ["worker", "--without-web", "-l", settings.log_level.lower()]
    sys.argv = [sys.argv[0], *args]
    app.main()


if __name__ == "__main__":
    main()
