"""ClickHouse tables for every topic, applied as versioned migrations.

Engine and dedup: each table is a ReplacingMergeTree whose sorting key ends in `event_id`,
partitioned by month of `occurred_at`. Two mechanisms, for two ways a row arrives twice:
- a batch re-inserted after a crash (same rows, same order): the sink passes an
  `insert_deduplication_token` per partition and offset range, and the table keeps a
  deduplication window (`non_replicated_deduplication_window`), so the retry is dropped at insert;
- the same event produced twice (at-least-once producers, a replayed file): the two copies share
  `event_id` and hence the whole sorting key, so merges keep one. Until a merge runs, queries that
  must count exactly read `FINAL` (the analyst views do) or `count(DISTINCT event_id)`.
The same DDL runs on chDB and on a ClickHouse server: one code path, a client of clickhouse-connect.

On a ClickHouse cluster (`FLYWHEEL_CLICKHOUSE_CLUSTER`), `on_cluster` rewrites each statement: every table
becomes `<name>_local` with a Replicated engine on every node plus `<name>`, a Distributed table over them
sharded by `event_id` (both copies of an event land on one shard, where the merge keeps one), and every
statement runs `ON CLUSTER`. Readers and the sink keep using `<name>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.views import (
    loop_stages_statements,
    retrieval_and_code_statements,
    reviewed_accuracy_statements,
    view_statements,
)

DATABASE = "flywheel"
DEDUP_WINDOW = 1000  # inserts remembered per table for insert_deduplication_token

_ENVELOPE = """
    event_id UUID,
    event_type LowCardinality(String),
    schema_version UInt16,
    occurred_at DateTime64(3, 'UTC'),
    producer LowCardinality(String),"""

_SETTINGS = f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"


def _table(name: str, columns: str, order_by: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {DATABASE}.{name} ({_ENVELOPE}{columns},\n"
        "    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)\n"
        ") ENGINE = ReplacingMergeTree\n"
        "PARTITION BY toYYYYMM(occurred_at)\n"
        f"ORDER BY ({order_by}, event_id)\n{_SETTINGS}"
    )


TABLES: dict[str, str] = {
    "chat_requests": _table(
        "chat_requests",
        """
    session_id String, message_id String, user_id String, model_alias LowCardinality(String),
    messages String, max_tokens Nullable(UInt32), temperature Nullable(Float32), stream Bool,
    route LowCardinality(String), prompt_format LowCardinality(String) DEFAULT 'chat'""",
        "toStartOfHour(occurred_at)",
    ),
    "chat_responses": _table(
        "chat_responses",
        """
    session_id String, message_id String, user_id String, model_alias LowCardinality(String),
    model_version LowCardinality(String), worker LowCardinality(String), content String,
    finish_reason Nullable(String), prompt_tokens UInt32, completion_tokens UInt32,
    ttft_ms Nullable(Float64), latency_ms Float64, status LowCardinality(String),
    error Nullable(String), route LowCardinality(String), sources String DEFAULT '[]'""",
        "model_version, toStartOfHour(occurred_at)",
    ),
    "feedback": _table(
        "feedback",
        """
    session_id String, message_id String, user_id String, feedback LowCardinality(String),
    comment Nullable(String), correction Nullable(String), kind LowCardinality(String) DEFAULT 'rating',
    passage_ids Array(String)""",
        "toStartOfHour(occurred_at)",
    ),
    "inference_latency": _table(
        "inference_latency",
        """
    model_version LowCardinality(String), worker LowCardinality(String), session_id String,
    message_id String, route LowCardinality(String), prompt_tokens UInt32, completion_tokens UInt32,
    ttft_ms Nullable(Float64), latency_ms Float64, tokens_per_s Float64, status LowCardinality(String)""",
        "model_version, toStartOfHour(occurred_at)",
    ),
    "metrics_windows": _table(
        "metrics_windows",
        """
    model_version LowCardinality(String), route LowCardinality(String),
    window_start DateTime64(3, 'UTC'), window_seconds UInt32, requests UInt64, errors UInt64,
    timeouts UInt64, latency_p50_ms Nullable(Float64), latency_p90_ms Nullable(Float64),
    latency_p99_ms Nullable(Float64), ttft_p50_ms Nullable(Float64), ttft_p99_ms Nullable(Float64),
    tokens_per_s Float64, thumbs_up UInt64, thumbs_down UInt64""",
        "model_version, route, window_seconds, window_start",
    ),
    "dpo_pairs": _table(
        "dpo_pairs",
        """
    pair_id String, base_model LowCardinality(String), model_version LowCardinality(String),
    prompt String, chosen Nullable(String), rejected String, source LowCardinality(String),
    session_id String, message_id String, feedback_event_id UUID, chosen_message_id Nullable(String),
    user_id Nullable(String), review LowCardinality(String) DEFAULT 'none',
    prompt_format LowCardinality(String) DEFAULT 'chat'""",
        "base_model, toStartOfHour(occurred_at)",
    ),
    "retrain_jobs": _table(
        "retrain_jobs",
        """
    job_id String, base_model LowCardinality(String), status LowCardinality(String),
    pair_ids Array(String), parent_version Nullable(String), adapter_version Nullable(String),
    verdict Nullable(String), error Nullable(String), metrics Map(String, Float64)""",
        "base_model, job_id",
    ),
    "training_metrics": _table(
        "training_metrics",
        """
    job_id String, base_model LowCardinality(String), adapter_version Nullable(String),
    split LowCardinality(String), step UInt32, epoch Float64, loss Nullable(Float64),
    reward_margin Nullable(Float64), reward_accuracy Nullable(Float64), learning_rate Nullable(Float64)""",
        "job_id, split, step",
    ),
    "model_deployments": _table(
        "model_deployments",
        """
    alias LowCardinality(String), action LowCardinality(String), version String,
    previous_version Nullable(String), weight Nullable(UInt8), reason String,
    adapter_path Nullable(String), job_id Nullable(String)""",
        "alias, toStartOfHour(occurred_at)",
    ),
    "human_reviews": _table(
        "human_reviews",
        """
    message_id String, model_version LowCardinality(String), reviewer LowCardinality(String),
    accuracy UInt8, friendliness Nullable(UInt8), completeness Nullable(UInt8), notes String""",
        "model_version, message_id",
    ),
    "retrievals": _table(
        "retrievals",
        """
    session_id String, message_id String, user_id String, model_alias LowCardinality(String),
    model_version LowCardinality(String), query String, retriever LowCardinality(String), k UInt16,
    sources String, latency_ms Float64, status LowCardinality(String), error Nullable(String)""",
        "model_version, toStartOfHour(occurred_at)",
    ),
    "dead_letters": _table(
        "dead_letters",
        """
    source_topic LowCardinality(String), partition Int32, offset Int64, key Nullable(String),
    payload String, error_type LowCardinality(String), error String""",
        "source_topic, toStartOfHour(occurred_at)",
    ),
}


# The sink's batch ledger (consumers/writer.py): each batch's offset range, recorded before its rows are written,
# so a re-read after a crash cuts the same batches and their insert tokens deduplicate.
SINK_LEDGER = "sink_batches"
SINK_LEDGER_DDL = f"""CREATE TABLE IF NOT EXISTS {DATABASE}.{SINK_LEDGER} (
    group_id LowCardinality(String), topic LowCardinality(String), partition Int32,
    first_offset Int64, last_offset Int64, batch_id String,
    recorded_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
ORDER BY (group_id, topic, partition, first_offset)
TTL toDateTime(recorded_at) + INTERVAL 7 DAY"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tables per topic", (f"CREATE DATABASE IF NOT EXISTS {DATABASE}", *TABLES.values())),
    Migration(2, "analyst views", view_statements()),  # schemas/views.py
    Migration(3, "training metrics", (TABLES["training_metrics"],)),
    Migration(4, "loop stage times", loop_stages_statements()),  # schemas/views.py: v_loop_stages
    Migration(5, "sink batch ledger", (SINK_LEDGER_DDL,)),  # created by the sink itself before this migration
    Migration(
        6,
        "pair users and reviews",
        (
            f"ALTER TABLE {DATABASE}.dpo_pairs ADD COLUMN IF NOT EXISTS user_id Nullable(String)",
            f"ALTER TABLE {DATABASE}.dpo_pairs ADD COLUMN IF NOT EXISTS review LowCardinality(String) DEFAULT 'none'",
            *loop_stages_statements(),  # a reviewed pair counts from its approval
        ),
    ),
    # the table (a store made before this migration lacks it) and schemas/views.py: v_reviewed_accuracy
    Migration(7, "human reviews", (TABLES["human_reviews"], *reviewed_accuracy_statements())),
    # retrieval-augmented answers (their sources, the lookups, the passages feedback names) and code completions
    # (the prompt's format, accept/reject feedback); schemas/views.py: v_retrieval, v_code_acceptance
    Migration(
        8,
        "retrieval and code completions",
        (
            TABLES["retrievals"],
            f"ALTER TABLE {DATABASE}.chat_requests ADD COLUMN IF NOT EXISTS prompt_format LowCardinality(String) "
            "DEFAULT 'chat'",
            f"ALTER TABLE {DATABASE}.chat_responses ADD COLUMN IF NOT EXISTS sources String DEFAULT '[]'",
            f"ALTER TABLE {DATABASE}.feedback ADD COLUMN IF NOT EXISTS kind LowCardinality(String) DEFAULT 'rating'",
            f"ALTER TABLE {DATABASE}.feedback ADD COLUMN IF NOT EXISTS passage_ids Array(String)",
            f"ALTER TABLE {DATABASE}.dpo_pairs ADD COLUMN IF NOT EXISTS prompt_format LowCardinality(String) "
            "DEFAULT 'chat'",
            *retrieval_and_code_statements(),
        ),
    ),
)

_LEDGER = f"""CREATE TABLE IF NOT EXISTS {DATABASE}.schema_migrations (
    version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = MergeTree ORDER BY version"""


_CREATE_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)\.(\w+) \(", re.S)
_ALTER_TABLE = re.compile(r"^ALTER TABLE (\w+)\.(\w+) ")
_ENGINE = re.compile(r"ENGINE = (ReplacingMergeTree|MergeTree)\b")
# How each table's rows spread over the shards: by event, so that an event's copies meet on one shard.
_SHARD_KEYS = {SINK_LEDGER: "cityHash64(group_id, topic, partition)", "schema_migrations": "version"}


def on_cluster(statement: str, cluster: str) -> list[str]:
    """The statement(s) that do on `cluster` what `statement` does on one server."""
    on = f"ON CLUSTER '{cluster}'"
    table = _CREATE_TABLE.match(statement)
    if table:
        database, name = table.groups()
        local = f"{name}_local"
        path = f"'/clickhouse/tables/{{shard}}/{database}/{local}', '{{replica}}'"
        body = statement[table.end() :]
        body = _ENGINE.sub(lambda m: f"ENGINE = Replicated{m.group(1)}({path})", body)
        body = body.replace("non_replicated_deduplication_window", "replicated_deduplication_window")
        shard_key = _SHARD_KEYS.get(name, "cityHash64(event_id)")
        return [
            f"CREATE TABLE IF NOT EXISTS {database}.{local} {on} ({body}",
            f"CREATE TABLE IF NOT EXISTS {database}.{name} {on} AS {database}.{local}\n"
            f"ENGINE = Distributed('{cluster}', '{database}', '{local}', {shard_key})",
        ]
    altered = _ALTER_TABLE.match(statement)
    if altered:  # the shards' tables, then the Distributed table over them
        database, name = altered.groups()
        rest = statement[altered.end() :]
        return [f"ALTER TABLE {database}.{table} {on} {rest}" for table in (f"{name}_local", name)]
    for prefix in ("CREATE DATABASE IF NOT EXISTS ", "CREATE OR REPLACE VIEW "):
        if statement.startswith(prefix):
            name, _, rest = statement[len(prefix) :].partition(" ")
            return [f"{prefix}{name} {on} {rest}".rstrip()]
    raise ValueError(f"no cluster form for: {statement[:60]}")


def applied_versions(client) -> set[int]:
    """Versions recorded in the ledger; empty when the database does not exist yet."""
    exists = client.command(f"EXISTS TABLE {DATABASE}.schema_migrations")
    if not int(exists):
        return set()
    return {row[0] for row in client.query(f"SELECT version FROM {DATABASE}.schema_migrations").result_rows}


def migrate(client, cluster: str = "") -> list[int]:
    """Apply every migration not yet recorded; return the versions applied now. Idempotent.

    `client` is a clickhouse-connect client (chdb:// or http://); `cluster`: a ClickHouse cluster's name, whose
    nodes all get the tables (`on_cluster`). Statements are idempotent themselves (IF NOT EXISTS), so a crash
    between a statement and the ledger row is safe to rerun.
    """

    def run(statement: str) -> None:
        for each in on_cluster(statement, cluster) if cluster else [statement]:
            client.command(each)

    run(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    run(_LEDGER)
    done = applied_versions(client)
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            run(statement)
        client.insert(
            f"{DATABASE}.schema_migrations", [[migration.version, migration.name]], column_names=["version", "name"]
        )
        applied.append(migration.version)
    return applied
