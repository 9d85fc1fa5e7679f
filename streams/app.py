"""Flywheel stream processors: one faust app, one agent per concern.

Reads  chat.requests, chat.responses, chat.feedback, dpo.pairs, retrain.jobs
Writes metrics.windows, dpo.pairs, retrain.jobs, chat.feedback.dlq

    python -m streams.app worker --without-web -l info      # or: python -m streams.app  (main())

Topology (one module per agent group in streams/agents/, with its tables and agents named by constants;
renaming one is a migration):

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
from pathlib import Path

import faust
from prometheus_client import start_http_server

from schemas import topology
from schemas.epoch import broker_epoch
from schemas.kafka import faust_credentials
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
from streams.agents import metrics, pairs, trigger
from streams.settings import StreamSettings
from streams.wiring import Channels, Shared

log = logging.getLogger(__name__)
settings = StreamSettings()

# -- names: the consumer group is the app id; changelog topics are "<app id>-<table>-changelog" --------
# FLYWHEEL_STREAMS_AGENTS picks the agent groups of this process. All three (default, `flywheel up`): app id
# "flywheel-streams". A subset runs as its own app "flywheel-streams-<groups>" (StreamSettings.app_id), e.g.
# "flywheel-streams-metrics" beside "flywheel-streams-pairs-trigger": own group, own changelogs.
AGENTS = settings.agents
APP_ID = settings.app_id
PARTITIONS = CHAT_RESPONSES.partitions  # every session-keyed source topic has this many (registry)
INTERNAL_TOPICS = {t.name: t.partitions for t in topology.INTERNAL_TOPICS}

transport.install(settings.streams_fetch_max_wait_ms)  # before the app: its consumer class

app = faust.App(
    APP_ID,
    broker="kafka://" + settings.kafka_bootstrap.replace(",", ";"),
    broker_credentials=faust_credentials(settings.kafka_client_config),  # SASL/TLS, as every client (schemas/kafka.py)
    store="rocksdb://",
    datadir=str(settings.state_dir / APP_ID),
    processing_guarantee="at_least_once",
    # Stop and rebalance without waiting for unacked events: the metric agent acks its events only at a checkpoint,
    # so waiting held every shutdown until supervisord's SIGKILL (30 s). Unacked events are replayed from the last
    # commit, which the windows skip by offset and the pair agents' deterministic ids make harmless.
    stream_wait_empty=False,
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=settings.streams_session_timeout_s,
    broker_heartbeat_interval=1.0,
    broker_commit_interval=settings.streams_commit_interval_s,
    # Tansu's "latest" offset is the base offset of the newest batch + 1: with one record per batch that is
    # the true highwater, so rocksdb changelog recovery after a restart works (with larger batches it stops short
    # of the last records). Slower producing, hence only against the embedded broker.
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


# -- topics and the agent groups ------------------------------------------------------------------------
channels = Channels(
    metric_source=_topic(CHAT_RESPONSES.name, topology.FEEDBACK_JOINED.name),
    join_source=_topic(CHAT_REQUESTS.name, CHAT_RESPONSES.name, CHAT_FEEDBACK.name, topology.PAIR_TICKS.name),
    feedback_joined=_topic(topology.FEEDBACK_JOINED.name, internal=True),
    pair_ticks=_topic(topology.PAIR_TICKS.name, internal=True),
    trigger_source=_topic(DPO_PAIRS.name, RETRAIN_JOBS.name),
    trigger_input=_topic(topology.TRIGGER_INPUT.name, partitions=topology.TRIGGER_INPUT.partitions, internal=True),
    metrics_windows=_topic(METRICS_WINDOWS.name),
    dpo_pairs=_topic(DPO_PAIRS.name),
    retrain_jobs=_topic(RETRAIN_JOBS.name),
    feedback_dlq=_topic(CHAT_FEEDBACK.dlq, partitions=1),
)
shared = Shared()
book = metrics.install(app, channels, shared, settings, PARTITIONS, "pairs" in AGENTS) if "metrics" in AGENTS else None
if "pairs" in AGENTS:
    pairs.install(app, channels, shared, settings, PARTITIONS, book)
if "trigger" in AGENTS:
    trigger.install(app, channels, shared, settings)


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
    if settings.streams_metrics_port:
        start_http_server(settings.streams_metrics_port, addr=settings.metrics_host)
    _state_for_epoch(settings.state_dir / APP_ID, broker_epoch(settings.kafka_bootstrap))
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        args = ["worker", "--without-web", "-l", settings.log_level.lower()]
    sys.argv = [sys.argv[0], *args]
    app.main()


if __name__ == "__main__":
    main()
