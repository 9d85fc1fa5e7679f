"""The ClickHouse sink: every topic of the registry into its table, exactly once per event_id.

Reads:  every topic of schemas.topics.TOPICS and their `<topic>.dlq` topics, consumer group
        SINK_GROUP (schemas.topology); FLYWHEEL_* / FLYWHEEL_SINK_* settings; routes per topic in consumers.routes.
Writes: the registry's topics if missing (schemas.topics.create_topics, before subscribing);
        one table per topic (schemas.ddl), `dead_letters` (from the DLQ topics), the batch ledger
        `flywheel.sink_batches` (consumers.writer); DeadLetter events to `<topic>.dlq` for events
        that do not decode; committed offsets of SINK_GROUP; Prometheus metrics (consumers.metrics).

How a message travels: consume() in batches -> decode with schemas.codec against the topic's
value type -> a row in its partition's open batch, or a DeadLetter for the DLQ. A flush starts
when `sink_batch_rows` messages are buffered or the oldest has waited `sink_flush_interval_s`:
1. the batches' offset ranges go to the ledger;
2. each batch is inserted with `insert_deduplication_token` = group/topic/partition/first-last;
3. dead letters are produced to the DLQ and the producer flushed (deliveries checked);
4. only then the offsets are committed (synchronously).
A crash anywhere re-reads from the last commit; the ledger makes the re-read cut at the same
ranges, so re-inserted batches carry the same token and are dropped. Store outages pause the
consumer and retry the same batch with exponential backoff; nothing is dropped or committed.

Garbage collection: decoding a batch keeps thousands of new objects alive at once, and CPython's cyclic
collector, triggered by allocation counts, traverses them again and again (about a quarter of a batch's
time here). This path builds no reference cycles to speak of (a retried store error's traceback, at most one
per back-off), so the collector is paused for each step of the loop (`poll_once`: consume, decode, and the
flush when due, with its retries) and runs between steps, after a flush has freed the batch.

Embedded mode (chdb:// DSN): the sink runs inside consumers.store_server, the one process that
may open the chDB path. Production (http:// DSN): `python -m consumers.sink` is its own process.
Both write through one clickhouse-connect client.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from consumers import metrics
from consumers.batching import Accumulator, Batch, commit_positions
from consumers.routes import PRODUCER, Route, dead_letter, gc_paused, routes
from consumers.settings import SinkSettings
from consumers.writer import StoreRejected, StoreUnavailable, StoreWriter
from schemas import events, store
from schemas.codec import decode, encode
from schemas.epoch import broker_epoch
from schemas.errors import EventError
from schemas.kafka import client_config
from schemas.topics import create_topics
from schemas.topology import SINK_GROUP

log = logging.getLogger(__name__)


class ShutdownAborted(Exception):
    """Stopping while the store is still unavailable: leave the batch uncommitted for the next run."""


class Sink:
    """One consumer group member: consume, decode, batch, insert, dead-letter, commit."""

    def __init__(self, settings: SinkSettings, client, group_id: str = SINK_GROUP, topics: list[str] | None = None):
        self.settings = settings
        self.group_id = group_id
        self.routes = routes()
        self.topics = topics or list(self.routes)
        self.ledger_group = group_id  # + the broker epoch once subscribed
        self.writer = StoreWriter(client, group_id)
        self.acc = Accumulator(settings.sink_batch_rows, settings.sink_flush_interval_s)
        self.stop_event = threading.Event()
        self.assigned: set[tuple[str, int]] = set()
        self.flushed_events = 0
        self._dlq_failures: list[str] = []
        self.consumer = Consumer(
            client_config(
                settings.kafka_bootstrap,
                {
                    "group.id": group_id,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": settings.sink_session_timeout_ms,
                    "heartbeat.interval.ms": max(settings.sink_session_timeout_ms // 6, 500),
                    "max.poll.interval.ms": 300_000,
                    "enable.partition.eof": False,
                },
            )
        )
        self.producer = Producer(client_config(settings.kafka_bootstrap, {"enable.idempotence": True, "linger.ms": 5}))

    # -- group membership -------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = consumer.committed(partitions, timeout=30)
        for tp in committed:
            plan = self._retry(
                lambda tp=tp: self.writer.planned_ranges(tp.topic, tp.partition, tp.offset),
                "read the ledger",
                consume=False,
            )
            self.acc.assign(tp.topic, tp.partition, plan)
            self.assigned.add((tp.topic, tp.partition))
            if plan:
                log.info(
                    "replaying recorded batch ranges",
                    extra={"topic": tp.topic, "partition": tp.partition, "offset": tp.offset, "ranges": len(plan)},
                )
        log.info("partitions assigned", extra={"count": len(partitions)})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.acc.revoke(tp.topic, tp.partition)  # unflushed messages: the next owner re-reads them
            self.assigned.discard((tp.topic, tp.partition))
        log.info("partitions revoked", extra={"count": len(partitions)})

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """Consume until `stop_event` is set, then flush what is complete and close."""
        self.subscribe()
        try:
            while not self.stop_event.is_set():
                self.poll_once(timeout=0.2)
            self.flush()  # on shutdown: complete batches become durable and committed
        except ShutdownAborted as exc:
            log.error("final flush abandoned; the next run re-reads from the last commit", extra={"error": str(exc)})
        finally:
            self.close()

    def close(self) -> None:
        self.consumer.close()
        self.producer.flush(5)
        log.info("sink stopped", extra={"events": self.flushed_events})

    def subscribe(self) -> None:
        # Ledger ranges and insert tokens are offsets of this broker log: keyed by its epoch (schemas.epoch).
        self.ledger_group = f"{self.group_id}@{broker_epoch(self.settings.kafka_bootstrap)}"
        self.writer = StoreWriter(self.writer.client, self.ledger_group)
        self._ensure_topics()
        self.consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        log.info(
            "sink started",
            extra={"group": self.group_id, "ledger_group": self.ledger_group, "topics": len(self.topics)},
        )

    def _ensure_topics(self) -> None:
        """Create the registry's topics first: subscribing to a missing one makes Tansu auto-create it
        with 4 partitions, which faust then refuses (PartitionsMismatch)."""
        delay = self.settings.sink_retry_min_s
        while not self.stop_event.is_set():
            try:
                create_topics(self.settings.kafka_bootstrap, timeout=10)
                return
            except Exception as exc:  # broker not up yet
                log.warning("cannot create topics; retrying", extra={"error": str(exc), "retry_in_s": round(delay, 1)})
                self.stop_event.wait(delay)
                delay = min(delay * 2, self.settings.sink_retry_max_s)

    def poll_once(self, timeout: float) -> int:
        """One step of the loop: consume a batch of messages, flush if rows or age say so; returns messages."""
        with gc_paused():
            consumed = self._consume(timeout)
            if self.acc.due(time.monotonic()):
                self.flush()
        return consumed

    def _consume(self, timeout: float) -> int:
        messages = self.consumer.consume(num_messages=self.settings.sink_consume_batch, timeout=timeout)
        now = time.monotonic()
        add = self.acc.add
        for msg in messages:
            if msg.error() is not None:
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error", extra={"error": str(msg.error())})
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            route = self.routes[topic]
            value = msg.value()
            try:
                if value is None:
                    raise EventError("empty message (tombstone)")
                add(topic, partition, offset, now, row=route.to_row(decode(value, route.value_type)))
            except EventError as exc:
                letter = dead_letter(topic, partition, offset, msg.key(), value, exc)
                if route.dlq is None:  # a bad message on a DLQ topic: keep it as a dead_letters row
                    add(topic, partition, offset, now, row=route.to_row(letter))
                else:
                    add(topic, partition, offset, now, dead=letter)
        metrics.BUFFERED.set(self.acc.size)
        return len(messages)

    def flush(self) -> int:
        """Make every complete batch durable, then commit; returns the events written."""
        started = time.monotonic()
        batches = self.acc.take_ready(started)
        if not batches:
            return 0
        self._retry(lambda: self.writer.record(batches), "record batch ranges")
        written = 0
        for batch in batches:
            written += self._insert(batch)
        self._send_dead_letters(batches)
        if self.settings.sink_commit_delay_s:
            time.sleep(self.settings.sink_commit_delay_s)
        positions = {k: v for k, v in commit_positions(batches).items() if k in self.assigned}
        if positions:
            offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
                metrics.COMMITS.inc()
            except KafkaException as exc:
                # Harmless for correctness: the rows are durable, a re-read replays the ledger's ranges
                # and the tokens drop the copies; the next commit of this partition covers these offsets.
                log.warning("offset commit failed", extra={"error": str(exc), "partitions": len(offsets)})
        for batch in batches:
            metrics.BATCHES.labels(batch.topic).inc()
        self.flushed_events += written
        metrics.FLUSH_SECONDS.observe(time.monotonic() - started)
        metrics.BUFFERED.set(self.acc.size)
        return written

    def _insert(self, batch: Batch) -> int:
        if not batch.rows:
            return 0
        route = self.routes[batch.topic]
        token = batch.token(self.ledger_group)
        try:
            self._retry(lambda: self.writer.insert(route.table, route.columns, batch.rows, token), "insert")
        except StoreRejected as exc:
            return self._insert_rows_one_by_one(batch, route, token, exc)
        metrics.EVENTS.labels(batch.topic).inc(len(batch.rows))
        return len(batch.rows)

    def _insert_rows_one_by_one(self, batch: Batch, route: Route, token: str, exc: Exception) -> int:
        """The store rejected the batch: find the rows it rejects and dead-letter them, keep the rest."""
        metrics.STORE_ERRORS.labels("rejected").inc()
        log.error(
            "store rejected a batch; inserting row by row",
            extra={
                "topic": batch.topic,
                "partition": batch.partition,
                "first": batch.first,
                "last": batch.last,
                "error": str(exc),
            },
        )
        written = 0
        for i, row in enumerate(batch.rows):
            try:
                self._retry(
                    lambda row=row, i=i: self.writer.insert(route.table, route.columns, [row], f"{token}#{i}"),
                    "insert row",
                )
                written += 1
            except StoreRejected as row_exc:
                payload = json.dumps(dict(zip(route.columns, row, strict=False)), default=str)
                letter = events.dead_letter(
                    batch.topic,
                    batch.partition,
                    -1,
                    None,
                    payload,
                    "store_rejected",
                    str(row_exc),
                    PRODUCER,
                    name=f"{token}#{i}",
                )
                if route.dlq is None:
                    log.error("dead letter rejected by the store", extra={"topic": batch.topic, "row": i})
                else:
                    batch.dead.append(letter)
        metrics.EVENTS.labels(batch.topic).inc(written)
        return written

    def _send_dead_letters(self, batches: list[Batch]) -> None:
        letters = [(self.routes[b.topic].dlq, letter) for b in batches for letter in b.dead]
        if not letters:
            return

        def deliver() -> None:
            self._dlq_failures.clear()
            for dlq, letter in letters:
                self.producer.produce(
                    dlq, key=(letter.key or "").encode(), value=encode(letter), on_delivery=self._on_dlq_delivery
                )
                self.producer.poll(0)
            remaining = self.producer.flush(30)
            if remaining or self._dlq_failures:
                metrics.DLQ_ERRORS.inc(len(self._dlq_failures) + remaining)
                raise StoreUnavailable(f"DLQ delivery failed: {remaining} undelivered, {self._dlq_failures[:3]}")

        self._retry(deliver, "produce dead letters")
        for _, letter in letters:
            metrics.DEAD_LETTERS.labels(letter.source_topic, letter.error_type).inc()
            log.info(
                "dead letter",
                extra={
                    "topic": letter.source_topic,
                    "partition": letter.partition,
                    "offset": letter.offset,
                    "error_type": letter.error_type,
                },
            )

    def _on_dlq_delivery(self, err, msg) -> None:
        if err is not None:
            self._dlq_failures.append(str(err))

    # -- retries --------------------------------------------------------------------------------
    def _retry(self, fn: Callable, what: str, consume: bool = True):
        """Call fn until it succeeds; on StoreUnavailable pause consumption and back off exponentially.

        While paused the consumer is still polled (`consume`), so the group keeps this member;
        not from inside a rebalance callback (`consume=False`), which runs within a poll.
        """
        delay = self.settings.sink_retry_min_s
        paused: list[TopicPartition] = []
        deadline = None
        try:
            while True:
                try:
                    return fn()
                except StoreRejected:
                    raise
                except StoreUnavailable as exc:
                    metrics.STORE_ERRORS.labels("retryable").inc()
                    if self.stop_event.is_set():
                        deadline = deadline or time.monotonic() + self.settings.sink_shutdown_timeout_s
                        if time.monotonic() > deadline:
                            raise ShutdownAborted(f"{what}: still failing at shutdown: {exc}") from exc
                    log.warning(
                        "store step failed; retrying", extra={"step": what, "error": str(exc), "delay_s": delay}
                    )
                    if consume and not paused and self.assigned:
                        paused = self.consumer.assignment()
                        self.consumer.pause(paused)
                        metrics.PAUSED.set(1)
                    self.stop_event.wait(delay) if not paused else self._consume(timeout=delay)
                    delay = min(delay * 2, self.settings.sink_retry_max_s)
        finally:
            if paused:
                self.consumer.resume([tp for tp in paused if (tp.topic, tp.partition) in self.assigned])
                metrics.PAUSED.set(0)

    def stop(self) -> None:
        self.stop_event.set()


def store_client(settings: SinkSettings):
    """The one clickhouse-connect client the sink writes with: chdb:// in-process or http(s)://."""
    return store.connect(settings.store_dsn)


def main() -> None:
    """Production mode: the sink as its own process against a ClickHouse server."""
    from prometheus_client import start_http_server

    from schemas.ddl import migrate
    from schemas.logs import setup_logging

    settings = SinkSettings()
    setup_logging(settings.log_level)
    if settings.embedded_store:
        raise SystemExit("with a chdb:// store the sink runs inside the store owner: python -m consumers.store_server")
    client = store_client(settings)
    migrate(client, settings.clickhouse_cluster)
    if settings.sink_metrics_port:
        start_http_server(settings.sink_metrics_port, addr=settings.metrics_host)
    sink = Sink(settings, client)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sink.stop())
    sink.run()


if __name__ == "__main__":
    main()
