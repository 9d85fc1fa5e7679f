"""The system in one place: every topic (the registry's and the streams' internal ones), every ClickHouse table,
every consumer group, and which service (or `flywheel` command) produces and consumes what.

Services read their names from here (consumer groups, internal topics); `flywheel topology` prints it, and
`flywheel topology --mermaid` writes it as a diagram. tests/unit/test_topology.py checks it against the code:
the sink's routes, the streams' sources and sinks, the retrain worker's and the controller's subscriptions,
the events each service builds.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.ddl import SINK_LEDGER, TABLES
from schemas.internal import JoinedFeedback, TriggerInput
from schemas.topics import (
    CHAT_FEEDBACK,
    CHAT_REQUESTS,
    CHAT_RESPONSES,
    DLQ_TABLE,
    DPO_PAIRS,
    HUMAN_REVIEWS,
    INFERENCE_LATENCY,
    METRICS_WINDOWS,
    MODEL_DEPLOYMENTS,
    RETRAIN_JOBS,
    RETRIEVALS,
    TOPICS,
    TRAINING_METRICS,
)

# Consumer groups. Each names committed offsets (and the sink's ledger rows): renaming one is a migration.
SINK_GROUP = "flywheel-clickhouse-sink"
STREAMS_GROUP = "flywheel-streams"  # the faust app id; a subset of the agents runs as "<this>-<groups>"
RETRAIN_GROUP = "flywheel-retrain-worker"
CONTROLLER_GROUP = "flywheel-hotswap-controller"


@dataclass(frozen=True)
class InternalTopic:
    """A topic only the streams use between their agents (faust creates it)."""

    name: str
    partitions: int
    record: type  # what one message holds: a model of schemas/internal.py, or bytes


# feedback joined with its request and answer, keyed by question
FEEDBACK_JOINED = InternalTopic("streams.feedback-joined", CHAT_RESPONSES.partitions, JoinedFeedback)
PAIR_TICKS = InternalTopic("streams.pair-ticks", CHAT_RESPONSES.partitions, bytes)  # a clock tick per partition
TRIGGER_INPUT = InternalTopic("streams.trigger-input", 1, TriggerInput)  # a usable pair, a job's status, a tick
INTERNAL_TOPICS: tuple[InternalTopic, ...] = (FEEDBACK_JOINED, PAIR_TICKS, TRIGGER_INPUT)


@dataclass(frozen=True)
class Service:
    name: str  # as `flywheel status` lists it
    module: str  # what it runs: python -m <module>
    group: str | None  # its Kafka consumer group
    consumes: tuple[str, ...]
    produces: tuple[str, ...]
    writes: tuple[str, ...] = ()  # ClickHouse tables
    reads: tuple[str, ...] = ()


def _dlqs(*topics) -> tuple[str, ...]:
    return tuple(t.dlq for t in topics)


_EVERY_TOPIC = tuple(name for t in TOPICS for name in (t.name, t.dlq))

SERVICES: tuple[Service, ...] = (
    Service(
        "gateway",
        "inference.gateway.app",
        None,
        consumes=(),
        produces=(
            CHAT_REQUESTS.name,
            CHAT_RESPONSES.name,
            CHAT_FEEDBACK.name,
            INFERENCE_LATENCY.name,
            RETRIEVALS.name,
        ),
    ),
    Service(
        "store",  # the sink runs inside the embedded store (or as `consumers.sink` beside a ClickHouse server)
        "consumers.store_server",
        SINK_GROUP,
        consumes=_EVERY_TOPIC,
        produces=_dlqs(*TOPICS),
        writes=(*TABLES, SINK_LEDGER),
    ),
    Service(
        "streams",
        "streams.app",
        STREAMS_GROUP,
        consumes=(
            CHAT_REQUESTS.name,
            CHAT_RESPONSES.name,
            CHAT_FEEDBACK.name,
            DPO_PAIRS.name,
            RETRAIN_JOBS.name,
            *(t.name for t in INTERNAL_TOPICS),
        ),
        produces=(
            METRICS_WINDOWS.name,
            DPO_PAIRS.name,
            RETRAIN_JOBS.name,
            CHAT_FEEDBACK.dlq,
            *(t.name for t in INTERNAL_TOPICS),
        ),
    ),
    Service(
        "retrain",
        "retrain.worker",
        RETRAIN_GROUP,
        consumes=(RETRAIN_JOBS.name, MODEL_DEPLOYMENTS.name),
        produces=(RETRAIN_JOBS.name, TRAINING_METRICS.name, MODEL_DEPLOYMENTS.name),
        reads=(DPO_PAIRS.table, RETRAIN_JOBS.table),
    ),
    Service(
        "controller",
        "inference.controller.service",
        CONTROLLER_GROUP,
        consumes=(MODEL_DEPLOYMENTS.name,),
        produces=(MODEL_DEPLOYMENTS.name,),
        reads=(CHAT_RESPONSES.table, CHAT_FEEDBACK.table),
    ),
)
BY_SERVICE: dict[str, Service] = {s.name: s for s in SERVICES}


@dataclass(frozen=True)
class Command:
    """A `flywheel` command that publishes events: a producer that runs when a person types it."""

    name: str  # as typed
    modules: tuple[str, ...]  # where it builds its events (tests/unit/test_topology.py reads them there)
    produces: tuple[str, ...]


# `flywheel produce FILE` is left out: it replays whatever events a file holds, onto any topic, like the SDK.
COMMANDS: tuple[Command, ...] = (
    Command("flywheel review approve", ("deploy.cli_review",), (DPO_PAIRS.name,)),
    Command("flywheel review reject", ("deploy.cli_review",), (DPO_PAIRS.name,)),
    Command("flywheel review import", ("deploy.review_sheets",), (HUMAN_REVIEWS.name,)),
    Command("flywheel models promote", ("inference.controller.deployer",), (MODEL_DEPLOYMENTS.name,)),
    Command("flywheel models rollback", ("inference.controller.deployer",), (MODEL_DEPLOYMENTS.name,)),
    Command("flywheel demo", ("deploy.demo_bad",), (MODEL_DEPLOYMENTS.name,)),  # --bad announces its adapter
)


def topic_rows() -> list[tuple[str, str, str, str, str]]:
    """(topic, record, table, producers, consumers) for every topic, the registry's first."""
    rows = []
    names = [(t.name, t.value_type.__name__, t.table) for t in TOPICS]
    names += [(t.dlq, "DeadLetter", DLQ_TABLE) for t in TOPICS]
    names += [(t.name, t.record.__name__, "-") for t in INTERNAL_TOPICS]
    for name, record, table in names:
        makers = [*(s.name for s in SERVICES if name in s.produces), *(c.name for c in COMMANDS if name in c.produces)]
        producers = ", ".join(makers) or "-"
        consumers = ", ".join(s.name for s in SERVICES if name in s.consumes) or "-"
        rows.append((name, record, table, producers, consumers))
    return rows


def mermaid() -> str:
    """A Mermaid flowchart: services as boxes, commands as subroutines, topics as pills (DLQs folded into one)."""
    lines = ["flowchart LR"]

    def node(topic: str) -> str:
        return "dlq" if topic.endswith(".dlq") else topic.replace(".", "_").replace("-", "_")

    def command_node(command: Command) -> str:
        return "cmd_" + "_".join(command.name.split()[1:])

    named = {t for s in SERVICES for t in (*s.consumes, *s.produces)} | {t for c in COMMANDS for t in c.produces}
    topics = sorted({node(t) for t in named})
    for s in SERVICES:
        lines.append(f"  {s.name}[{s.name}]")
    for c in COMMANDS:
        lines.append(f'  {command_node(c)}[["{c.name}"]]')
    labels = {node(t.name): t.name for t in TOPICS} | {node(t.name): t.name for t in INTERNAL_TOPICS}
    for t in topics:
        lines.append(f"  {t}([{labels.get(t, '*.dlq')}])")
    edges = set()
    for s in SERVICES:
        edges |= {f"  {s.name} --> {node(t)}" for t in s.produces}
        edges |= {f"  {node(t)} --> {s.name}" for t in s.consumes}
    for c in COMMANDS:
        edges |= {f"  {command_node(c)} --> {node(t)}" for t in c.produces}
    return "\n".join(lines + sorted(edges)) + "\n"
