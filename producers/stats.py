"""Delivery accounting shared by the sync and async producers.

librdkafka reports each message's fate in a delivery callback served by `poll()`/`flush()`.
With `delivery.report.only.error` only failures reach Python, which keeps the per-event cost
low; the number delivered is then exact by subtraction: sent - failed - still queued.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message

log = logging.getLogger(__name__)

LAST_ERRORS = 20

ErrorCallback = Callable[["FailedDelivery"], None]


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """One event the broker did not take, with librdkafka's error."""

    topic: str
    key: str | None
    code: str
    reason: str
    retriable: bool

    def __str__(self) -> str:
        return f"{self.topic} key={self.key}: {self.code}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ProducerStats:
    """A snapshot of a producer's delivery counters."""

    sent: int  # handed to librdkafka
    delivered: int  # acknowledged by the broker
    failed: int  # reported failed by a delivery callback
    pending: int  # still queued or in flight
    last_errors: tuple[FailedDelivery, ...] = ()

    @property
    def ok(self) -> bool:
        """Everything sent was delivered."""
        return self.failed == 0 and self.pending == 0


class DeliveryTracker:
    """Counts sent and failed events; keeps the last errors; calls the user's `on_error`."""

    def __init__(self, on_error: ErrorCallback | None = None):
        self.sent = 0
        self.failed = 0
        self.last_errors: deque[FailedDelivery] = deque(maxlen=LAST_ERRORS)
        self.fatal: KafkaError | None = None
        self._on_error = on_error

    def client_error(self, err: KafkaError) -> None:
        """librdkafka's error_cb: client-level errors (brokers down, auth); a fatal one ends the producer."""
        if err.fatal():
            self.fatal = err
            log.error("fatal producer error", extra={"error": err.name(), "reason": err.str()})
        else:
            log.warning("producer error", extra={"error": err.name(), "reason": err.str()})

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """librdkafka's delivery callback (only failures arrive with delivery.report.only.error)."""
        if err is not None:
            self.failure(err, msg)

    def failure(self, err: KafkaError, msg: Message) -> FailedDelivery:
        key = msg.key()
        failure = FailedDelivery(
            topic=msg.topic() or "",
            key=key.decode(errors="replace") if key is not None else None,
            code=err.name(),
            reason=err.str(),
            retriable=err.retriable(),
        )
        self.failed += 1
        self.last_errors.append(failure)
        log.warning("delivery failed", extra={"topic": failure.topic, "key": failure.key, "error": failure.code})
        if self._on_error is not None:
            try:
                self._on_error(failure)
            except Exception:  # a user callback must not break librdkafka's poll loop
                log.exception("on_error callback raised")
        return failure

    def snapshot(self, pending: int) -> ProducerStats:
        return ProducerStats(
            sent=self.sent,
            delivered=self.sent - self.failed - pending,
            failed=self.failed,
            pending=pending,
            last_errors=tuple(self.last_errors),
        )
