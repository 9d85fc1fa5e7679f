"""Events to ClickHouse rows: each model field is a column of the same name in its topic's table.

Message and source lists (`messages`, `prompt`, `sources`) are stored as JSON strings; everything else maps directly.
`row_builder` precomputes the column order per event type and reads the frozen model's `__dict__` with
one `operator.itemgetter`: about 1 us per ChatResponse, where a list comprehension over the names took
about 2.7 us and looking fields up by name about 28 us (measured for the sink, 10,000 events).
A row is a tuple, or a list where a field is re-encoded as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import cache
from operator import itemgetter

from schemas.events import Event

JSON_FIELDS = frozenset({"messages", "prompt", "sources"})


def columns(event_type: type[Event]) -> list[str]:
    return list(event_type.model_fields)


@cache
def row_builder(event_type: type[Event]) -> Callable[[Event], Sequence]:
    """A function turning events of `event_type` into rows in `columns(event_type)` order."""
    names = columns(event_type)
    json_fields = [i for i, name in enumerate(names) if name in JSON_FIELDS]
    fields = itemgetter(*names)
    if not json_fields:
        return lambda event: fields(event.__dict__)

    def build(event: Event) -> list:
        row = list(fields(event.__dict__))
        for i in json_fields:
            row[i] = json.dumps([m.model_dump() for m in row[i]], ensure_ascii=False)
        return row

    return build


def to_row(event: Event) -> Sequence:
    return row_builder(type(event))(event)
