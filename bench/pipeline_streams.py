"""The faust stream worker (`python -m streams.app`) sections of the pipeline benchmark: the metric agent's
events/s beside a decode baseline, with one and two workers in a group, and the feedback -> DPO pair latency;
each run on a fresh broker with a worker of its own.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from confluent_kafka import Consumer, Producer
from rich.console import Console

from bench.pipeline_setup import CONSUME, Env, Row, chat_response_dicts, consumer_config, preload
from deploy.sandbox import start_tansu
from schemas.codec import decode, encode
from schemas.events import ChatMessage, ChatRequest, ChatResponse, DPOPair, Feedback, MetricsWindow
from schemas.topics import (
    CHAT_FEEDBACK,
    CHAT_REQUESTS,
    CHAT_RESPONSES,
    DPO_PAIRS,
    METRICS_WINDOWS,
    create_topics,
)

ROOT = Path(__file__).resolve().parents[1]


# -- sections: the faust stream worker (streams.app) ------------------------------------------------
STREAM_WINDOW_ENV = {  # 1 s windows closing fast: output flows while the preloaded backlog is read
    "FLYWHEEL_STREAMS_WINDOW_SECONDS": "[1]",
    "FLYWHEEL_STREAMS_WINDOW_GRACE_S": "1",
    "FLYWHEEL_STREAMS_WINDOW_IDLE_S": "30",
    "FLYWHEEL_STREAMS_TICK_INTERVAL_S": "0.2",
}


@contextmanager
def stream_worker(
    bootstrap: str, data_dir: Path, agents: str, app_id: str | None = None, **env: str
) -> Iterator[subprocess.Popen]:
    """`python -m streams.app` with FLYWHEEL_STREAMS_AGENTS=agents and a fresh app id (group), or the given one
    (another worker of the same group); its own state directory either way."""
    app_id = app_id or f"bench-{uuid.uuid4().hex[:6]}"
    worker_id = f"{app_id}-{uuid.uuid4().hex[:4]}"
    log_path = data_dir / f"{worker_id}.log"
    environ = {
        **os.environ,
        "FLYWHEEL_KAFKA_BOOTSTRAP": bootstrap,
        "FLYWHEEL_DATA_DIR": str(data_dir),
        "FLYWHEEL_STREAMS_APP_ID": app_id,
        "FLYWHEEL_STREAMS_STATE_DIR": str(data_dir / worker_id),
        "FLYWHEEL_STREAMS_AGENTS": agents,
        **env,
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.app", "worker", "--without-web", "-l", "info"],
            cwd=ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proc.log_path = log_path  # type: ignore[attr-defined]  # "Worker ready" marks the end of start-up
    try:
        yield proc
    finally:  # the bench keeps no state: no graceful shutdown to wait for
        proc.kill()
        proc.wait(10)
        if proc.returncode not in (0, -signal.SIGKILL):
            tail = log_path.read_text(errors="replace")[-3000:]
            Console(stderr=True).print(f"  worker exited {proc.returncode}; log {log_path}:\n{tail}")


def _alive(proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"stream worker exited with {proc.returncode}")
    return True


@contextmanager
def own_broker(env: Env) -> Iterator[str]:
    """A fresh Tansu per streams run, so that one section's topics (and a worker's replay) do not weigh on
    the next; with --bootstrap the given broker (its topics may hold other sections' events)."""
    if env.external_broker:
        yield env.bootstrap
        return
    proc, bootstrap = start_tansu()
    try:
        create_topics(bootstrap)
        yield bootstrap
    finally:
        proc.terminate()
        proc.wait(10)


def _consumer(bootstrap: str, topic: str) -> Consumer:
    consumer = Consumer(consumer_config(bootstrap, f"bench-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([topic])
    return consumer


def run_decode_baseline(bootstrap: str, n: int) -> float:
    """Plain consumer + pydantic decode of the same ChatResponse events: one Python process's reading pace."""
    consumer = _consumer(bootstrap, CHAT_RESPONSES.name)
    seen, started = 0, None
    try:
        while seen < n:
            messages = consumer.consume(CONSUME, timeout=0.5)
            if messages and started is None:
                started = time.perf_counter()
            for msg in messages:
                if msg.error() is None:
                    decode(msg.value(), ChatResponse)
                    seen += 1
        return n / (time.perf_counter() - started)
    finally:
        consumer.close()


def run_metric_agent(
    bootstrap: str, data_dir: Path, n: int, model_version: str, agents: str, workers: int = 1
) -> tuple[float, int]:
    """Fresh workers of one group work through the backlog; events/s = events accounted in closed windows of
    `model_version` when 95% are / time since the last worker logged "Worker ready" (group joined, tables
    recovered). 95%: the last windows close only after the idle wait, which is not processing time."""
    consumer = _consumer(bootstrap, METRICS_WINDOWS.name)
    total, ready_at, done_at, deadline = 0, None, None, time.monotonic() + max(120.0, n / 500)
    app_id = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        with ExitStack() as stack:
            procs = [
                stack.enter_context(stream_worker(bootstrap, data_dir, agents, app_id, **STREAM_WINDOW_ENV))
                for _ in range(workers)
            ]
            while total < n and time.monotonic() < deadline and all(_alive(p) for p in procs):
                if ready_at is None and all(b"Worker ready" in p.log_path.read_bytes() for p in procs):
                    ready_at = time.perf_counter()
                for msg in consumer.consume(1000, timeout=0.1):
                    if msg.error() is None:
                        window = decode(msg.value(), MetricsWindow)
                        if window.model_version == model_version:
                            total += window.requests
                            if done_at is None and total >= 0.95 * n:
                                done_at = time.perf_counter(), total
    finally:
        consumer.close()
    if ready_at is None or done_at is None:
        return 0.0, total
    return done_at[1] / (done_at[0] - ready_at), total


def metric_section(env: Env) -> list[Row]:
    """Per repeat, interleaved, each on a fresh broker with the same N ChatResponse events preloaded (1 ms
    of event time apart): the decode baseline, the metric agent alone (FLYWHEEL_STREAMS_AGENTS=metrics), all
    agents in one worker. A fresh broker per run: metrics.windows then holds only this run's windows."""
    n = env.stream_events
    runs: dict[str, list[float]] = {"baseline": [], "metrics": [], "metrics x2": [], "metrics,pairs,trigger": []}
    accounted: dict[str, list[int]] = {"metrics": [], "metrics x2": [], "metrics,pairs,trigger": []}
    model_version = f"bench-{uuid.uuid4().hex[:6]}"
    events = chat_response_dicts(n, "bench", model_version, start=time.time() - n / 1000 - 120, step_s=0.001)
    for _ in range(env.repeats):
        for kind in runs:
            with own_broker(env) as bootstrap:
                preload(bootstrap, CHAT_RESPONSES.name, events, "session_id")
                if kind == "baseline":
                    runs[kind].append(run_decode_baseline(bootstrap, n))
                    continue
                agents, _, workers = kind.partition(" x")
                rate, total = run_metric_agent(bootstrap, env.data_dir, n, model_version, agents, int(workers or 1))
                runs[kind].append(rate)
                accounted[kind].append(total)
        Console(stderr=True).print("  " + ", ".join(f"{k}: {v[-1]:,.0f}/s" for k, v in runs.items()))
    base, alone, two, shared = (statistics.median(runs[k]) for k in runs)
    complete = all(t == n for totals in accounted.values() for t in totals)
    return [
        Row("decode baseline (consume + pydantic, one process)", base, "events/s"),
        Row("metric agent alone (AGENTS=metrics)", alone, "events/s", ">= 10,000", alone >= 10_000),
        Row("metric agent, 2 workers in one group (scale-out)", two, "events/s"),
        Row("2 workers / 1 worker", two / alone, "x"),
        Row("metric agent, all agents in one worker", shared, "events/s"),
        Row("metric agent alone / decode baseline", 100 * alone / base, "%"),
        Row(
            "events accounted in windows (every run)",
            min(t for v in accounted.values() for t in v),
            "events",
            f"= {n:,}",
            complete,
        ),
    ]


def _conversation(i: int) -> tuple[ChatRequest, ChatResponse, Feedback]:
    sid, mid = f"fs{i}", f"f{i}-{uuid.uuid4().hex[:6]}"
    question = f"Question number {i} about order {uuid.uuid4().hex[:8]}?"
    return (
        ChatRequest(
            session_id=sid, message_id=mid, model_alias="support", messages=[ChatMessage(role="user", content=question)]
        ),
        ChatResponse(
            session_id=sid,
            message_id=mid,
            model_alias="support",
            model_version="tiny",
            content=f"Wrong answer {i}.",
            latency_ms=5,
        ),
        Feedback(
            session_id=sid,
            message_id=mid,
            feedback="thumbs_down",
            correction=f"Right answer {i} {uuid.uuid4().hex[:8]}.",
        ),
    )


def run_feedback_latency(bootstrap: str, data_dir: Path, count: int, rate: float, agents: str) -> list[float]:
    """Conversations produced up front; thumbs-downs with a correction at a steady rate after a warm-up pair
    came out; latency = pair read off dpo.pairs - feedback delivered to the broker (seconds, sorted)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    conversations = [_conversation(i) for i in range(count + 1)]
    for request, response, _ in conversations:
        producer.produce(CHAT_REQUESTS.name, key=request.session_id.encode(), value=encode(request))
        producer.produce(CHAT_RESPONSES.name, key=response.session_id.encode(), value=encode(response))
    producer.flush(30)
    consumer = _consumer(bootstrap, DPO_PAIRS.name)
    sent: dict[uuid.UUID, float] = {}
    received: dict[uuid.UUID, float] = {}

    def drain(timeout: float) -> None:
        for msg in consumer.consume(100, timeout=timeout):
            if msg.error() is None:
                received.setdefault(decode(msg.value(), DPOPair).feedback_event_id, time.perf_counter())

    def send(feedback: Feedback) -> None:
        producer.produce(CHAT_FEEDBACK.name, key=feedback.session_id.encode(), value=encode(feedback))
        producer.flush(5)
        sent[feedback.event_id] = time.perf_counter()

    try:
        with stream_worker(bootstrap, data_dir, agents) as proc:
            warm_up = conversations[0][2]  # the clock starts once the worker is in the group and recovered
            send(warm_up)
            deadline = time.monotonic() + 120
            while warm_up.event_id not in received and time.monotonic() < deadline and _alive(proc):
                drain(0.1)
            next_at = time.perf_counter()
            for _, _, feedback in conversations[1:]:
                while (wait := next_at - time.perf_counter()) > 0:
                    drain(min(wait, 0.01))
                send(feedback)
                next_at += 1 / rate
            deadline = time.monotonic() + 30
            while not set(sent) <= set(received) and time.monotonic() < deadline:
                drain(0.1)
    finally:
        consumer.close()
    del sent[conversations[0][2].event_id]
    return sorted(received[k] - sent[k] for k in sent if k in received)


def feedback_section(env: Env) -> list[Row]:
    """Feedback -> DPO pair latency at a steady rate, worker running pairs+trigger agents (the split
    deployment) and all agents; repeats interleaved, percentiles over all runs of a kind."""
    kinds = {"pairs,trigger": [], "metrics,pairs,trigger": []}
    got = {k: 0 for k in kinds}
    for _ in range(env.repeats):
        for agents, latencies in kinds.items():
            with own_broker(env) as bootstrap:
                lat = run_feedback_latency(bootstrap, env.data_dir, env.feedbacks, env.feedback_rate, agents)
            latencies.extend(lat)
            got[agents] += len(lat)
            Console(stderr=True).print(f"  {agents}: {len(lat)} pairs, p99 {1000 * _pct(lat, 0.99):,.0f} ms")
    rows = []
    for agents, lat in kinds.items():
        lat.sort()
        label = f"AGENTS={agents}"
        p99 = _pct(lat, 0.99)
        rows += [
            Row(f"feedback -> pair p50 ({label})", 1000 * _pct(lat, 0.5), "ms"),
            Row(f"feedback -> pair p99 ({label})", 1000 * p99, "ms", "< 1,000", p99 < 1.0),
            Row(
                f"pairs received ({label}, {env.feedback_rate:g}/s)",
                got[agents],
                "pairs",
                f"= {env.repeats * env.feedbacks}",
                got[agents] == env.repeats * env.feedbacks,
            ),
        ]
    return rows


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
