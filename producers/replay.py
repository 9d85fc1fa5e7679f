"""Replay a JSONL file of events onto their topics (reads FILE, writes the topics of schemas.topics).

Each non-blank line is one event of any type, decoded with schemas.codec; its type picks the
topic. A bad line is reported with its 1-based line number and the reason, and the rest go on.
Used by `flywheel produce FILE.jsonl` (producers.cli).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from producers.errors import UnroutableEvent
from producers.sdk import ChatEventProducer
from producers.stats import FailedDelivery
from schemas.codec import decode
from schemas.errors import EventError
from schemas.events import Event

log = logging.getLogger(__name__)


@dataclass
class ReplayResult:
    sent: int = 0
    invalid: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    failed: int = 0  # sent but not delivered (failed, or still pending when the flush timed out)
    delivery_errors: list[FailedDelivery] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.invalid == 0 and self.failed == 0


def parse_lines(lines: Iterable[bytes | str]) -> Iterator[tuple[int, Event | EventError]]:
    """Yield (line number, event or the error that line raised); blank lines are skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, decode(line)
        except EventError as exc:
            yield number, exc


def replay_lines(lines: Iterable[bytes | str], producer: ChatEventProducer) -> ReplayResult:
    """Send every valid line, report every bad one, flush; delivery failures are counted too."""
    result = ReplayResult()
    before = producer.stats
    for number, item in parse_lines(lines):
        if isinstance(item, EventError):
            result.invalid += 1
            result.errors.append((number, str(item)))
            continue
        try:
            producer.send(item)
        except UnroutableEvent as exc:
            result.invalid += 1
            result.errors.append((number, str(exc)))
            continue
        result.sent += 1
    after = producer.flush()
    new_failures = after.failed - before.failed
    result.failed = new_failures + after.pending
    # The producer keeps only its last few errors: show those of this replay.
    result.delivery_errors = list(after.last_errors[-new_failures:]) if new_failures else []
    log.info("replayed", extra={"sent": result.sent, "invalid": result.invalid, "failed": result.failed})
    return result


def replay_file(path: str | Path, producer: ChatEventProducer) -> ReplayResult:
    """Replay one JSONL file; see replay_lines."""
    with open(path, "rb") as lines:
        return replay_lines(lines, producer)
