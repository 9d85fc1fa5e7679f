"""The ClickHouse sink against the real broker and chDB.

Through the session `stack`: its store process runs the sink, so events produced to the broker
must appear in the tables (read over the store's read-only HTTP endpoint). Other tests share the
stack, so every check selects this test's own events (a unique `producer` tag or key).
The retry test runs a Sink in this process on its own chDB path and consumer group.
"""

from __future__ import annotations

import json
import time
import uuid

import clickhouse_connect
import pytest
from confluent_kafka import Consumer, Producer

from consumers.settings import SinkSettings
from consumers.sink import Sink
from schemas.codec import decode, encode
from schemas.events import DeadLetter, Feedback
from schemas.topics import BY_EVENT, CHAT_RESPONSES, DLQ_TABLE
from tests.examples import examples
from tests.reading import assign_all

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return value


@pytest.fixture(scope="module")
def store(store_url):
    client = clickhouse_connect.get_client(dsn=store_url, compress=False)
    yield client
    client.close()


@pytest.fixture(scope="module")
def producer(kafka_bootstrap):
    p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    yield p
    p.flush(10)


def test_every_topic_lands_in_its_table(store, producer):
    tag = f"sink-test-{uuid.uuid4().hex[:8]}"
    copies = 7
    expected = {}
    for example in examples():
        if isinstance(example, DeadLetter):
            topic, table = "chat.responses.dlq", DLQ_TABLE
        else:
            topic, table = BY_EVENT[type(example)].name, BY_EVENT[type(example)].table
        for _ in range(copies):
            event = example.model_copy(update={"event_id": uuid.uuid4(), "producer": tag})
            producer.produce(topic, encode(event), b"k")
        expected[table] = copies
    assert producer.flush(10) == 0

    def counts():
        got = {
            table: store.query(
                f"SELECT count() FROM flywheel.{table} WHERE producer = {{t:String}}", {"t": tag}
            ).result_rows[0][0]
            for table in expected
        }
        return got if got == expected else None

    assert wait_for(counts, 30) == expected


BAD_EVENTS = [
    # (case, value, error_type): all sent to chat.responses
    ("not JSON", b"{this is not json", "not_json"),
    ("a JSON array", b"[1, 2]", "not_json"),
    ("unknown event type", "bogus_type", "unknown_event_type"),
    ("wrong type for the topic", "feedback", "unknown_event_type"),
    ("missing field", "missing_latency", "invalid_field"),
    ("wrong field type", "negative_tokens", "invalid_field"),
    ("unknown field", "extra_field", "invalid_field"),
    ("empty value (tombstone)", None, "invalid_event"),
]


def bad_value(kind: bytes | str | None) -> bytes | None:
    if kind is None or isinstance(kind, bytes):
        return kind
    good = json.loads(encode(next(e for e in examples() if e.event_type == "chat_response")))
    if kind == "bogus_type":
        good["event_type"] = "bogus"
    elif kind == "feedback":
        good = json.loads(encode(Feedback(session_id="s", message_id="m", feedback="thumbs_up")))
    elif kind == "missing_latency":
        del good["latency_ms"]
    elif kind == "negative_tokens":
        good["prompt_tokens"] = -3
    elif kind == "extra_field":
        good["surprise"] = 1
    return json.dumps(good).encode()


@pytest.fixture(scope="module")
def dead_letters(producer, kafka_bootstrap) -> dict[str, tuple[str, bytes | None, DeadLetter]]:
    """Every bad event sent at once (one sink batch, one wait): case -> (key, payload, its dead letter)."""
    sent = {case: (f"bad-{uuid.uuid4().hex[:10]}", bad_value(value)) for case, value, _ in BAD_EVENTS}
    dlq = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "unused", "enable.auto.commit": False})
    assign_all(dlq, [CHAT_RESPONSES.dlq])  # read by assignment: the group is never joined
    keys = {key.encode() for key, _ in sent.values()}
    letters: dict[bytes, DeadLetter] = {}
    try:
        for key, payload in sent.values():
            producer.produce(CHAT_RESPONSES.name, payload, key.encode())
        assert producer.flush(10) == 0
        deadline = time.monotonic() + 40
        while len(letters) < len(keys) and time.monotonic() < deadline:
            msg = dlq.poll(0.5)
            if msg is not None and not msg.error() and msg.key() in keys:
                letters[msg.key()] = decode(msg.value(), DeadLetter)
    finally:
        dlq.close()
    return {case: (key, payload, letters.get(key.encode())) for case, (key, payload) in sent.items()}


@pytest.mark.parametrize(("case", "error_type"), [(c, e) for c, _, e in BAD_EVENTS], ids=[c[0] for c in BAD_EVENTS])
def test_bad_event_goes_to_the_dlq_with_the_reason(store, dead_letters, case, error_type):
    key, payload, letter = dead_letters[case]
    assert letter is not None, f"{case}: no dead letter on {CHAT_RESPONSES.dlq}"
    assert (letter.source_topic, letter.error_type, letter.key) == (CHAT_RESPONSES.name, error_type, key)
    assert letter.payload == (payload or b"").decode()
    assert letter.error

    def row():
        rows = store.query(
            f"SELECT source_topic, error_type, error, offset FROM flywheel.{DLQ_TABLE} WHERE key = {{k:String}}",
            {"k": key},
        ).result_rows
        return rows or None

    rows = wait_for(row, 30)
    assert rows, f"{case}: no row in {DLQ_TABLE}"
    assert rows[0][:3] == (CHAT_RESPONSES.name, error_type, letter.error)
    assert rows[0][3] == letter.offset


def test_retried_batches_do_not_duplicate(tmp_path_factory, kafka_bootstrap, producer):
    """Insert, 'crash' before committing, re-read with different batch settings: the rows land once."""
    tag = f"retry-{uuid.uuid4().hex[:8]}"
    events = [
        next(e for e in examples() if e.event_type == "chat_response").model_copy(
            update={"event_id": uuid.uuid4(), "producer": tag, "session_id": f"s{i}"}
        )
        for i in range(3000)
    ]
    for event in events:
        producer.produce(CHAT_RESPONSES.name, encode(event), event.session_id.encode())
    assert producer.flush(20) == 0

    path = tmp_path_factory.mktemp("sink-retry") / "chdb"
    client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    from schemas.ddl import migrate

    migrate(client)
    group = f"sink-retry-{uuid.uuid4().hex[:8]}"

    def run(batch_rows: int, commit: bool, until) -> Sink:
        settings = SinkSettings(
            kafka_bootstrap=kafka_bootstrap, clickhouse_dsn=f"chdb://{path}", sink_batch_rows=batch_rows
        )
        sink = Sink(settings, client, group_id=group, topics=[CHAT_RESPONSES.name])
        if not commit:
            sink.assigned = _NeverAssigned()  # commits are filtered to assigned partitions: none happen
        sink.subscribe()
        try:
            assert wait_for(lambda: sink.poll_once(0.5) >= 0 and until(sink), 90, 0)
            sink.flush()
            return sink
        finally:
            sink.consumer.close()

    # Rows inserted (ledger recorded, tokens sent), offsets never committed: as if killed before the commit.
    first = run(batch_rows=500, commit=False, until=lambda s: _mine(client, tag) >= len(events))
    assert _mine(client, tag) == len(events)
    # Re-read from the start with another batch size: cut at the recorded ranges, dropped by token.
    run(batch_rows=7000, commit=True, until=lambda s: s.flushed_events >= first.flushed_events)
    time.sleep(1.5)
    assert _mine(client, tag) == len(events)
    assert _mine(client, tag, distinct=True) == len(events)
    client.close()


def _mine(client, tag: str, distinct: bool = False) -> int:
    what = "uniqExact(event_id)" if distinct else "count()"
    sql = f"SELECT {what} FROM flywheel.chat_responses WHERE producer = {{t:String}}"
    return client.query(sql, {"t": tag}).result_rows[0][0]


class _NeverAssigned(set):
    """An `assigned` set that forgets every partition added: the sink then commits nothing."""

    def add(self, item) -> None:
        pass


def test_a_new_broker_log_is_not_taken_for_the_old_one(tmp_path_factory):
    """`flywheel down` + `up`: the embedded broker starts empty and offsets start again at 0, while the store
    keeps the ledger and the tokens of the old log's ranges. The new log's events must all land."""
    from schemas.ddl import migrate

    path = tmp_path_factory.mktemp("sink-epoch") / "chdb"
    client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    migrate(client)
    group = f"sink-epoch-{uuid.uuid4().hex[:8]}"
    try:
        epochs = [_sink_through_a_fresh_broker(client, path, group, run) for run in ("before", "after")]
    finally:
        client.close()
    assert epochs[0] != epochs[1]


def _sink_through_a_fresh_broker(client, path, group: str, run: str, n: int = 1000) -> str:
    from deploy.sandbox import start_tansu
    from schemas.epoch import broker_epoch

    broker, bootstrap = start_tansu()
    try:
        epoch = broker_epoch(bootstrap)
        assert broker_epoch(bootstrap) == epoch  # stable within one log
        tag = f"epoch-{run}-{uuid.uuid4().hex[:6]}"
        template = next(e for e in examples() if e.event_type == "chat_response")
        producer = Producer({"bootstrap.servers": bootstrap})
        for i in range(n):
            event = template.model_copy(update={"event_id": uuid.uuid4(), "producer": tag, "session_id": f"s{i}"})
            producer.produce(CHAT_RESPONSES.name, encode(event), event.session_id.encode())
        assert producer.flush(20) == 0
        settings = SinkSettings(kafka_bootstrap=bootstrap, clickhouse_dsn=f"chdb://{path}", sink_batch_rows=200)
        sink = Sink(settings, client, group_id=group, topics=[CHAT_RESPONSES.name])
        sink.subscribe()
        try:
            wait_for(lambda: sink.poll_once(0.5) >= 0 and _mine(client, tag) >= n, 90, 0)
            sink.flush()
        finally:
            sink.close()
        assert _mine(client, tag) == n, f"{run}: {_mine(client, tag)} of {n} rows"
        return epoch
    finally:
        broker.terminate()
        broker.wait(10)
