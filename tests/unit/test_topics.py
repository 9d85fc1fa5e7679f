from schemas.ddl import TABLES
from schemas.events import EVENT_TYPES, DeadLetter
from schemas.topics import BY_EVENT, BY_NAME, DLQ_TABLE, TOPICS, all_topic_names
from tests.examples import examples


def test_every_event_but_dead_letter_has_one_topic():
    assert set(BY_EVENT) == set(EVENT_TYPES) - {DeadLetter}
    assert len(BY_NAME) == len(TOPICS)


def test_topic_names_follow_architecture():
    assert [t.name for t in TOPICS] == [
        "chat.requests",
        "chat.responses",
        "chat.feedback",
        "inference.latency",
        "metrics.windows",
        "dpo.pairs",
        "retrain.jobs",
        "retrain.metrics",
        "model.deployments",
        "reviews.human",
        "retrieval.queries",
    ]
    assert all_topic_names()[:2] == ["chat.requests", "chat.requests.dlq"]


def test_every_topic_has_a_table():
    assert {t.table for t in TOPICS} | {DLQ_TABLE} == set(TABLES)


def test_key_is_the_declared_field():
    for event in examples():
        topic = BY_EVENT.get(type(event))
        if topic:
            assert topic.key(event) == str(getattr(event, topic.key_field)).encode()
    assert BY_NAME["chat.responses"].key_field == "session_id"
    assert BY_NAME["model.deployments"].key_field == "alias"


def test_explicit_partitions_and_config():
    for t in TOPICS:
        assert t.partitions >= 1
        assert t.config()["cleanup.policy"] in ("delete", "compact")
        assert int(t.config()["retention.ms"]) > 0
