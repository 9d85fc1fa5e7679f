"""Where the sink sends each topic's messages (its table, its columns, its DLQ) and how it names a dead letter.

Every topic of the registry goes to its table; every DLQ topic to `dead_letters`. A message that does not
decode becomes a dead letter named by its position, so a re-read dead-letters it once.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from schemas import events
from schemas.errors import EventError
from schemas.events import DeadLetter, Event
from schemas.rows import columns, row_builder
from schemas.topics import DLQ_TABLE, TOPICS

PRODUCER = "flywheel-sink"


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for one batch step (see the module docstring)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(frozen=True)
class Route:
    """Where one topic's messages go."""

    topic: str
    value_type: type[Event]
    table: str
    columns: list[str]
    to_row: Callable[[Event], Sequence]
    dlq: str | None  # None for a DLQ topic itself: its bad messages become dead_letters rows directly


def routes() -> dict[str, Route]:
    table = {}
    for t in TOPICS:
        table[t.name] = Route(t.name, t.value_type, t.table, columns(t.value_type), row_builder(t.value_type), t.dlq)
        table[t.dlq] = Route(t.dlq, DeadLetter, DLQ_TABLE, columns(DeadLetter), row_builder(DeadLetter), None)
    return table


def dead_letter(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, error: EventError
) -> DeadLetter:
    """The dead letter of an undecodable message, named by its position."""
    return events.dead_letter(topic, partition, offset, key, value, error.kind, str(error), PRODUCER)
