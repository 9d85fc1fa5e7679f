"""Fire-and-forget event publishing for the gateway, with a disk spool for broker outages.

Reads: events from the request path. Writes: Kafka topics of schemas.topics; `<data_dir>/spool/*.jsonl`.

The request path only calls `publish(event)`: one `produce()` into librdkafka's in-memory queue
(or one append to the spool's buffer), never a wait for the broker. Nothing is lost:
- a message whose delivery report is a failure is written to the spool;
- when every broker is down (librdkafka's ALL_BROKERS_DOWN), the queue is purged into the spool and
  new events go to the spool until a probe reaches the broker again;
- a fatal producer error (an idempotent producer meeting a restarted in-memory Tansu broker that forgot
  its producer id: UNKNOWN_PRODUCER_ID, out-of-order sequence) replaces the producer, and whatever the
  old one had not delivered goes to the spool;
- on recovery the topics are created again (a restarted Tansu has none, and would auto-create them
  with the wrong partition count), a fresh producer is made, and the spool is replayed; a segment is
  deleted once all its records are handed over and flushed (their failures come back to the spool).
A message no broker will ever take (over its size limit) is not spooled: it goes to its topic's DLQ as a
dead letter with the reason and the first 64 KiB of its payload, so one such event never jams the spool.
Duplicates are possible only for a message in flight at the moment of a purge (tolerated downstream:
event_id dedup), never by replaying a segment twice.

Why not the producer SDK's `ChatEventProducer.send`: spooling needs the failed message itself, which the
SDK's error callback does not carry, and recovery needs to purge and replace the librdkafka producer.
So this module uses confluent-kafka directly with the SDK's settings (ProducerSettings.kafka_config).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from inference.gateway.settings import GatewaySettings
from inference.gateway.spool import Spool
from schemas.events import Event, dead_letter
from schemas.kafka import client_config
from schemas.topics import BY_EVENT, create_topics

log = logging.getLogger(__name__)

Hook = Callable[[str, int], None]  # (outcome, count): published, failed, spooled, replayed
PRODUCER = "flywheel-gateway"
# librdkafka errors that retrying (or spooling) cannot cure: the message itself is refused
UNDELIVERABLE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_MSG})
DEAD_PAYLOAD_BYTES = 65_536


class EventPublisher:
    def __init__(self, settings: GatewaySettings, hook: Hook | None = None):
        self.settings = settings
        self.hook = hook or (lambda _outcome, _n: None)
        self.spool = Spool(settings.spool_dir, settings.gateway_spool_flush_s)
        self._routes = {cls: (t.name, t.key_field) for cls, t in BY_EVENT.items()}
        self._config = settings.kafka_config()
        self._config.update(
            {
                "error_cb": self._on_error,
                "on_delivery": self._on_delivery,
                "delivery.report.only.error": True,  # successes cost nothing; failures carry the message
                "log_level": 3,  # librdkafka's connect errors are reported through error_cb
            }
        )
        self.spooling = False  # True while the broker is unreachable: events go straight to disk
        self.fatal: KafkaError | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.replaying = False
        self._producer: Producer | None = None
        self._stop = threading.Event()
        self._purge_requested = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="flywheel-gateway-poll", daemon=True)
        self._task: asyncio.Task | None = None
        self._replace_lock = threading.Lock()
        self._replay_lock = threading.Lock()  # one replay at a time: two would send a segment twice

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._producer = Producer(self._config)
        self.spool.start()
        self._poller.start()
        self._task = asyncio.create_task(self._supervise(), name="flywheel-publisher")

    async def close(self, timeout: float = 10.0) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(self._drain, timeout)

    def _drain(self, timeout: float) -> None:
        """Flush what the broker will take in `timeout`; spool the rest; stop the threads."""
        producer = self._producer
        if producer is not None and not self.spooling:
            producer.flush(timeout)
        if producer is not None:
            producer.purge(in_queue=True, in_flight=True, blocking=True)
            producer.poll(0)  # delivery reports of purged messages -> spool
        self._stop.set()
        if self._poller.is_alive():
            self._poller.join()
        self.spool.close()

    # -- request path ------------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Queue one event for its topic; never blocks, never raises for broker trouble."""
        topic, key_field = self._routes[type(event)]
        key = str(getattr(event, key_field))
        value = event.__pydantic_serializer__.to_json(event)
        if not self.spooling:
            try:
                self._producer.produce(topic, value, key)
                self.hook("published", 1)
                return
            except KafkaException as exc:
                if _undeliverable(exc.args[0]):
                    self._dead_letter(topic, key, value, exc.args[0])
                    return
                self._note(f"produce failed: {exc}")
            except BufferError as exc:
                self._note(f"produce failed: {exc}")
        self.spool.append(topic, key, value)
        self.hook("spooled", 1)

    def _dead_letter(self, topic: str, key: str | bytes | None, value: bytes, err: KafkaError) -> None:
        """An event the broker will never take: to its topic's DLQ with why, its head kept (never spooled)."""
        reason = f"{err.name()}: {len(value)} bytes; {err.str()}"
        letter = dead_letter(
            topic,
            -1,
            -1,
            key,
            value[:DEAD_PAYLOAD_BYTES],
            "undeliverable",
            reason,
            PRODUCER,
            name=f"{topic}/{hashlib.sha256(value).hexdigest()}",
        )
        self.hook("failed", 1)
        self._note(f"dead-lettered: {reason}")
        log.error("event dead-lettered: the broker refuses it", extra={"topic": topic, "error": reason})
        try:
            self._producer.produce(f"{topic}.dlq", letter.__pydantic_serializer__.to_json(letter), letter.key)
        except (BufferError, KafkaException) as exc:
            log.error("dead letter not produced", extra={"topic": topic, "error": repr(exc)})

    # -- librdkafka callbacks (poll thread) --------------------------------------------------------

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            return
        if _undeliverable(err) and not msg.topic().endswith(".dlq"):
            self._dead_letter(msg.topic(), msg.key(), msg.value(), err)
            return
        self.spool.append(msg.topic(), msg.key(), msg.value())
        self.hook("failed", 1)
        self.hook("spooled", 1)
        self._note(f"delivery failed: {err.name()}")

    def _on_error(self, err: KafkaError) -> None:
        self._note(f"{err.name()}: {err.str()}")
        if err.fatal():
            log.error("fatal producer error: replacing the producer", extra={"error": err.name()})
            self.fatal = err
            self._purge_requested.set()
        elif err.code() == KafkaError._ALL_BROKERS_DOWN and not self.spooling:
            log.warning("broker unreachable: spooling events to disk", extra={"spool": str(self.spool.dir)})
            self.spooling = True
            self._purge_requested.set()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            producer = self._producer
            if producer is not None:
                producer.poll(0.1)
            else:
                time.sleep(0.1)
            if self._purge_requested.is_set():
                self._purge_requested.clear()
                if self.fatal is not None:
                    self._replace_producer()
                elif producer is not None:
                    # Broker down: what librdkafka holds goes to disk now, so that nothing is retried into a
                    # restarted broker before its topics exist again.
                    producer.purge(in_queue=True, in_flight=True, blocking=False)
                    producer.poll(0)

    def _replace_producer(self) -> None:
        with self._replace_lock:
            old = self._producer
            self._producer = Producer(self._config)
            self.fatal = None
            if old is not None:
                old.purge(in_queue=True, in_flight=True, blocking=False)
                old.poll(0)  # their delivery reports put them in the spool
                old.flush(0)

    def _note(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = time.time()

    # -- recovery (event loop task; blocking parts in threads) -------------------------------------

    async def _supervise(self) -> None:
        probe_s = self.settings.gateway_broker_probe_s
        while True:
            await asyncio.sleep(probe_s)
            try:
                if self.spooling:
                    if await asyncio.to_thread(self._probe, 2.0):
                        await asyncio.to_thread(self._recover)
                if not self.spooling and self.spool.has_records():
                    await asyncio.to_thread(self._replay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._note(f"recovery failed: {exc!r}")
                log.warning("spool recovery failed; will retry", extra={"error": repr(exc)})

    def _probe(self, timeout: float) -> bool:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(client_config(self.settings.kafka_bootstrap, {"log_level": 0, "error_cb": lambda _e: None}))
        try:
            admin.list_topics(timeout=timeout)
            return True
        except Exception:
            return False

    def _recover(self) -> None:
        create_topics(self.settings.kafka_bootstrap, timeout=10.0)
        # A restarted in-memory broker forgot our producer id: start with a fresh one.
        with self._replace_lock:
            old = self._producer
            self._producer = Producer(self._config)
            self.spooling = False
        if old is not None:
            old.purge(in_queue=True, in_flight=True, blocking=False)
            old.poll(0)
            old.flush(0)
        log.info("broker reachable again: replaying the spool")

    def _replay(self) -> None:
        with self._replay_lock:
            self._replay_segments()

    def _replay_segments(self) -> None:
        self.replaying = True
        try:
            for segment in self.spool.rotate():
                records = self.spool.read(segment)
                done = 0
                producer = self._producer
                for topic, key, value in records:
                    if self.spooling or self._stop.is_set():
                        break
                    while True:
                        try:
                            producer.produce(topic, value, key)
                            break
                        except BufferError:
                            producer.poll(0.05)
                        except KafkaException as exc:  # per record: one bad record never blocks the rest
                            if not _undeliverable(exc.args[0]):
                                raise
                            self._dead_letter(topic, key, value, exc.args[0])
                            break
                    done += 1
                producer.flush(30.0)
                self.hook("replayed", done)
                if done < len(records):
                    self.spool.rewrite(segment, records[done:])
                    log.warning("replay interrupted", extra={"segment": str(segment), "left": len(records) - done})
                    return
                segment.unlink()
                log.info("spool segment replayed", extra={"segment": str(segment), "events": done})
        finally:
            self.replaying = False

    # -- health ------------------------------------------------------------------------------------

    async def health(self, timeout: float = 1.0) -> dict[str, Any]:
        """A metadata round trip with the live producer, and the spool state."""
        ok = False
        detail = ""
        if not self.spooling:
            try:
                md = await asyncio.to_thread(self._producer.list_topics, None, timeout)
                ok = True
                detail = f"{len(md.brokers)} broker(s)"
            except Exception as exc:
                detail = f"metadata request failed: {exc}"
        else:
            detail = "broker unreachable: spooling to disk"
        return {
            "ok": ok,
            "detail": detail,
            "spooling": self.spooling,
            "queued": len(self._producer) if self._producer is not None else 0,
            "spool_backlog": await asyncio.to_thread(self.spool.backlog),
            "last_error": self.last_error,
        }


def _undeliverable(err: KafkaError) -> bool:
    return err.code() in UNDELIVERABLE
