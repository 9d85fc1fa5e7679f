"""Metric windows: chat.responses and joined feedback -> per-version windows -> metrics.windows.

chat.responses + streams.feedback-joined --[metric_windows]--> (table metric-checkpoints)
                                     [close_windows timer] --> metrics.windows
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import faust

from schemas.codec import decode, encode
from schemas.errors import EventError
from schemas.events import ChatResponse
from schemas.internal import JoinedFeedback
from schemas.topics import CHAT_FEEDBACK, CHAT_RESPONSES
from schemas.topology import FEEDBACK_JOINED
from streams import counters
from streams.settings import StreamSettings
from streams.windows import WindowBook
from streams.wiring import Channels, Shared

log = logging.getLogger(__name__)

TABLE_METRIC_CHECKPOINTS = "metric-checkpoints"
AGENT_METRIC_WINDOWS = "streams.metric-windows"


def install(
    app: faust.App, ch: Channels, shared: Shared, settings: StreamSettings, partitions: int, with_pairs: bool
) -> WindowBook:
    """Register the metric agent and its timer; the window book they fill, which the join agent holds open.

    `with_pairs`: the join agent runs in this process, so the windows also wait for raw feedback it has not
    joined yet."""
    metric_checkpoints = app.Table(TABLE_METRIC_CHECKPOINTS, partitions=partitions)  # source partition -> state
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
        shared.recovered.add(TABLE_METRIC_CHECKPOINTS)
        log.info("metric windows restored", extra={"partitions": sorted(book.partitions), "horizon": book.horizon})

    @app.agent(ch.metric_source, name=AGENT_METRIC_WINDOWS)
    async def metric_windows(stream: faust.StreamT) -> None:
        """Aggregate in memory; checkpoint a partition's partials to the table, then ack its events."""
        unacked: dict[int, list[faust.EventT]] = defaultdict(list)
        manual = stream.noack()
        async for event in manual.events():
            message = event.message
            partition, now = message.partition, time.time()
            apply(message.topic, partition, message.offset, event.value, now)
            unacked[partition].append(event)
            if book.checkpoint_due(
                partition, now, settings.streams_checkpoint_interval_s, settings.streams_checkpoint_max_events
            ):
                metric_checkpoints[str(partition)] = book.checkpoint(partition, now)
                for done in unacked.pop(partition):
                    await manual.ack(done)

    def apply(topic: str, partition: int, offset: int, value: bytes, now: float) -> None:
        if topic == CHAT_RESPONSES.name:
            try:
                r = decode(value, ChatResponse)
            except EventError as exc:
                shared.skip_undecodable(topic, partition, offset, exc)
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
            rec = JoinedFeedback.model_validate_json(value)
            book.add_feedback(
                topic,
                partition,
                offset,
                now,
                model_version=rec.model_version,
                route=rec.route,
                event_time=rec.occurred_at,
                feedback=rec.feedback,
                feedback_id=rec.feedback_id,
            )
            book.release(rec.feedback_id)

    def backlog() -> dict[tuple[str, int], int | None]:
        """Per source this worker's windows wait for: events between the last one applied and the highwater
        (aiokafka's, from the latest fetch); None: events there, none applied since the start."""
        watched = {CHAT_RESPONSES.name, FEEDBACK_JOINED.name} | ({CHAT_FEEDBACK.name} if with_pairs else set())
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
        if TABLE_METRIC_CHECKPOINTS not in shared.recovered:  # before recovery a window could be emitted half-full
            return
        for window in book.close(time.time(), backlog()):
            await ch.metrics_windows.send(key=window.model_version.encode(), value=encode(window))
            counters.WINDOWS.inc()
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

    return book
