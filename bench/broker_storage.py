"""The embedded broker's storage engines side by side in one run: memory (the default) against S3 storage on a
local S3-compatible server (moto's, from the `moto[server]` package), which keeps the log when the broker stops.

    pip install 'moto[server]'   # not a Flywheel dependency
    python -m bench.broker_storage [--events 20000] [--repeats 3] [--moto /path/to/moto_server]

Per repeat and engine, on a fresh broker (and a fresh bucket): produce N ChatResponse-sized events (about 600
bytes, the gateway's producer settings: idempotent, linger 100 ms) and time until every one is acknowledged;
N/10 more one record per request (as the stream processors produce to Tansu); consume all from offset 0 with a
plain consumer (no group join) and time that; then stop the broker, start a
new one on the same storage and count what it still has. Medians; the local stack's load for scale: the e2e
traffic (22 requests/s) publishes about 100 events/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from rich.console import Console
from rich.table import Table

from deploy.ports import free_ports
from deploy.sandbox import start_listening, start_tansu
from schemas.topics import ensure_topics

TOPIC = "bench.storage"
PARTITIONS = 3
PAYLOAD = b"x" * 600
LOCAL_LOAD = 100.0  # events/s of the e2e traffic (22 requests/s: request, response, latency, some feedback)


def start_moto(executable: str) -> tuple[subprocess.Popen, str]:
    (port,) = free_ports(1)
    return start_listening([executable, "-p", str(port)], port), f"http://127.0.0.1:{port}"


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }


def make_bucket(endpoint: str) -> str:
    """A fresh bucket (moto answers S3's CreateBucket as a plain PUT)."""
    import httpx

    bucket = f"tansu-{uuid.uuid4().hex[:8]}"
    httpx.put(f"{endpoint}/{bucket}", timeout=10).raise_for_status()
    return bucket


def produce(bootstrap: str, n: int, one_per_request: bool = False) -> float:
    """Acknowledged events/s: batched as the gateway sends them, or one record per request as the stream
    processors send them to Tansu (`producer_max_batch_size=1`)."""
    batching = {"linger.ms": 0, "batch.num.messages": 1} if one_per_request else {"linger.ms": 100}
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, **batching})
    started = time.perf_counter()
    for i in range(n):
        while True:
            try:
                producer.produce(TOPIC, PAYLOAD, str(i % 64).encode())
                break
            except BufferError:
                producer.poll(0.05)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} events not acknowledged")
    return n / (time.perf_counter() - started)


def consume(bootstrap: str, n: int, timeout: float = 120.0) -> tuple[float, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"b-{uuid.uuid4().hex[:6]}", "log_level": 0})
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
    seen, started, deadline = 0, time.perf_counter(), time.monotonic() + timeout
    try:
        while seen < n and time.monotonic() < deadline:
            seen += sum(1 for m in consumer.consume(1000, timeout=0.5) if m.error() is None)
    finally:
        consumer.close()
    return seen / (time.perf_counter() - started), seen


def one_run(engine: str, n: int, endpoint: str | None) -> dict[str, float]:
    env = s3_env(endpoint) if engine == "s3" else {}
    storage = f"s3://{make_bucket(endpoint)}/" if engine == "s3" else "memory://tansu/"
    (port,) = free_ports(1)
    proc, bootstrap = start_tansu(port, storage=storage, env=env)
    try:
        from confluent_kafka.admin import NewTopic

        ensure_topics(bootstrap, [NewTopic(TOPIC, num_partitions=PARTITIONS)], 30)
        produced = produce(bootstrap, n)
        singles = produce(bootstrap, max(1, n // 10), one_per_request=True)
        consumed, seen = consume(bootstrap, n + max(1, n // 10))
    finally:
        proc.terminate()
        proc.wait(10)
    proc, bootstrap = start_tansu(port, storage=storage, env=env)  # the same storage, a new broker
    try:
        _, kept = consume(bootstrap, n + max(1, n // 10), timeout=15.0)
    finally:
        proc.terminate()
        proc.wait(10)
    return {"produce": produced, "singles": singles, "consume": consumed, "seen": seen, "kept": kept}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--moto", default=shutil.which("moto_server"), help="moto_server executable")
    args = parser.parse_args(argv)
    if not args.moto or not os.path.exists(args.moto):
        raise SystemExit("moto_server not found: pip install 'moto[server]' or pass --moto PATH")
    moto, endpoint = start_moto(args.moto)
    runs: dict[str, list[dict[str, float]]] = {"memory": [], "s3": []}
    console = Console(stderr=True)
    try:
        for r in range(args.repeats):
            for engine in runs:
                runs[engine].append(one_run(engine, args.events, endpoint))
                console.print(f"  repeat {r + 1} {engine}: {runs[engine][-1]}")
    finally:
        moto.terminate()
        moto.wait(10)
    table = Table(title=f"Tansu storage engines, {args.events:,} events of 600 B, median of {args.repeats}")
    columns = ("engine", "produce events/s", "one per request", "consume events/s", "read back", "after restart")
    for column in columns:
        table.add_column(column, justify="right")
    for engine, results in runs.items():
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        name = engine if engine == "memory" else "s3 (moto server)"
        figures = (med[k] for k in ("produce", "singles", "consume", "seen", "kept"))
        table.add_row(name, *(f"{v:,.0f}" for v in figures))
    Console().print(table)
    Console().print(f"local load for scale: about {LOCAL_LOAD:,.0f} events/s (the e2e traffic, 22 requests/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
