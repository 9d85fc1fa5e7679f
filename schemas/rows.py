"""Events to ClickHouse rows: each model field is a column of the same name in its topic's table.

Message lists (`messages`, `prompt`) are stored as JSON strings; everything else maps directly.
"""

from __future__ import annotations

import json

from schemas.events import Event

_JSON_FIELDS = frozenset({"messages", "prompt"})


def columns(event_type: type[Event]) -> list[str]:
    return list(event_type.model_fields)


def to_row(event: Event) -> list:
    row = []
    for name in type(event).model_fields:
        value = getattr(event, name)
        if name in _JSON_FIELDS:
            value = json.dumps([m.model_dump() for m in value], ensure_ascii=False)
        row.append(value)
    return row
