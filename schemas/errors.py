"""The one error family for bad event input; each kind names what was wrong and where."""

from __future__ import annotations


class EventError(ValueError):
    """An event could not be decoded or validated. `field` names the offending field, if any."""

    kind = "invalid_event"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class NotJSON(EventError):
    kind = "not_json"


class UnknownEventType(EventError):
    kind = "unknown_event_type"


class InvalidField(EventError):
    kind = "invalid_field"


class UnsupportedSchemaVersion(EventError):
    kind = "unsupported_schema_version"
