"""JSON encode/decode of events, with one typed error (schemas.errors) for every kind of bad input.

Decoding is a single pydantic `validate_json` call over a union discriminated by `event_type`,
so a good event costs one parse; a bad one is classified from pydantic's error list.
"""

from __future__ import annotations

from typing import Annotated, TypeVar, Union

from pydantic import Field, TypeAdapter, ValidationError

from schemas.errors import EventError, InvalidField, NotJSON, UnknownEventType, UnsupportedSchemaVersion
from schemas.events import EVENT_BY_TYPE, EVENT_TYPES, Event

E = TypeVar("E", bound=Event)

_ANY_EVENT = TypeAdapter(Annotated[Union[EVENT_TYPES], Field(discriminator="event_type")])  # noqa: UP007


def encode(event: Event) -> bytes:
    return event.__pydantic_serializer__.to_json(event)


def decode(data: bytes | str, expected: type[E] | None = None) -> E | Event:
    """Parse one event. With `expected`, anything else is an UnknownEventType error."""
    try:
        if expected is None:
            return _ANY_EVENT.validate_json(data)
        return expected.model_validate_json(data)
    except ValidationError as exc:
        raise _classify(exc, expected) from None


def _classify(exc: ValidationError, expected: type[Event] | None) -> EventError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    kind = first["type"]
    # With a discriminated union, locations start with the tag: drop it to name the field.
    loc = [str(part) for part in first["loc"]]
    if expected is None and loc and loc[0] in EVENT_BY_TYPE:
        loc = loc[1:]
    field = ".".join(loc) or None
    if kind in ("json_invalid", "json_type"):
        return NotJSON(f"not a JSON object: {first['msg']}")
    if not loc and kind not in ("union_tag_not_found", "union_tag_invalid"):
        return NotJSON(f"not a JSON object: {first['msg']}")
    if kind == "union_tag_not_found":
        return InvalidField("missing field 'event_type'", field="event_type")
    if kind == "union_tag_invalid":
        tag = first.get("ctx", {}).get("tag")
        return UnknownEventType(f"unknown event_type {tag!r}", field="event_type")
    if field == "event_type" and expected is not None:
        return UnknownEventType(
            f"event_type must be {expected.model_fields['event_type'].default!r}, got {first.get('input')!r}",
            field="event_type",
        )
    if field == "schema_version" and kind != "missing":
        return UnsupportedSchemaVersion(
            f"unsupported schema_version {first.get('input')!r} (supported: 1)", field="schema_version"
        )
    details = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'][1 if expected is None else 0 :]) or '<root>'}: {e['msg']}"
        for e in errors[:5]
    )
    return InvalidField(f"invalid field {field!r}: {details}", field=field)
