"""Per-partition batches for the ClickHouse sink: pure logic, no I/O.

A batch is a contiguous offset range of one topic partition. Its insert deduplication
token is derived from (group, topic, partition, first offset, last offset) only, so the
same range re-read after a crash gets the same token and the store drops the retried block.

That only helps if the re-read range is cut at the same offsets. Size and time flushes
cut wherever the consumer happened to be, so before a batch is inserted its range is
recorded in a ledger (see consumers.writer). After a restart, the ranges recorded past the
committed offset become a *plan*: the accumulator cuts the re-read messages at exactly
those boundaries and holds them back from time/size flushes until each planned range is
complete. Ranges beyond the plan are cut freely again.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field


def dedup_token(group: str, topic: str, partition: int, first: int, last: int) -> str:
    """Deterministic insert_deduplication_token for one partition's offset range."""
    return f"{group}/{topic}/{partition}/{first}-{last}"


def ledger_id(token: str) -> str:
    """Short stable id of a batch (for logs and the ledger's own dedup)."""
    return hashlib.blake2b(token.encode(), digest_size=8).hexdigest()


@dataclass
class Batch:
    """Decoded rows and dead letters of one contiguous offset range of one partition."""

    topic: str
    partition: int
    first: int
    last: int
    rows: list = field(default_factory=list)
    dead: list = field(default_factory=list)  # DeadLetter events (or rows, for DLQ topics)
    planned: bool = False  # its range came from the ledger: already recorded there

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.dead)

    def token(self, group: str) -> str:
        return dedup_token(group, self.topic, self.partition, self.first, self.last)


class PartitionBuffer:
    """The open batch and the sealed batches of one partition, plus the replay plan."""

    def __init__(self, topic: str, partition: int, plan: Iterable[tuple[int, int]] = ()):
        self.topic = topic
        self.partition = partition
        self.plan: deque[tuple[int, int]] = deque(sorted(set(plan)))
        self.sealed: list[Batch] = []
        self.open: Batch | None = None
        self.size = 0  # messages held (open + sealed)

    def _start(self, offset: int) -> Batch:
        # Plans are contiguous from the committed offset; drop those already passed.
        while self.plan and self.plan[0][1] < offset:
            self.plan.popleft()
        if self.plan and self.plan[0][0] <= offset:
            first, last = self.plan[0]
            return Batch(self.topic, self.partition, first, last, planned=True)
        return Batch(self.topic, self.partition, offset, offset)

    def _seal(self) -> None:
        if self.open is not None:
            if self.open.planned:
                self.plan.popleft()
            self.sealed.append(self.open)
            self.open = None

    def add(self, offset: int, row=None, dead=None) -> None:
        """Add one message's outcome: a decoded row, or a dead letter."""
        if self.open is not None and self.open.planned and offset > self.open.last:
            self._seal()  # gap after a planned range (compaction, aborted transaction markers)
        if self.open is None:
            self.open = self._start(offset)
        elif not self.open.planned and self.plan and offset >= self.plan[0][0]:
            self._seal()  # a free batch must not run into a planned range
            self.open = self._start(offset)
        batch = self.open
        if row is not None:
            batch.rows.append(row)
        if dead is not None:
            batch.dead.append(dead)
        if not batch.planned:
            batch.last = offset
        self.size += 1
        if batch.planned and offset >= batch.last:
            self._seal()

    def take_ready(self) -> list[Batch]:
        """Sealed batches and the open free batch; an incomplete planned batch waits for its last offset."""
        if self.open is not None and not self.open.planned:
            self._seal()
        ready, self.sealed = self.sealed, []
        self.size -= sum(b.size for b in ready)
        return ready

    @property
    def waiting_on_plan(self) -> bool:
        return self.open is not None and self.open.planned


class Accumulator:
    """Every assigned partition's buffer; decides when a flush is due (rows or age, whichever first)."""

    def __init__(self, max_rows: int, max_age_s: float):
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.buffers: dict[tuple[str, int], PartitionBuffer] = {}
        self.oldest: float | None = None  # monotonic time of the oldest unflushed message

    def assign(self, topic: str, partition: int, plan: Iterable[tuple[int, int]] = ()) -> None:
        self.buffers[(topic, partition)] = PartitionBuffer(topic, partition, plan)

    def revoke(self, topic: str, partition: int) -> None:
        """Forget a partition: its unflushed messages are re-read by the next owner."""
        self.buffers.pop((topic, partition), None)

    def add(self, topic: str, partition: int, offset: int, now: float, row=None, dead=None) -> None:
        buffer = self.buffers.get((topic, partition))
        if buffer is None:  # message delivered before the assign callback ran: no plan
            buffer = self.buffers[(topic, partition)] = PartitionBuffer(topic, partition)
        buffer.add(offset, row, dead)
        if self.oldest is None:
            self.oldest = now

    @property
    def size(self) -> int:
        return sum(b.size for b in self.buffers.values())

    def due(self, now: float) -> bool:
        if self.oldest is None:
            return False
        return self.size >= self.max_rows or now - self.oldest >= self.max_age_s

    def take_ready(self, now: float) -> list[Batch]:
        ready = [batch for buffer in self.buffers.values() for batch in buffer.take_ready()]
        self.oldest = now if self.size else None
        return ready


def commit_positions(batches: Iterable[Batch]) -> dict[tuple[str, int], int]:
    """The offset to commit per partition after `batches` are durable: one past the highest last offset."""
    positions: dict[tuple[str, int], int] = {}
    for batch in batches:
        key = (batch.topic, batch.partition)
        positions[key] = max(positions.get(key, 0), batch.last + 1)
    return positions
