"""Which topic and key each event goes to, from the registry in schemas.topics.

The map from event type to (topic name, key field) is resolved once per type and cached,
so the send path costs one dict lookup and one attribute read.
"""

from __future__ import annotations

from producers.errors import UnroutableEvent
from schemas.events import DeadLetter, Event
from schemas.topics import BY_EVENT, BY_NAME


def route(event: Event) -> tuple[str, str | None]:
    """(topic name, message key) of one event. Dead letters go to their source topic's DLQ."""
    topic = BY_EVENT.get(type(event))
    if topic is not None:
        return topic.name, str(getattr(event, topic.key_field))
    if isinstance(event, DeadLetter):
        source = BY_NAME.get(event.source_topic)
        if source is None:
            raise UnroutableEvent(f"dead letter from unknown topic {event.source_topic!r}")
        return source.dlq, event.key
    raise UnroutableEvent(f"no topic for event_type {event.event_type!r}")


def static_routes() -> dict[type[Event], tuple[str, str]]:
    """(topic name, key field) per event type with a fixed topic, for the hot path."""
    return {cls: (topic.name, topic.key_field) for cls, topic in BY_EVENT.items()}
