"""Errors of the producer SDK. Bad event input raises schemas.errors.EventError instead."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from producers.stats import ProducerStats


class ProducerError(Exception):
    """Base class of the SDK's transport errors."""


class ProducerBackpressure(ProducerError):
    """The local queue stayed full for longer than `block_timeout`: the broker is slow or down.

    Nothing was enqueued for the event that raised; the caller decides whether to retry or shed load.
    """


class UnroutableEvent(ProducerError):
    """The event's type has no topic in the registry (schemas.topics)."""


class DeliveryFailed(ProducerError):
    """Raised by `close()` when some events were not delivered; `stats` says how many and why."""

    def __init__(self, message: str, stats: ProducerStats):
        super().__init__(message)
        self.stats = stats


class DeliveryError(ProducerError):
    """One event was not delivered (the async `send` raises it); `code` is librdkafka's error name."""

    def __init__(self, message: str, code: str = "", retriable: bool = False):
        super().__init__(message)
        self.code = code
        self.retriable = retriable
