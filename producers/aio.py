"""AsyncChatEventProducer: publish events from asyncio code; `send` awaits the broker's ack.

confluent-kafka is synchronous, so a background thread polls librdkafka and resolves one
asyncio future per event with `loop.call_soon_threadsafe` (the pattern of confluent-kafka's
asyncio example). `produce` itself never blocks; a full queue is waited out with
`asyncio.sleep`, up to `block_timeout`, then ProducerBackpressure.

Example:

    async with AsyncChatEventProducer() as producer:
        delivery = await producer.send(event)            # Delivery(topic, partition, offset)
        await asyncio.gather(*(producer.send(e) for e in events))
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from producers.backpressure import POLL_STEP_S
from producers.core import ProducerCore
from producers.errors import DeliveryError, ProducerBackpressure
from producers.settings import ProducerSettings
from producers.stats import ErrorCallback, ProducerStats
from schemas.codec import decode
from schemas.events import Event

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker stored one event."""

    topic: str
    partition: int
    offset: int


class AsyncChatEventProducer(ProducerCore):
    _report_only_errors = False  # every event's future needs its result

    def __init__(
        self,
        settings: ProducerSettings | None = None,
        *,
        on_error: ErrorCallback | None = None,
        config: dict[str, Any] | None = None,
    ):
        super().__init__(settings, on_error=on_error, config=config)
        self._producer = Producer(self._config)
        self._acked = 0  # counted in the delivery callback, before the awaiting send() resumes
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="flywheel-producer-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    async def send(self, event: Event) -> Delivery:
        """Send one event and wait for the broker's ack; raises DeliveryError if it failed."""
        self._check_usable()
        topic, key, value = self._target(event)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:  # runs in the poll thread
            if err is None:
                outcome: Delivery | BaseException = Delivery(msg.topic(), msg.partition(), msg.offset())
                with self._lock:
                    self._acked += 1
            else:
                failure = self._tracker.failure(err, msg)
                outcome = DeliveryError(str(failure), code=failure.code, retriable=failure.retriable)
            try:
                loop.call_soon_threadsafe(_resolve, future, outcome)
            except RuntimeError:  # the loop is closed: nobody waits for this future any more
                pass

        await self._produce(topic, value, key, on_delivery)
        return await future

    async def send_dict(self, data: dict[str, Any]) -> Delivery:
        """Validate a dict as an event and send it; raises EventError if invalid."""
        return await self.send(self._from_dict(data))

    async def send_json(self, data: bytes | str) -> Delivery:
        """Validate JSON as an event and send it; raises EventError if invalid."""
        return await self.send(decode(data))

    async def _produce(self, topic: str, value: bytes, key: str | None, on_delivery) -> None:
        deadline = None
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.settings.producer_block_timeout_s
                elif now >= deadline:
                    raise ProducerBackpressure(
                        f"producer queue full for {self.settings.producer_block_timeout_s:g}s"
                    ) from None
                await asyncio.sleep(POLL_STEP_S)  # the poll thread frees slots meanwhile
        with self._lock:
            self._tracker.sent += 1

    async def flush(self, timeout: float | None = None) -> ProducerStats:
        """Wait (in a worker thread) until queued events are delivered or failed; return stats."""
        wait = self.settings.producer_flush_timeout_s if timeout is None else timeout
        await asyncio.to_thread(self._producer.flush, wait)
        return self.stats

    async def aclose(self, timeout: float | None = None, *, strict: bool = True) -> ProducerStats:
        """Flush, stop the poll thread; raise DeliveryFailed if anything was not delivered (if strict)."""
        if self._closed:
            return self.stats
        stats = await self.flush(timeout)
        self._closed = True
        self._stop.set()
        await asyncio.to_thread(self._poller.join)
        return self._closed_with(stats, strict)

    def _pending(self) -> int:
        # Not len(producer): a message still counts there while its callback runs, after its
        # send() may already have resumed. Every report reaches this producer, so count exactly.
        with self._lock:
            return self._tracker.sent - self._tracker.failed - self._acked

    async def __aenter__(self) -> AsyncChatEventProducer:
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.aclose(strict=exc_type is None)


def _resolve(future: asyncio.Future, outcome: Delivery | BaseException) -> None:
    if future.done():  # cancelled by the caller
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
