"""The one way to open the ClickHouse store: a clickhouse-connect client for `chdb://PATH` or `http(s)://host:port`.

chDB runs in this process (one data path per process). Over HTTP the client sends uncompressed bodies and no
session id, so concurrent queries of one client never wait on a ClickHouse session lock. Extra options
(timeouts, retries) go to `clickhouse_connect.get_client`.
"""

from __future__ import annotations

from typing import Any


def connect(dsn: str, **options: Any):
    import clickhouse_connect  # imported here: most users of schemas never touch the store

    if dsn.startswith("chdb://"):
        return clickhouse_connect.get_client(dsn=dsn, **options)
    return clickhouse_connect.get_client(dsn=dsn, compress=False, autogenerate_session_id=False, **options)
