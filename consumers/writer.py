"""The sink's store side: batch inserts with deduplication tokens, the batch ledger, error classes.

One clickhouse-connect client in both modes: `chdb://` inside the embedded store process,
`http://` against a ClickHouse server. Nothing here consumes Kafka.

The ledger (`flywheel.sink_batches`) records each batch's offset range *before* its rows are
inserted. After a crash the sink cuts the re-read messages at the recorded ranges again, so the
retried insert carries the same token and is dropped (consumers.batching explains the plan).
"""

from __future__ import annotations

import logging
import socket

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from consumers.batching import Batch, ledger_id
from schemas.ddl import DATABASE, SINK_LEDGER

log = logging.getLogger(__name__)

# The batch ledger: offset ranges recorded before their rows are written (created by schemas.ddl, migration 5).
LEDGER_TABLE = f"{DATABASE}.{SINK_LEDGER}"
LEDGER_COLUMNS = ["group_id", "topic", "partition", "first_offset", "last_offset", "batch_id"]

# ClickHouse error codes worth retrying: the server is busy, short of memory, or a network hiccup.
RETRYABLE_CODES = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE
        159,  # TIMEOUT_EXCEEDED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        236,  # ABORTED
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        252,  # TOO_MANY_PARTS
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)


class StoreUnavailable(Exception):
    """A retryable store failure: wait and try the same batch again (same token)."""


class StoreRejected(Exception):
    """A non-retryable failure: the batch as built will never be accepted (schema, types)."""


def classify(exc: BaseException) -> type[Exception]:
    """StoreUnavailable or StoreRejected for an exception raised by a clickhouse-connect call."""
    if isinstance(exc, (OSError, socket.timeout, ConnectionError, OperationalError)):
        return StoreUnavailable
    code = getattr(exc, "code", None)
    if isinstance(exc, DatabaseError) and code is None:
        text = str(exc)
        if "Code:" in text:
            try:
                code = int(text.split("Code:", 1)[1].split(".", 1)[0].strip())
            except ValueError:
                code = None
        elif any(word in text.lower() for word in ("connection", "timed out", "timeout", "refused", "reset")):
            return StoreUnavailable
    if code is not None and int(code) in RETRYABLE_CODES:
        return StoreUnavailable
    return StoreRejected


class StoreWriter:
    """Inserts batches into their tables; one cached insert context per table."""

    def __init__(self, client, group_id: str):
        self.client = client
        self.group_id = group_id
        self._contexts: dict[str, object] = {}

    def planned_ranges(self, topic: str, partition: int, committed: int) -> list[tuple[int, int]]:
        """Ranges recorded for this partition that end at or after the committed offset."""
        result = self.client.query(
            f"SELECT DISTINCT first_offset, last_offset FROM {LEDGER_TABLE} "
            "WHERE group_id = {g:String} AND topic = {t:String} AND partition = {p:Int32} "
            "AND last_offset >= {c:Int64} ORDER BY first_offset",
            parameters={"g": self.group_id, "t": topic, "p": partition, "c": max(committed, 0)},
        )
        return [(int(first), int(last)) for first, last in result.result_rows]

    def record(self, batches: list[Batch]) -> None:
        """Write the ranges of batches not yet in the ledger (one insert)."""
        rows = [
            [self.group_id, b.topic, b.partition, b.first, b.last, ledger_id(b.token(self.group_id))]
            for b in batches
            if not b.planned
        ]
        if rows:
            self._call(self.client.insert, LEDGER_TABLE, rows, column_names=LEDGER_COLUMNS)

    def insert(self, table: str, columns: list[str], rows: list, token: str) -> None:
        """One insert with a deduplication token; raises StoreUnavailable or StoreRejected."""
        key = f"{DATABASE}.{table}"
        context = self._contexts.get(key)
        if context is None:
            context = self._call(self.client.create_insert_context, key, columns)
            self._contexts[key] = context
        # On a cluster the Distributed table hands the batch (and its token) to its shard before the insert returns,
        # so a committed offset means the rows are stored there.
        context.settings = {"insert_deduplication_token": token, "insert_deduplicate": 1, "insert_distributed_sync": 1}
        context.data = rows
        try:
            self._call(self.client.data_insert, context)
        finally:
            context.data = None

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (StoreUnavailable, StoreRejected):
            raise
        except Exception as exc:  # clickhouse-connect, chDB and socket errors alike
            raise classify(exc)(f"{type(exc).__name__}: {exc}") from exc
