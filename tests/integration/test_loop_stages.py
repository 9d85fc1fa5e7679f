"""`flywheel.v_loop_stages` (migration 4) against a real chDB: one row per retrain job with its stage times.

Jobs: one promoted (its newest pair is the threshold pair; one event delivered twice), one rolled back, one failed.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import clickhouse_connect
import pytest

from schemas.ddl import migrate

pytestmark = pytest.mark.integration

T0 = datetime(2025, 1, 1, 12, 0, 0)
PAIR_COLUMNS = [
    "event_id",
    "event_type",
    "occurred_at",
    "producer",
    "pair_id",
    "base_model",
    "model_version",
    "prompt",
    "chosen",
    "rejected",
    "source",
    "session_id",
    "message_id",
    "feedback_event_id",
]
JOB_COLUMNS = [
    "event_id",
    "event_type",
    "occurred_at",
    "producer",
    "job_id",
    "base_model",
    "status",
    "pair_ids",
    "adapter_version",
    "verdict",
]
DEPLOY_COLUMNS = [
    "event_id",
    "event_type",
    "occurred_at",
    "producer",
    "alias",
    "action",
    "version",
    "weight",
    "reason",
    "job_id",
]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # One chDB path per process at a time: closed before the next module opens its own.
    c = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('chdb-loop')}")
    migrate(c)
    pairs = [
        [
            uuid.uuid4(),
            "dpo_pair",
            at(s),
            "t",
            pid,
            "tiny",
            "tiny",
            "[]",
            "c",
            "r",
            "correction",
            "s",
            "m",
            uuid.uuid4(),
        ]
        for pid, s in (("p1", 0), ("p2", 5), ("p3", 9), ("q1", 100), ("f1", 200))
    ]
    c.insert("flywheel.dpo_pairs", pairs, column_names=PAIR_COLUMNS)
    twice = uuid.uuid4()
    jobs = [
        [uuid.uuid4(), "retrain_job", at(10), "t", "good", "tiny", "requested", ["p1", "p2", "p3"], None, None],
        [twice, "retrain_job", at(11), "t", "good", "tiny", "started", ["p1", "p2", "p3"], None, None],
        [twice, "retrain_job", at(11), "t", "good", "tiny", "started", ["p1", "p2", "p3"], None, None],
        [
            uuid.uuid4(),
            "retrain_job",
            at(30),
            "t",
            "good",
            "tiny",
            "succeeded",
            ["p1", "p2", "p3"],
            "support@v1",
            "accepted",
        ],
        [uuid.uuid4(), "retrain_job", at(101), "t", "bad", "tiny", "requested", ["q1"], None, None],
        [uuid.uuid4(), "retrain_job", at(102), "t", "bad", "tiny", "started", ["q1"], None, None],
        [uuid.uuid4(), "retrain_job", at(120), "t", "bad", "tiny", "succeeded", ["q1"], "support@v2", "accepted"],
        [uuid.uuid4(), "retrain_job", at(201), "t", "crash", "tiny", "requested", ["f1"], None, None],
        [uuid.uuid4(), "retrain_job", at(202), "t", "crash", "tiny", "started", ["f1"], None, None],
        [uuid.uuid4(), "retrain_job", at(210), "t", "crash", "tiny", "failed", ["f1"], None, None],
    ]
    c.insert("flywheel.retrain_jobs", jobs, column_names=JOB_COLUMNS)
    deployments = [
        [uuid.uuid4(), "deployment", at(s), "t", "support", action, version, weight, "", job]
        for s, action, version, weight, job in (
            (31, "adapter_ready", "support@v1", None, "good"),
            (33, "canary_started", "support@v1", 5, "good"),
            (40, "step", "support@v1", 20, "good"),
            (60, "promoted", "support@v1", 100, "good"),
            (121, "adapter_ready", "support@v2", None, "bad"),
            (122, "canary_started", "support@v2", 5, "bad"),
            (130, "rolled_back", "support@v2", 0, "bad"),
        )
    ]
    c.insert("flywheel.model_deployments", deployments, column_names=DEPLOY_COLUMNS)
    yield c
    c.close()


def rows(client) -> dict[str, dict]:
    return {r["job_id"]: r for r in client.query("SELECT * FROM flywheel.v_loop_stages").named_results()}


def test_promoted_job_has_every_stage_and_total(client):
    good = rows(client)["good"]
    assert good["threshold_pair_at"] == at(9)  # the newest of the job's pairs
    assert good["pairs"] == 3 and good["stage"] == "promoted" and good["adapter_version"] == "support@v1"
    assert [
        good[c]
        for c in (
            "pair_to_requested_s",
            "requested_to_started_s",
            "started_to_succeeded_s",
            "succeeded_to_ready_s",
            "ready_to_canary_s",
            "canary_to_promoted_s",
        )
    ] == [1.0, 1.0, 19.0, 1.0, 2.0, 27.0]
    assert good["total_s"] == 51.0 and good["canary_to_rolled_back_s"] is None


def test_rolled_back_and_failed_jobs(client):
    found = rows(client)
    bad, crash = found["bad"], found["crash"]
    assert bad["stage"] == "rolled_back" and bad["canary_to_rolled_back_s"] == 8.0 and bad["total_s"] is None
    assert crash["stage"] == "failed" and crash["succeeded_at"] is None and crash["adapter_ready_at"] is None
    assert crash["pair_to_requested_s"] == 1.0
    assert len(found) == 3
