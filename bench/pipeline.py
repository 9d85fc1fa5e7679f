"""Pipeline throughput, measured in one run against baselines of the same run.

Reads nothing outside what it starts: a Tansu broker on a free port (or --bootstrap), and an
in-process chDB store in a temporary directory (the bench process owns it). Writes the topics
of the registry on that broker and the tables of that chDB; removes the directory at the end.

    python -m bench.pipeline                       # every section
    python -m bench.pipeline --sections sink --events 200000 --repeats 3
    python -m bench.pipeline --sections metrics feedback --stream-events 100000 --feedbacks 200

Sections (each a function returning table rows; add one to SECTIONS):
  sink   the ClickHouse sink's code path (consumers.sink.Sink: consume -> codec.decode -> ledger +
         insert with dedup token -> DLQ -> commit) beside a raw pipeline (plain consumer, json.loads,
         hand conversion, one batch insert per FLYWHEEL_SINK_BATCH_ROWS rows, the sink's batch size, into
         a copy table, commit), both reading the same preloaded ChatResponse events; repeats
         interleaved (raw, sink, raw, ...), medians.
         The clock starts at the first message (group join excluded) and stops at the last commit.
  metrics  the faust metric agent (python -m streams.app): N ChatResponse events (--stream-events, 1 ms of
         event time apart, 1 s windows) preloaded on a fresh broker; per repeat, interleaved: a decode
         baseline (plain consumer + pydantic), a worker running only the metric agent
         (FLYWHEEL_STREAMS_AGENTS=metrics), two such workers in one consumer group (scale-out: they share
         the partitions) and one worker running every agent. events/s = events accounted in
         emitted windows at 95% / time since the worker logged "Worker ready". Goal >= 10,000/s.
  feedback feedback -> DPO pair latency: F conversations (--feedbacks) produced up front, then one
         thumbs-down with a correction each at --feedback-rate per second, after a warm-up pair came out;
         latency = pair read off dpo.pairs - feedback delivered. Workers: pairs,trigger and all agents,
         each on a fresh broker. Goal p99 < 1 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from confluent_kafka import Consumer
from rich.console import Console
from rich.table import Table

from bench.pipeline_setup import BATCH, CONSUME, Env, Row, chat_response_dicts, consumer_config, preload
from bench.pipeline_streams import feedback_section, metric_section
from consumers.settings import SinkSettings
from consumers.sink import Sink
from deploy.sandbox import start_tansu
from schemas import ddl, store
from schemas.events import ChatResponse
from schemas.rows import columns
from schemas.topics import CHAT_RESPONSES, create_topics

# -- section: sink ------------------------------------------------------------------------------
RAW_TABLE = f"{ddl.DATABASE}.chat_responses_raw"


def run_raw(env: Env) -> float:
    """Plain consumer -> json.loads -> hand conversion -> batch insert (no token) -> commit; events/s."""
    client, cols = env.client, columns(ChatResponse)
    consumer = Consumer(consumer_config(env.bootstrap, f"bench-raw-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([CHAT_RESPONSES.name])
    done, rows, started = 0, [], None
    try:
        while done < env.events:
            messages = consumer.consume(num_messages=CONSUME, timeout=0.5)
            if messages and started is None:
                started = time.perf_counter()
            for msg in messages:
                if msg.error():
                    continue
                d = json.loads(msg.value())
                d["event_id"] = uuid.UUID(d["event_id"])
                d["occurred_at"] = datetime.fromisoformat(d["occurred_at"])
                rows.append([d[c] for c in cols])
            if rows and (len(rows) >= BATCH or done + len(rows) >= env.events):
                client.insert(RAW_TABLE, rows, column_names=cols)
                consumer.commit(asynchronous=False)
                done += len(rows)
                rows = []
        return env.events / (time.perf_counter() - started)
    finally:
        consumer.close()


def run_sink(env: Env) -> float:
    """The sink's own loop (Sink.poll_once, flush) with its default batching; events/s."""
    settings = SinkSettings(kafka_bootstrap=env.bootstrap, clickhouse_dsn=f"chdb://{env.data_dir}")
    sink = Sink(settings, env.client, group_id=f"bench-sink-{uuid.uuid4().hex[:8]}", topics=[CHAT_RESPONSES.name])
    sink.subscribe()
    started = None
    try:
        while sink.flushed_events < env.events:
            if sink.poll_once(timeout=0.5) and started is None:
                started = time.perf_counter()
        return env.events / (time.perf_counter() - started)
    finally:
        sink.close()


def sink_section(env: Env) -> list[Row]:
    env.client.command(f"CREATE TABLE IF NOT EXISTS {RAW_TABLE} AS {ddl.DATABASE}.chat_responses")
    preload(env.bootstrap, CHAT_RESPONSES.name, chat_response_dicts(env.events, "bench"), "session_id")
    results: dict[str, list[float]] = {"raw": [], "sink": []}
    runs: dict[str, Callable[[Env], float]] = {"raw": run_raw, "sink": run_sink}
    for _ in range(env.repeats):
        for name, run in runs.items():
            env.client.command(f"TRUNCATE TABLE {RAW_TABLE}")
            env.client.command(f"TRUNCATE TABLE {ddl.DATABASE}.chat_responses")
            results[name].append(run(env))
            Console(stderr=True).print(f"  {name}: {results[name][-1]:,.0f} events/s")
    raw, sink = statistics.median(results["raw"]), statistics.median(results["sink"])
    return [
        Row("raw pipeline (consume, json.loads, insert, commit)", raw, "events/s"),
        Row("sink (consume, validate, ledger, insert+token, commit)", sink, "events/s", ">= 30,000", sink >= 30_000),
        Row("sink / raw", 100 * sink / raw, "%", ">= 60%", sink >= 0.6 * raw),
    ]


SECTIONS: dict[str, Callable[[Env], list[Row]]] = {
    "sink": sink_section,
    "metrics": metric_section,
    "feedback": feedback_section,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting a Tansu broker")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stream-events", type=int, default=100_000, help="events preloaded for the metric agent")
    parser.add_argument("--feedbacks", type=int, default=200, help="feedbacks per feedback -> pair run")
    parser.add_argument("--feedback-rate", type=float, default=20.0, help="feedbacks per second")
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    args = parser.parse_args(argv)

    broker = None
    bootstrap = args.bootstrap
    if not bootstrap:
        broker, bootstrap = start_tansu()
    data_dir = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    try:
        create_topics(bootstrap)
        client = store.connect(f"chdb://{data_dir}")
        ddl.migrate(client)
        env = Env(
            bootstrap,
            data_dir,
            client,
            args.events,
            args.repeats,
            args.stream_events,
            args.feedbacks,
            args.feedback_rate,
            external_broker=bool(args.bootstrap),
        )
        table = Table(title=f"pipeline bench: {args.events:,} events, median of {args.repeats} interleaved repeats")
        for column in ("section", "metric", "value", "unit", "goal", "ok"):
            table.add_column(column, justify="right" if column == "value" else "left")
        for name in args.sections:
            for row in SECTIONS[name](env):
                ok = "" if row.ok is None else ("yes" if row.ok else "NO")
                table.add_row(name, row.metric, f"{row.value:,.1f}", row.unit, row.goal, ok)
        Console().print(table)
        return 0
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
