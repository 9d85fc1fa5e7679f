"""What the agent groups share, handed to each explicitly: the faust topics and the process's bookkeeping."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import faust

from schemas.errors import EventError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Channels:
    """The faust topics of the agents (sources and sinks), built once per app."""

    metric_source: faust.TopicT
    join_source: faust.TopicT
    feedback_joined: faust.TopicT
    pair_ticks: faust.TopicT
    trigger_source: faust.TopicT
    trigger_input: faust.TopicT
    metrics_windows: faust.TopicT
    dpo_pairs: faust.TopicT
    retrain_jobs: faust.TopicT
    feedback_dlq: faust.TopicT


@dataclass
class Shared:
    """The process's bookkeeping: tables recovered (timers wait for their agent's state), inputs skipped."""

    recovered: set[str] = field(default_factory=set)
    skipped_undecodable: Counter[str] = field(default_factory=Counter)  # topic -> undecodable events skipped

    def skip_undecodable(self, topic: str, partition: int, offset: int, exc: EventError) -> None:
        """Undecodable input is skipped, logged and counted here, never dead-lettered: the ClickHouse sink
        reads every topic and owns that DLQ (one letter per bad message, id from its position)."""
        self.skipped_undecodable[topic] += 1
        log.warning(
            "undecodable event skipped",
            extra={
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "error_type": exc.kind,
                "error": str(exc),
                "skipped": self.skipped_undecodable[topic],
            },
        )
