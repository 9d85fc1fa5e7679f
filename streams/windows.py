"""Metric windows: tumbling per (model_version, route) aggregates, pure logic (no faust, no I/O).

Design (why it survives Tansu and at-least-once delivery):
- Events of one (model_version, route) arrive on every partition of `chat.responses` (keyed by
  session). Each source partition keeps its own partial aggregates (`PartitionWindows`) together
  with the last offset it applied per topic; the agent checkpoints that record to a rocksdb table
  (changelog partition = source partition) and acks the events only after the write. A replay after
  a crash starts at or before the checkpoint and skips offsets already applied: no double counting.
- Windows close on event time: the watermark is the slowest active source's newest event time, a source
  being a (topic, partition) this worker reads. A source is active while it has a backlog (its highwater
  is past the last offset applied) or had an event in the last `idle_s`; with no active source the
  watermark follows the wall clock. So a partition that is behind during a catch-up holds the windows
  open however long it waits for its turn, and an idle one does not hold them at all.
- Feedback reaches this agent through the join agent (chat.feedback -> streams.feedback-joined), one hop
  behind the responses. Run in the same process, the join agent reports its progress on chat.feedback
  (`observe`), and that topic's backlog and recent events hold the watermark as well. A feedback holds it
  at the feedback's time (`hold`) from the moment the join agent reads it, while it waits for its response
  and while it travels (producer buffer, broker) as joined feedback, until this agent applies it
  (`release`) or it is dead-lettered. During a catch-up the join runs far ahead of the metrics, so neither
  recent activity nor a highwater (stale while faust pauses a partition) covers that hop.
- A window closes when end + grace <= watermark and is emitted once, merged over the partitions. The
  emission horizon is checkpointed too: after a restart, windows at or below it are dropped and their
  replayed events are late.
- A window re-emitted after a crash carries the same figures and the same event_id (uuid5 of
  model_version, route, window size and start), so downstream (ReplacingMergeTree on event_id)
  keeps it once.

Figures: latency quantiles over every response of the window, ttft over those with a ttft; errors =
status "error", timeouts = status "timeout"; tokens_per_s = completion tokens / window seconds;
thumbs counted at the feedback's time under the answer's model_version and route, once per feedback id.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.events import MetricsWindow
from streams.quantiles import LogSketch

WINDOW_NAMESPACE = uuid.UUID("6f1d2c4e-7c7a-4f0e-9d43-1b2f6b7e0a01")
PRODUCER = "flywheel-streams"

WindowKey = tuple[str, str, int, int]  # model_version, route, window seconds, window start (epoch s)


def window_event_id(key: WindowKey) -> uuid.UUID:
    model_version, route, seconds, start = key
    return uuid.uuid5(WINDOW_NAMESPACE, f"{model_version}|{route}|{seconds}|{start}")


@dataclass
class Aggregate:
    accuracy: float
    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    completion_tokens: int = 0
    latency: LogSketch = None  # type: ignore[assignment]
    ttft: LogSketch = None  # type: ignore[assignment]
    thumbs_up: set[str] = field(default_factory=set)
    thumbs_down: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.latency = self.latency or LogSketch(self.accuracy)
        self.ttft = self.ttft or LogSketch(self.accuracy)

    def add_response(self, status: str, latency_ms: float, ttft_ms: float | None, completion_tokens: int) -> None:
        self.requests += 1
        if status == "error":
            self.errors += 1
        elif status == "timeout":
            self.timeouts += 1
        self.completion_tokens += completion_tokens
        self.latency.add(latency_ms)
        if ttft_ms is not None:
            self.ttft.add(ttft_ms)

    def merge(self, other: Aggregate) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.timeouts += other.timeouts
        self.completion_tokens += other.completion_tokens
        self.latency.merge(other.latency)
        self.ttft.merge(other.ttft)
        self.thumbs_up |= other.thumbs_up
        self.thumbs_down |= other.thumbs_down

    def to_json(self) -> dict[str, Any]:
        return {
            "r": self.requests,
            "e": self.errors,
            "t": self.timeouts,
            "c": self.completion_tokens,
            "l": self.latency.to_json(),
            "f": self.ttft.to_json(),
            "u": sorted(self.thumbs_up),
            "d": sorted(self.thumbs_down),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Aggregate:
        latency = LogSketch.from_json(data["l"])
        return cls(
            accuracy=latency.accuracy,
            requests=data["r"],
            errors=data["e"],
            timeouts=data["t"],
            completion_tokens=data["c"],
            latency=latency,
            ttft=LogSketch.from_json(data["f"]),
            thumbs_up=set(data["u"]),
            thumbs_down=set(data["d"]),
        )

    def to_event(self, key: WindowKey) -> MetricsWindow:
        model_version, route, seconds, start = key
        return MetricsWindow(
            event_id=window_event_id(key),
            occurred_at=datetime.fromtimestamp(start + seconds, UTC),
            producer=PRODUCER,
            model_version=model_version,
            route=route,  # type: ignore[arg-type]
            window_start=datetime.fromtimestamp(start, UTC),
            window_seconds=seconds,
            requests=self.requests,
            errors=self.errors,
            timeouts=self.timeouts,
            latency_p50_ms=self.latency.quantile(0.5),
            latency_p90_ms=self.latency.quantile(0.9),
            latency_p99_ms=self.latency.quantile(0.99),
            ttft_p50_ms=self.ttft.quantile(0.5),
            ttft_p99_ms=self.ttft.quantile(0.99),
            tokens_per_s=self.completion_tokens / seconds,
            thumbs_up=len(self.thumbs_up),
            thumbs_down=len(self.thumbs_down),
        )


@dataclass
class PartitionWindows:
    """Partial aggregates of one source partition and the offsets they include."""

    offsets: dict[str, int] = field(default_factory=dict)
    windows: dict[WindowKey, Aggregate] = field(default_factory=dict)
    horizon: float = 0.0
    event_time: dict[str, float] = field(default_factory=dict)  # newest event time per source topic
    last_event_wall: dict[str, float] = field(default_factory=dict)  # not checkpointed: restored = idle
    events_since_checkpoint: int = 0
    last_checkpoint_wall: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "offsets": dict(self.offsets),
            "horizon": self.horizon,
            "event_time": dict(self.event_time),
            "windows": [[*key, agg.to_json()] for key, agg in self.windows.items()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartitionWindows:
        windows = {
            (mv, route, int(s), int(start)): Aggregate.from_json(a) for mv, route, s, start, a in data["windows"]
        }
        return cls(
            offsets={t: int(o) for t, o in data["offsets"].items()},
            windows=windows,
            horizon=float(data["horizon"]),
            event_time={t: float(v) for t, v in data.get("event_time", {}).items()},
        )


@dataclass
class Progress:
    """How far an upstream agent got on a source it reads for us (not checkpointed: restored = unknown)."""

    offset: int
    event_time: float = float("-inf")
    wall: float = 0.0


class WindowBook:
    """All partitions' partial windows of one worker; decides what is late, what closes, what to emit."""

    def __init__(self, window_seconds: list[int], grace_s: float, idle_s: float, accuracy: float, now: float):
        self.window_seconds = sorted(set(window_seconds))
        self.grace_s = grace_s
        self.idle_s = idle_s
        self.accuracy = accuracy
        self.partitions: dict[int, PartitionWindows] = {}
        self.observed: dict[tuple[str, int], Progress] = {}  # (topic, partition) read by an upstream agent
        self.holds: dict[str, tuple[float, float]] = {}  # feedback id -> (event time, wall deadline)
        self.horizon = 0.0  # every window with end + grace <= horizon has been emitted
        self.started_wall = now
        self.events_seen = 0
        self.late_events = 0
        self.replayed_events = 0

    # -- state --------------------------------------------------------------------------------

    def partition(self, partition: int) -> PartitionWindows:
        state = self.partitions.get(partition)
        if state is None:
            state = self.partitions[partition] = PartitionWindows(horizon=self.horizon)
        return state

    def restore(self, partition: int, data: dict[str, Any]) -> None:
        """Load a checkpoint; windows at or below the emission horizon were emitted already."""
        state = PartitionWindows.from_json(data)
        self.partitions[partition] = state
        self.horizon = max(self.horizon, state.horizon)
        for other in self.partitions.values():
            self._drop_emitted(other)

    def forget(self, partition: int) -> None:
        self.partitions.pop(partition, None)

    def checkpoint(self, partition: int, now: float) -> dict[str, Any]:
        state = self.partition(partition)
        state.horizon = self.horizon
        state.events_since_checkpoint = 0
        state.last_checkpoint_wall = now
        return state.to_json()

    def checkpoint_due(self, partition: int, now: float, interval_s: float, max_events: int) -> bool:
        state = self.partition(partition)
        return state.events_since_checkpoint >= max_events or (
            state.events_since_checkpoint > 0 and now - state.last_checkpoint_wall >= interval_s
        )

    def applied_offset(self, topic: str, partition: int) -> int | None:
        """The last offset of (topic, partition) this worker applied or an upstream agent observed."""
        observed = self.observed.get((topic, partition))
        if observed is not None:
            return observed.offset
        state = self.partitions.get(partition)
        return None if state is None else state.offsets.get(topic)

    # -- input --------------------------------------------------------------------------------

    def observe(self, topic: str, partition: int, offset: int, event_time: float | None, now: float) -> None:
        """An upstream agent (the feedback join) processed this event: hold the watermark behind it."""
        progress = self.observed.get((topic, partition))
        if progress is None:
            progress = self.observed[(topic, partition)] = Progress(offset)
        progress.offset = max(progress.offset, offset)
        progress.wall = now
        if event_time is not None and event_time > progress.event_time:
            progress.event_time = event_time

    def _accept(
        self, topic: str, partition: int, offset: int, event_time: float, now: float
    ) -> PartitionWindows | None:
        state = self.partition(partition)
        if offset <= state.offsets.get(topic, -1):
            self.replayed_events += 1
            return None
        state.offsets[topic] = offset
        state.events_since_checkpoint += 1
        state.last_event_wall[topic] = now
        if event_time > state.event_time.get(topic, float("-inf")):
            state.event_time[topic] = event_time
        self.events_seen += 1
        return state

    def _windows_for(self, state: PartitionWindows, model_version: str, route: str, event_time: float):
        for seconds in self.window_seconds:
            start = int(event_time // seconds) * seconds
            if start + seconds + self.grace_s <= self.horizon:
                self.late_events += 1
                continue
            key = (model_version, route, seconds, start)
            agg = state.windows.get(key)
            if agg is None:
                agg = state.windows[key] = Aggregate(self.accuracy)
            yield agg

    def add_response(
        self,
        topic: str,
        partition: int,
        offset: int,
        now: float,
        *,
        model_version: str,
        route: str,
        event_time: float,
        status: str,
        latency_ms: float,
        ttft_ms: float | None,
        completion_tokens: int,
    ) -> bool:
        state = self._accept(topic, partition, offset, event_time, now)
        if state is None:
            return False
        for agg in self._windows_for(state, model_version, route, event_time):
            agg.add_response(status, latency_ms, ttft_ms, completion_tokens)
        return True

    def add_feedback(
        self,
        topic: str,
        partition: int,
        offset: int,
        now: float,
        *,
        model_version: str,
        route: str,
        event_time: float,
        feedback: str,
        feedback_id: str,
    ) -> bool:
        state = self._accept(topic, partition, offset, event_time, now)
        if state is None:
            return False
        for agg in self._windows_for(state, model_version, route, event_time):
            (agg.thumbs_up if feedback == "thumbs_up" else agg.thumbs_down).add(feedback_id)
        return True

    def hold(self, key: str, event_time: float, until: float) -> None:
        """Feedback read upstream (waiting for its response, or joined and on its way here): hold its windows
        open until released or `until`."""
        self.holds[key] = (event_time, until)

    def release(self, key: str) -> None:
        """The held feedback reached its windows (or never will: dead-lettered)."""
        self.holds.pop(key, None)

    # -- output -------------------------------------------------------------------------------

    def watermark(self, now: float, backlog: Mapping[tuple[str, int], int | None] | None = None) -> float:
        """Event time up to which the stream is complete, as far as this worker can tell.

        `backlog`: (topic, partition) -> events between the last applied offset and the highwater; None when
        nothing was applied since the start while the partition holds events (a backlog, or only old events:
        it holds the windows during the start-up wait, like an empty book)."""
        backlog = backlog or {}
        starting = now - self.started_wall < 5 * self.idle_s
        sources: dict[tuple[str, int], tuple[float, float | None]] = {}  # -> newest event time, last event wall
        for partition, state in self.partitions.items():
            for topic, event_time in state.event_time.items():
                sources[(topic, partition)] = (event_time, state.last_event_wall.get(topic))
        for key, progress in self.observed.items():
            sources[key] = (progress.event_time, progress.wall)
        for key, behind in backlog.items():
            if behind is None or behind > 0:
                sources.setdefault(key, (float("-inf"), None))

        def holds(key: tuple[str, int], wall: float | None) -> bool:
            behind = backlog.get(key, 0)
            if behind is None:
                return starting
            return behind > 0 or (wall is not None and now - wall < self.idle_s)

        active = [event_time for key, (event_time, wall) in sources.items() if holds(key, wall)]
        for key, (event_time, until) in list(self.holds.items()):
            if now < until:
                active.append(event_time)
            else:
                del self.holds[key]  # never released (e.g. applied by another worker): its wait is over
        if active:
            return min(active)
        # Idle: follow the wall clock, but after a (re)start only once the replay had a chance to begin.
        if self.events_seen or now - self.started_wall >= 5 * self.idle_s:
            return now
        return float("-inf")

    def close(self, now: float, backlog: Mapping[tuple[str, int], int | None] | None = None) -> list[MetricsWindow]:
        """Emit every window whose end + grace is at or below the watermark, merged over partitions."""
        watermark = self.watermark(now, backlog)
        if watermark <= self.horizon:
            return []
        merged: dict[WindowKey, Aggregate] = {}
        for state in self.partitions.values():
            for key in [k for k in state.windows if k[3] + k[2] + self.grace_s <= watermark]:
                agg = state.windows.pop(key)
                if key in merged:
                    merged[key].merge(agg)
                else:
                    merged[key] = agg
        self.horizon = watermark
        return [merged[key].to_event(key) for key in sorted(merged, key=lambda k: (k[3], k[2], k[0], k[1]))]

    def _drop_emitted(self, state: PartitionWindows) -> None:
        for key in [k for k in state.windows if k[3] + k[2] + self.grace_s <= self.horizon]:
            del state.windows[key]
