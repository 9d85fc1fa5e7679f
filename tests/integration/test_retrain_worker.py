"""The retrain worker against the real stack (broker, store with its ClickHouse sink):

1. pairs to dpo.pairs -> job `requested` -> `started` -> `succeeded` accepted -> version registered
   -> Deployment `adapter_ready`; a `promoted` event moves the registry's production pointer;
2. the same pairs with chosen and rejected swapped, continuing from that adapter: rejected by the gate
   (the regression set's answers change), registered as rejected, nothing deployed;
3. kill -9 of the worker mid-training, restart: the job ends `failed` ("worker restarted mid-job") and
   no partial version exists.
Training time per job is printed (pytest -s), not asserted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import clickhouse_connect
import psutil
import pytest
from confluent_kafka import Consumer, TopicPartition

from producers.sdk import ChatEventProducer
from producers.settings import ProducerSettings
from retrain.registry import Registry
from schemas.events import Deployment, RetrainJob, TrainingMetrics
from schemas.topics import MODEL_DEPLOYMENTS, RETRAIN_JOBS, TRAINING_METRICS, create_topics
from schemas.topology import RETRAIN_GROUP
from tests.conftest import settings_env
from tests.integration.retrain_helpers import Collector, pairs, write_golden

pytestmark = pytest.mark.integration
pytest.importorskip("trl")


@pytest.fixture(scope="module")
def base_model(tiny_model: Path) -> Path:
    return tiny_model


def skip_earlier_jobs(bootstrap: str) -> None:
    """Commit the worker group's offsets at the end of retrain.jobs: the broker is shared by the whole
    session, and a job an earlier module left there would otherwise be trained here first."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": RETRAIN_GROUP, "enable.auto.commit": False})
    try:
        topic = RETRAIN_JOBS.name
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p))[1]) for p in parts]
        consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def env(stack, base_model, tmp_path_factory):
    create_topics(stack.kafka_bootstrap)
    skip_earlier_jobs(stack.kafka_bootstrap)
    root = tmp_path_factory.mktemp("retrain")
    return {
        **os.environ,
        **settings_env(stack),
        "HF_HUB_OFFLINE": "1",
        "FLYWHEEL_BASE_MODEL": str(base_model),
        "FLYWHEEL_RETRAIN_GOLDEN": str(write_golden(root / "golden.jsonl")),
        "FLYWHEEL_RETRAIN_REGRESSION": str(root / "golden.jsonl"),
        "FLYWHEEL_RETRAIN_REGISTRY_DIR": str(root / "adapters"),
        "FLYWHEEL_RETRAIN_WORK_DIR": str(root / "work"),
        "FLYWHEEL_RETRAIN_PAIRS_WAIT_S": "60",
        "FLYWHEEL_LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="module")
def producer(stack):
    create_topics(stack.kafka_bootstrap)
    p = ChatEventProducer(ProducerSettings(kafka_bootstrap=stack.kafka_bootstrap))
    yield p
    p.close(strict=False)


@pytest.fixture(scope="module")
def events(stack):
    config = {
        "bootstrap.servers": stack.kafka_bootstrap,
        "group.id": f"test-retrain-{os.getpid()}",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "enable.auto.commit": False,
    }
    c = Collector(config, [RETRAIN_JOBS.name, MODEL_DEPLOYMENTS.name, TRAINING_METRICS.name])
    yield c
    c.close()


def start_worker(env: dict, log_path, **extra) -> subprocess.Popen:
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "retrain.worker"], env={**env, **extra}, stdout=log, stderr=log)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def request(producer, tag: str, batch) -> RetrainJob:
    for pair in batch:
        producer.send(pair)
    job = RetrainJob(
        job_id=f"job-{tag}-{os.getpid()}", base_model="tiny", status="requested", pair_ids=[p.pair_id for p in batch]
    )
    producer.send(job)
    assert producer.flush(30).ok
    return job


def status_of(job: RetrainJob, status: str):
    return lambda e: isinstance(e, RetrainJob) and e.job_id == job.job_id and e.status == status


def test_jobs_accepted_then_swapped_rejected(stack, env, producer, events, tmp_path):
    registry = Registry(env["FLYWHEEL_RETRAIN_REGISTRY_DIR"])
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        t0 = time.monotonic()
        good = request(producer, "good", pairs(f"good-{os.getpid()}"))
        events.wait(status_of(good, "started"), what="started")
        assert psutil.Process(worker.pid).nice() == 19  # training yields the cores to serving
        done = events.wait(status_of(good, "succeeded"), timeout=300, what="succeeded")
        print(
            f"\njob {good.job_id}: train {done.metrics['train_seconds']:.1f} s, "
            f"requested->succeeded {time.monotonic() - t0:.1f} s"
        )
        assert done.verdict == "accepted", done.error
        assert done.adapter_version == "support@v1" and done.parent_version is None
        assert done.metrics["corrected_share"] >= 0.8, done.metrics  # the tiny model learnt the corrections
        assert done.metrics["preference_accuracy"] >= done.metrics["current_preference_accuracy"]
        ready = events.wait(
            lambda e: isinstance(e, Deployment) and e.action == "adapter_ready" and e.job_id == good.job_id,
            what="adapter_ready",
        )
        v1 = registry.show("support@v1")
        assert (ready.version, ready.job_id, ready.previous_version) == ("support@v1", good.job_id, "tiny")
        assert ready.adapter_path == str(v1.path) and os.path.isabs(ready.adapter_path)
        assert (v1.path / "adapter_model.safetensors").is_file()
        assert v1.metadata["pair_ids"] == good.pair_ids and v1.metadata["job_id"] == good.job_id
        assert any(
            isinstance(e, TrainingMetrics) and e.job_id == good.job_id and e.split == "train" and e.loss is not None
            for e in events.events
        )

        # the training metrics reach ClickHouse through the sink
        store = clickhouse_connect.get_client(dsn=stack.query_url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = store.query(
                "SELECT count() FROM flywheel.training_metrics FINAL WHERE job_id = %(j)s",
                parameters={"j": good.job_id},
            ).result_rows[0][0]
            if rows:
                break
            time.sleep(0.5)
        assert rows > 0

        # what the controller would emit after the canary: the worker moves the production pointer
        producer.send(
            Deployment(
                alias="support",
                action="promoted",
                version="support@v1",
                previous_version="tiny",
                weight=100,
                reason="canary passed",
            )
        )
        producer.flush(10)
        deadline = time.monotonic() + 30
        while registry.current("support") != "support@v1" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert registry.current("support") == "support@v1"

        # From now on the gate also asks that the regression answers stay (against v1, which answers them; the
        # random base model's answers are noise, so the first job could not be held to them).
        stop(worker)
        worker = start_worker(env, tmp_path / "worker-strict.log", FLYWHEEL_GATE_MIN_KEPT="0.9")
        t0 = time.monotonic()
        bad = request(producer, "swapped", pairs(f"swap-{os.getpid()}", swapped=True))
        done = events.wait(status_of(bad, "succeeded"), timeout=300, what="swapped succeeded")
        print(
            f"job {bad.job_id}: train {done.metrics['train_seconds']:.1f} s, "
            f"requested->succeeded {time.monotonic() - t0:.1f} s"
        )
        assert done.verdict == "rejected" and "kept" in (done.error or ""), done.error
        assert done.parent_version == "support@v1"
        rejected = registry.show(done.adapter_version)
        assert rejected.number > 1 and rejected.rejected and rejected.metadata["parent_version"] == "support@v1"
        time.sleep(1)
        assert not [e for e in events.events if isinstance(e, Deployment) and e.version == rejected.name]
        assert registry.current("support") == "support@v1"
    finally:
        stop(worker)


def test_kill_mid_training_ends_failed_without_partial_version(env, producer, events, tmp_path):
    registry = Registry(env["FLYWHEEL_RETRAIN_REGISTRY_DIR"])
    before = [v.name for v in registry.list("support")]
    slow = tmp_path / "slow.yaml"
    slow.write_text(
        "learning_rate: 5.0e-3\nmax_steps: 2000\nper_device_train_batch_size: 2\nmax_length: 128\n"
        "logging_steps: 1\nlora_r: 8\ntorch_threads: 1\n"
    )
    worker = start_worker(env, tmp_path / "worker1.log", FLYWHEEL_RETRAIN_CONFIG=str(slow))
    try:
        job = request(producer, "crash", pairs(f"crash-{os.getpid()}"))
        events.wait(status_of(job, "started"), what="started")
        events.wait(
            lambda e: isinstance(e, TrainingMetrics) and e.job_id == job.job_id and e.step >= 2, what="training steps"
        )
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        stop(worker)
    restarted = start_worker(env, tmp_path / "worker2.log")
    try:
        failed = events.wait(status_of(job, "failed"), timeout=120, what="failed after restart")
        assert failed.error == "worker restarted mid-job"
        assert not any(status_of(job, "succeeded")(e) for e in events.events)
        assert [v.name for v in registry.list("support")] == before
        alias_dir = registry.alias_dir("support")
        assert not [p for p in alias_dir.iterdir() if p.name.startswith(".tmp-")]
        assert not (registry.root.parent / "work" / "jobs" / job.job_id).exists()
        assert not [e for e in events.events if isinstance(e, Deployment) and e.job_id == job.job_id]
    finally:
        stop(restarted)
    assert restarted.returncode == 0
