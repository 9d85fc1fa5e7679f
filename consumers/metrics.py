"""Prometheus metrics of the ClickHouse sink (default registry; /metrics is served by the host process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("flywheel_sink_events", "Events inserted into their table", ["topic"])
DEAD_LETTERS = Counter("flywheel_sink_dead_letters", "Events sent to a DLQ topic", ["topic", "error_type"])
BATCHES = Counter("flywheel_sink_batches", "Partition batches made durable", ["topic"])
STORE_ERRORS = Counter("flywheel_sink_store_errors", "Failed store calls", ["kind"])  # retryable / rejected
DLQ_ERRORS = Counter("flywheel_sink_dlq_produce_errors", "Failed DLQ deliveries (retried)")
COMMITS = Counter("flywheel_sink_commits", "Offset commits after durable flushes")
FLUSH_SECONDS = Histogram(
    "flywheel_sink_flush_seconds",
    "Flush cycle duration (ledger, inserts, DLQ, commit)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BUFFERED = Gauge("flywheel_sink_buffered_messages", "Messages consumed, not yet committed")
PAUSED = Gauge("flywheel_sink_paused", "1 while consumption is paused for a store outage")
