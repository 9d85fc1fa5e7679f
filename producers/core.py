"""What the sync and async producers share: librdkafka config, routing, encoding, accounting.

Input validation happens before anything is queued: an Event is valid by construction;
dicts and JSON bytes are decoded with schemas.codec and raise its EventError on bad input.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import orjson

from producers.errors import DeliveryFailed, ProducerError
from producers.routing import route, static_routes
from producers.settings import ProducerSettings
from producers.stats import DeliveryTracker, ErrorCallback, ProducerStats
from schemas.codec import decode
from schemas.errors import NotJSON
from schemas.events import Event

log = logging.getLogger(__name__)


class ProducerCore:
    """Config, routing and accounting; subclasses add the transport (sync or asyncio)."""

    _report_only_errors = True

    def __init__(
        self,
        settings: ProducerSettings | None = None,
        *,
        on_error: ErrorCallback | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.settings = settings or ProducerSettings()
        self._tracker = DeliveryTracker(on_error)
        self._lock = threading.Lock()  # guards the sent counter when threads share a producer
        self._routes = static_routes()
        self._closed = False
        cfg = self.settings.kafka_config()
        # The tracker, not self, receives librdkafka's callbacks: no reference cycle through the handle.
        cfg["error_cb"] = self._tracker.client_error
        cfg["logger"] = logging.getLogger("producers.librdkafka")  # librdkafka's log lines, not raw stderr
        cfg["delivery.report.only.error"] = self._report_only_errors
        if self._report_only_errors:  # otherwise each send passes its own callback
            cfg["on_delivery"] = self._tracker.on_delivery
        cfg.update(config or {})
        self._config = cfg

    # -- input ---------------------------------------------------------------------------------

    def _target(self, event: Event) -> tuple[str, str | None, bytes]:
        """(topic, key, value) for one event; the fast path is one dict lookup and one attribute read."""
        fixed = self._routes.get(type(event))
        if fixed is not None:
            topic, key = fixed[0], str(getattr(event, fixed[1]))
        else:
            topic, key = route(event)
        return topic, key, event.__pydantic_serializer__.to_json(event)

    @staticmethod
    def _from_dict(data: dict[str, Any]) -> Event:
        try:
            raw = orjson.dumps(data)
        except TypeError as exc:
            raise NotJSON(f"not JSON-serializable: {exc}") from None
        return decode(raw)

    # -- accounting ----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise ProducerError("producer is closed")
        if self._tracker.fatal is not None:
            raise ProducerError(f"producer failed fatally: {self._tracker.fatal.str()}")

    def _pending(self) -> int:
        raise NotImplementedError

    def _closed_with(self, stats: ProducerStats, strict: bool) -> ProducerStats:
        """The end of close(): log what was not delivered, and raise it when `strict`."""
        if not stats.ok:
            log.error(
                "producer closed with undelivered events",
                extra={"failed": stats.failed, "pending": stats.pending, "sent": stats.sent},
            )
            if strict:
                raise DeliveryFailed(
                    f"{stats.failed} events failed and {stats.pending} undelivered of {stats.sent} sent",
                    stats,
                )
        return stats

    @property
    def stats(self) -> ProducerStats:
        """Counts of events sent, delivered, failed and still pending, with the last errors."""
        return self._tracker.snapshot(self._pending())

    @property
    def failed(self) -> int:
        """Events whose delivery failed so far."""
        return self._tracker.failed
