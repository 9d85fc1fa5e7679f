"""ChatEventProducer: the client apps' way to publish Flywheel events to Kafka.

Writes each event as JSON to its topic from schemas.topics, keyed by the registry's key
(the session id for chat topics, so one session's events keep their order).
Idempotent (no duplicates or reordering on retries); never drops an event silently:
a full queue blocks up to `block_timeout` then raises ProducerBackpressure, and every
delivery failure is counted in `stats`, passed to `on_error`, and makes `close()` raise.

Example:

    from producers import ChatEventProducer
    from schemas.events import Feedback

    with ChatEventProducer() as producer:   # FLYWHEEL_KAFKA_BOOTSTRAP, FLYWHEEL_PRODUCER_*
        producer.send(Feedback(session_id="s1", message_id="m1", feedback="thumbs_up"))
        producer.send_json(b'{"event_type": "feedback", ...}')  # EventError if invalid
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Producer

from producers.backpressure import produce_blocking
from producers.core import ProducerCore
from producers.routing import route
from producers.settings import ProducerSettings
from producers.stats import ErrorCallback, ProducerStats
from schemas.codec import decode
from schemas.events import Event

log = logging.getLogger(__name__)


class ChatEventProducer(ProducerCore):
    """Synchronous producer: `send` queues and returns; `flush`/`close` wait for delivery.

    Thread-safe: several threads may share one instance.
    """

    def __init__(
        self,
        settings: ProducerSettings | None = None,
        *,
        on_error: ErrorCallback | None = None,
        config: dict[str, Any] | None = None,
    ):
        super().__init__(settings, on_error=on_error, config=config)
        self._producer = Producer(self._config)
        self._produce = self._producer.produce
        self._poll = self._producer.poll
        self._block_timeout = self.settings.producer_block_timeout_s

    def send(self, event: Event) -> None:
        """Queue one event for its topic. Raises ProducerBackpressure if the queue stays full."""
        if self._closed or self._tracker.fatal is not None:
            self._check_usable()
        # _target inlined: this is the hot path.
        fixed = self._routes.get(type(event))
        if fixed is not None:
            topic, key = fixed[0], str(getattr(event, fixed[1]))
        else:
            topic, key = route(event)
        value = event.__pydantic_serializer__.to_json(event)
        try:
            self._produce(topic, value, key)
        except BufferError:
            produce_blocking(lambda: self._produce(topic, value, key), self._poll, self._block_timeout)
        with self._lock:
            self._tracker.sent += 1
        self._poll(0)  # serve delivery reports; never blocks

    def send_dict(self, data: dict[str, Any]) -> Event:
        """Validate a dict as an event (any event_type) and send it; raises EventError if invalid."""
        event = self._from_dict(data)
        self.send(event)
        return event

    def send_json(self, data: bytes | str) -> Event:
        """Validate JSON as an event (any event_type) and send it; raises EventError if invalid."""
        event = decode(data)
        self.send(event)
        return event

    def flush(self, timeout: float | None = None) -> ProducerStats:
        """Wait until every queued event is delivered or failed (or `timeout` passes); return stats."""
        wait = self.settings.producer_flush_timeout_s if timeout is None else timeout
        self._producer.flush(wait)
        return self.stats

    def close(self, timeout: float | None = None, *, strict: bool = True) -> ProducerStats:
        """Flush and stop accepting events. Raises DeliveryFailed if anything was not delivered
        (unless `strict=False`); the stats are on the exception. Idempotent."""
        stats = self.flush(timeout)
        self._closed = True
        return self._closed_with(stats, strict)

    def _pending(self) -> int:
        return len(self._producer)

    def __enter__(self) -> ChatEventProducer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Do not hide the block's own exception behind a DeliveryFailed.
        self.close(strict=exc_type is None)
