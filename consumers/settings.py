"""Settings of the consumers: the ClickHouse sink (FLYWHEEL_SINK_* variables and the common ones)."""

from __future__ import annotations

from pydantic import Field

from schemas.settings import CommonSettings


class SinkSettings(CommonSettings):
    # A flush starts when this many messages are buffered over all partitions ... (20,000 rather than 10,000:
    # the sink's events/s +12% in bench/pipeline.py, fewer and larger parts as ClickHouse advises)
    sink_batch_rows: int = Field(20_000, ge=1, description="flush when this many messages are buffered")
    # ... or when the oldest buffered message has waited this long, whichever comes first. A flush makes one
    # insert per partition with rows, plus the ledger's: at light load the inserts, not the rows, are the cost.
    # 3 s rather than 1 s: with the gateway serving 70 requests/s (210 events/s), the embedded store used 6-8%
    # of a core instead of 12-16%, CPU that vLLM shares on a small host. Rows land about 3 s late.
    sink_flush_interval_s: float = Field(3.0, gt=0, description="flush when the oldest message is this old")
    # Messages asked of librdkafka per consume() call.
    sink_consume_batch: int = Field(10_000, ge=1, description="messages per consume() call")
    # Backoff while the store (or the DLQ producer) is unavailable: doubles from min to max, never gives up.
    sink_retry_min_s: float = Field(0.2, gt=0, description="first retry delay")
    sink_retry_max_s: float = Field(10.0, gt=0, description="longest retry delay")
    # How long a SIGTERM waits for the last flush before the process gives up (offsets stay uncommitted).
    sink_shutdown_timeout_s: float = Field(20.0, gt=0, description="final flush deadline on shutdown")
    # Prometheus /metrics port of a standalone sink (production mode); the embedded store serves /metrics itself.
    sink_metrics_port: int = Field(9464, description="standalone sink's /metrics port (0: none)")
    # Tansu's group join waits session_timeout/2: keep it low against the embedded broker.
    sink_session_timeout_ms: int = Field(6000, ge=1000, description="Kafka consumer session.timeout.ms")
    # Fault injection for the crash test only: sleep between the durable inserts and the offset commit,
    # widening the window in which a kill -9 forces a re-read of already inserted ranges. Keep 0.
    sink_commit_delay_s: float = Field(0.0, ge=0, description="testing: delay before each commit")
    # Run the sink inside the embedded store process (consumers.store_server).
    sink_enabled: bool = Field(True, description="embedded store also runs the sink")
