"""DDL against a real chDB (in-process): every event lands in its table; duplicates do not count twice."""

import clickhouse_connect
import pytest

from schemas.ddl import DATABASE, MIGRATIONS, applied_versions, migrate
from schemas.rows import columns, to_row
from schemas.topics import BY_EVENT, DLQ_TABLE
from tests.examples import examples

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    path = tmp_path_factory.mktemp("chdb")
    c = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    yield c
    c.close()


def _table(event):
    topic = BY_EVENT.get(type(event))
    return topic.table if topic else DLQ_TABLE


def test_migrate_is_idempotent(client):
    assert migrate(client) == [m.version for m in MIGRATIONS]
    assert migrate(client) == []
    assert applied_versions(client) == {m.version for m in MIGRATIONS}


def test_a_store_of_an_older_version_gains_the_new_columns(client):
    migrate(client)
    client.command("ALTER TABLE flywheel.dpo_pairs DROP COLUMN user_id")
    client.command("ALTER TABLE flywheel.schema_migrations DELETE WHERE version = 6 SETTINGS mutations_sync = 1")
    assert migrate(client) == [6]
    columns = {row[0] for row in client.query("DESCRIBE TABLE flywheel.dpo_pairs").result_rows}
    assert "user_id" in columns


@pytest.mark.parametrize("event", examples(), ids=lambda e: e.event_type)
def test_every_event_inserts_and_reads_back(client, event):
    migrate(client)
    table = f"{DATABASE}.{_table(event)}"
    client.insert(table, [to_row(event)], column_names=columns(type(event)))
    rows = client.query(
        f"SELECT event_id, event_type FROM {table} WHERE event_id = %(id)s", parameters={"id": str(event.event_id)}
    ).result_rows
    assert [(str(r[0]), r[1]) for r in rows] == [(str(event.event_id), event.event_type)]


def test_same_batch_retried_with_token_lands_once(client):
    migrate(client)
    event = examples()[1]
    table = f"{DATABASE}.chat_responses"
    for _ in range(3):
        client.insert(
            table,
            [to_row(event)],
            column_names=columns(type(event)),
            settings={"insert_deduplication_token": "chat.responses:0:100-199"},
        )
    n = client.command(f"SELECT count() FROM {table} WHERE event_id = '{event.event_id}'")
    assert int(n) == 1


def test_same_event_in_two_batches_counts_once_with_final(client):
    migrate(client)
    event = examples()[1]
    table = f"{DATABASE}.chat_responses"
    for token in ("a", "b"):
        client.insert(
            table, [to_row(event)], column_names=columns(type(event)), settings={"insert_deduplication_token": token}
        )
    n = client.command(f"SELECT count() FROM {table} FINAL WHERE event_id = '{event.event_id}'")
    assert int(n) == 1


def _every_statement() -> list[str]:
    from schemas import ddl

    return [f"CREATE DATABASE IF NOT EXISTS {DATABASE}", ddl._LEDGER, *(s for m in MIGRATIONS for s in m.statements)]


def test_the_cluster_ddl_is_valid_clickhouse_and_replicated(client):
    """ClickHouse's parser (EXPLAIN AST) takes every cluster statement; every table is Replicated on each node,
    with a Distributed table of the same name over it."""
    from schemas.ddl import on_cluster

    statements = [c for s in _every_statement() for c in on_cluster(s, "prod")]
    for statement in statements:
        assert "ON CLUSTER 'prod'" in statement
        assert client.query(f"EXPLAIN AST {statement}").result_rows
    local = [s for s in statements if "_local ON CLUSTER" in s and "ENGINE = Replicated" in s]
    distributed = [s for s in statements if "ENGINE = Distributed('prod', 'flywheel'" in s]
    tables = [s for s in _every_statement() if s.startswith("CREATE TABLE")]
    assert len(local) == len(distributed) == len(tables) > 10
    assert not [s for s in statements if "non_replicated" in s]
    with pytest.raises(Exception, match="Syntax error"):  # the check would catch a broken statement
        client.query("EXPLAIN AST CREATE TABLE x ON CLUSTER 'prod' (a UInt8 ENGINE = Memory")
