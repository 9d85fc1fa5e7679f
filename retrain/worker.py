"""The retrain worker: RetrainJob `requested` -> DPO adapter -> gate -> registry -> `adapter_ready`.

Reads:  `retrain.jobs` (group RETRAIN_GROUP) for `requested` jobs; `model.deployments` for
        `promoted` / `rolled_back` of its alias (mirrored into the registry's production pointer, which
        the next job continues from); the job's pairs from `flywheel.dpo_pairs` FINAL at the store's
        query URL (retried while the sink catches up, for `retrain_pairs_wait_s`).
Writes: RetrainJob `started`, then `succeeded` (verdict, metrics, adapter_version) or `failed` (error);
        TrainingMetrics per training log step and one `eval` row per gate; on an accepted verdict a
        Deployment `adapter_ready` (absolute adapter_path, version, job_id, previous_version); versions
        in the registry; a job journal under <work_dir>/journal.

Delivery: the offset of a `requested` message is committed only after its terminal event (and the
adapter_ready) is acknowledged by the broker. A crash in between re-delivers the message, and the
journal says what had happened:
- journal `started` (the worker died mid-job, e.g. kill -9): the job ends `failed` with
  "worker restarted mid-job" and is not retried: a job that crashed its worker (out of memory, a bad
  pair) would crash it again in a loop. Nothing partial exists: the registry only ever holds whole
  versions (atomic rename), the job's scratch directory and any half-written version are removed.
  `flywheel train dpo --job ID` reruns the pairs by hand.
- journal `ended` (died after the terminal event, before the commit): nothing is emitted twice.

Run: `python -m retrain.worker` (or `flywheel up`); FLYWHEEL_* settings (retrain.settings).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError
from prometheus_client import start_http_server

from producers.errors import DeliveryFailed
from producers.sdk import ChatEventProducer
from producers.settings import ProducerSettings
from retrain.config import load_config
from retrain.dataset import fetch_pairs
from retrain.metrics import observe as count_job
from retrain.pipeline import run_job
from retrain.registry import Registry, RegistryError
from retrain.settings import RetrainSettings
from schemas.codec import decode
from schemas.errors import EventError
from schemas.events import Deployment, Event, RetrainJob, TrainingMetrics
from schemas.kafka import client_config
from schemas.logs import setup_logging
from schemas.topics import MODEL_DEPLOYMENTS, RETRAIN_JOBS, create_topics
from schemas.topology import RETRAIN_GROUP

log = logging.getLogger(__name__)

PRODUCER_NAME = "flywheel-retrain"
RESTARTED = "worker restarted mid-job"


class Journal:
    """One small file per job: `started` before the first event, `ended` after the terminal one."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def get(self, job_id: str) -> str | None:
        try:
            return json.loads((self.root / f"{job_id}.json").read_text())["status"]
        except FileNotFoundError:
            return None

    def set(self, job_id: str, status: str) -> None:
        tmp = self.root / f".{job_id}.tmp"
        with open(tmp, "w") as f:
            json.dump({"status": status, "at": time.time(), "pid": os.getpid()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / f"{job_id}.json")


class RetrainWorker:
    def __init__(self, settings: RetrainSettings):
        self.settings = settings
        self.registry = Registry(settings.registry_dir)
        self.journal = Journal(settings.work_dir / "journal")
        self.producer = ChatEventProducer(
            ProducerSettings(kafka_bootstrap=settings.kafka_bootstrap, producer_client_id=PRODUCER_NAME)
        )
        self._store = None
        self._stop = False

    # -- bus ---------------------------------------------------------------------------------------

    def consumer(self) -> Consumer:
        return Consumer(
            client_config(
                self.settings.kafka_bootstrap,
                {
                    "group.id": RETRAIN_GROUP,
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "session.timeout.ms": self.settings.retrain_session_timeout_ms,
                    "heartbeat.interval.ms": max(1000, self.settings.retrain_session_timeout_ms // 6),
                    # Training blocks the poll loop: a job may take this long before the worker leaves the group.
                    "max.poll.interval.ms": int(self.settings.retrain_max_job_s * 1000),
                },
            )
        )

    def emit(self, *events: Event) -> None:
        """Send and wait for the broker's acknowledgement of every event."""
        before = self.producer.failed
        for event in events:
            self.producer.send(event)
        stats = self.producer.flush(30.0)
        if stats.pending or self.producer.failed > before:
            failed = self.producer.failed - before
            # the offset must not be committed: the job is taken up again
            raise DeliveryFailed(f"events not delivered (pending {stats.pending}, failed {failed})", stats)
        for event in events:
            if isinstance(event, RetrainJob):
                count_job(event)

    def store(self):
        if self._store is None:
            from schemas import store

            self._store = store.connect(self.settings.query_url)
        return self._store

    # -- jobs --------------------------------------------------------------------------------------

    def _job_event(self, job: RetrainJob, status: str, **fields) -> RetrainJob:
        return RetrainJob(
            job_id=job.job_id,
            base_model=job.base_model,
            status=status,
            pair_ids=job.pair_ids,
            producer=PRODUCER_NAME,
            **fields,
        )

    def _cleanup(self, job_id: str) -> None:
        shutil.rmtree(self.settings.work_dir / "jobs" / job_id, ignore_errors=True)
        removed = self.registry.clean_temp(self.settings.model_alias)
        if removed:
            log.warning("removed half-written versions", extra={"job_id": job_id, "count": removed})

    def handle_job(self, job: RetrainJob) -> None:
        """Take a `requested` job to its terminal event (delivered) or raise DeliveryFailed."""
        ids = {"job_id": job.job_id, "pairs": len(job.pair_ids)}
        seen = self.journal.get(job.job_id)
        if seen == "ended":
            log.info("job already ended: skipped", extra=ids)
            return
        if seen == "started":
            log.error("job was running when the worker died: failed", extra=ids)
            self._cleanup(job.job_id)
            self.emit(self._job_event(job, "failed", error=RESTARTED))
            self.journal.set(job.job_id, "ended")
            return
        if job.base_model != self.settings.served_model_name:
            log.warning("job for another base model: skipped", extra={**ids, "base_model": job.base_model})
            return
        self.journal.set(job.job_id, "started")
        parent = self.registry.current(self.settings.model_alias)
        self.emit(self._job_event(job, "started", parent_version=parent))
        log.info("job started", extra={**ids, "parent_version": parent})
        started = time.monotonic()
        try:
            config = load_config(self.settings.retrain_config)
            pairs = fetch_pairs(
                self.store(),
                job.pair_ids,
                self.settings.retrain_pairs_wait_s,
                self.settings.retrain_pairs_poll_s,
                job_id=job.job_id,
            )
            outcome = run_job(self.settings, config, pairs, job.job_id, self.registry, publish=self._publisher(job))
        except Exception as exc:  # any failure of the job itself ends it `failed`, with the error
            log.exception("job failed", extra=ids)
            self._cleanup(job.job_id)
            error = f"{type(exc).__name__}: {exc}"[:2000]
            self.emit(self._job_event(job, "failed", parent_version=parent, error=error))
            self.journal.set(job.job_id, "ended")
            return
        version = outcome.version
        events: list[Event] = [
            TrainingMetrics(
                job_id=job.job_id,
                base_model=job.base_model,
                adapter_version=version.name,
                split="eval",
                step=int(outcome.metrics.get("steps", 0)),
                epoch=config.num_train_epochs,
                reward_margin=outcome.gate.candidate.reward_margin,
                reward_accuracy=outcome.gate.candidate.preference_accuracy,
                producer=PRODUCER_NAME,
            ),
            self._job_event(
                job,
                "succeeded",
                parent_version=parent,
                adapter_version=version.name,
                verdict=outcome.gate.verdict.name,
                error="; ".join(outcome.gate.verdict.reasons) or None,
                metrics={**outcome.metrics, "job_seconds": time.monotonic() - started},
            ),
        ]
        if outcome.accepted:
            events.append(
                Deployment(
                    alias=self.settings.model_alias,
                    action="adapter_ready",
                    version=version.name,
                    previous_version=outcome.previous_version,
                    adapter_path=str(version.path),
                    job_id=job.job_id,
                    reason="passed the evaluation gate",
                    producer=PRODUCER_NAME,
                )
            )
        self.emit(*events)
        self.journal.set(job.job_id, "ended")
        log.info(
            "job succeeded",
            extra={
                **ids,
                "version": version.name,
                "verdict": outcome.gate.verdict.name,
                "reasons": list(outcome.gate.verdict.reasons),
                "train_seconds": round(outcome.train_seconds, 2),
                "job_seconds": round(time.monotonic() - started, 2),
            },
        )

    def _publisher(self, job: RetrainJob):
        def publish(step: int, epoch: float, values: dict[str, float]) -> None:
            acc = values.get("reward_accuracy")
            self.producer.send(
                TrainingMetrics(
                    job_id=job.job_id,
                    base_model=job.base_model,
                    split="train",
                    step=step,
                    epoch=epoch,
                    loss=values.get("loss"),
                    reward_margin=values.get("reward_margin"),
                    reward_accuracy=None if acc is None else min(1.0, max(0.0, acc)),
                    learning_rate=values.get("learning_rate"),
                    producer=PRODUCER_NAME,
                )
            )

        return publish

    def handle_deployment(self, event: Deployment) -> None:
        """Mirror the controller's promotions and post-promotion rollbacks into the production pointer."""
        alias = self.settings.model_alias
        if event.alias != alias:
            return
        try:
            if event.action == "promoted" and event.version != self.settings.served_model_name:
                self.registry.promote(event.version, reason=event.reason or "promoted by the controller")
                log.info("production pointer promoted", extra={"version": event.version})
            elif event.action == "rolled_back" and self.registry.current(alias) == event.version:
                self.registry.rollback(alias, reason=event.reason or "rolled back by the controller")
                log.info("production pointer rolled back", extra={"version": event.version})
        except RegistryError as exc:  # a version this registry does not know (another registry root)
            log.warning("deployment not mirrored", extra={"version": event.version, "error": str(exc)})

    # -- loop --------------------------------------------------------------------------------------

    def stop(self, *_args) -> None:
        self._stop = True

    def run(self) -> None:
        create_topics(self.settings.kafka_bootstrap)
        self.registry.clean_temp(self.settings.model_alias)
        consumer = self.consumer()
        consumer.subscribe([RETRAIN_JOBS.name, MODEL_DEPLOYMENTS.name])
        log.info("retrain worker running", extra={"group": RETRAIN_GROUP, "registry": str(self.registry.root)})
        try:
            while not self._stop:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error", extra={"error": str(msg.error())})
                    continue
                where = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}
                try:
                    event = decode(msg.value())
                except EventError as exc:  # the sink sends it to the DLQ; the worker has nothing to do
                    log.error("undecodable event skipped", extra={**where, "error": str(exc)})
                    event = None
                if isinstance(event, RetrainJob) and event.status == "requested":
                    self.handle_job(event)
                elif isinstance(event, Deployment):
                    self.handle_deployment(event)
                consumer.commit(message=msg, asynchronous=False)
        finally:
            consumer.close()
            self.producer.close(strict=False)


def main() -> None:
    settings = RetrainSettings()
    setup_logging(settings.log_level)
    os.nice(max(0, settings.retrain_nice - os.nice(0)))  # to that value (a process cannot lower its nice)
    if settings.retrain_metrics_port:
        start_http_server(settings.retrain_metrics_port, addr=settings.metrics_host)
    worker = RetrainWorker(settings)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    worker.run()


if __name__ == "__main__":
    main()
