"""The hot-swap controller: adapter_ready -> load on every worker -> canary -> promote or roll back.

Reads: `model.deployments` (consumer group `flywheel-hotswap-controller`; only `adapter_ready` is acted
on), the routing table and worker records in Redis, canary figures from the analytics store
(`settings.query_url`). Writes: `flywheel:adapters`, `flywheel:routes:<alias>`, its rollout records
(layout in inference/controller/deployer.py), Deployment events (`canary_started`, `step`, `promoted`,
`rolled_back`) to `model.deployments`; calls the workers' LoRA admin API.

One rollout per alias at a time: an adapter_ready event is appended to the alias's queue in Redis and
only then committed (the queue is durable), and one runner per alias takes the queue in order.

Crash and restart: the runner first resumes the alias's recorded rollout (`rollout.resume_action`):
a rollout that was loading loads again; one in canary continues at its routed weight with a fresh
step window, after the canary verifies again on every worker (else it is rolled back); one finishing
drains and unloads again; a record that does not match the routes is rolled back to the current
version. Pending events of the last transition are published again.

Example:
    FLYWHEEL_CANARY_STEP_S=20 python -m inference.controller.service
"""

from __future__ import annotations

import asyncio
import logging
import signal

from confluent_kafka import Consumer, KafkaError
from prometheus_client import start_http_server
from redis.asyncio import Redis

from inference.adapters import AdapterAdmin
from inference.controller.canary_metrics import ClickHouseMetrics, MetricsSource
from inference.controller.deployer import Deployer, Publish, Superseded
from inference.controller.metrics import observe as count_deployment
from inference.controller.settings import ControllerSettings
from inference.keys import DONE_KEY, QUEUE_KEY, ROLLOUT_KEY
from producers import ChatEventProducer
from schemas.codec import decode
from schemas.errors import EventError
from schemas.events import Deployment
from schemas.kafka import client_config
from schemas.logs import setup_logging
from schemas.topics import MODEL_DEPLOYMENTS
from schemas.topology import CONTROLLER_GROUP

log = logging.getLogger(__name__)

RETRY_S = 5.0


def kafka_publisher(settings: ControllerSettings) -> tuple[ChatEventProducer, Publish]:
    """A producer and a publish function that waits for the broker's acknowledgement (control path)."""
    producer = ChatEventProducer(settings)

    def publish(event: Deployment) -> None:
        before = producer.stats.failed
        producer.send(event)
        stats = producer.flush(30.0)
        if stats.failed > before or stats.pending:
            raise RuntimeError(f"deployment event {event.event_id} not delivered")
        count_deployment(event)

    return producer, publish


class Controller:
    def __init__(self, settings: ControllerSettings, redis: Redis, deployer: Deployer):
        self.settings = settings
        self.redis = redis
        self.deployer = deployer
        self.runners: dict[str, asyncio.Task] = {}

    async def enqueue(self, event: Deployment) -> bool:
        """Queue an adapter_ready for its alias's runner; False for a duplicate."""
        alias, version = event.alias, event.version
        if await self.redis.hexists(DONE_KEY.format(alias=alias), version):
            return False
        if (await self.redis.hget(ROLLOUT_KEY.format(alias=alias), "canary")) == version:
            return False
        queued = await self.redis.lrange(QUEUE_KEY.format(alias=alias), 0, -1)
        if any(Deployment.model_validate_json(q).version == version for q in queued):
            return False
        await self.redis.rpush(QUEUE_KEY.format(alias=alias), event.model_dump_json())
        self.ensure_runner(alias)
        return True

    def ensure_runner(self, alias: str) -> None:
        task = self.runners.get(alias)
        if task is None or task.done():
            self.runners[alias] = asyncio.create_task(self.run_alias(alias), name=f"rollout-{alias}")

    async def run_alias(self, alias: str) -> None:
        """Resume the recorded rollout, then take the queue in order until it is empty."""
        while True:
            try:
                if await self.deployer.record(alias):
                    await self.deployer.resume(alias)
                    continue
                head = await self.redis.lindex(QUEUE_KEY.format(alias=alias), 0)
                if head is None:
                    return
                rec = await self.deployer.begin(Deployment.model_validate_json(head))
                await self.redis.lpop(QUEUE_KEY.format(alias=alias))  # recorded (or a duplicate): leave the queue
                if rec:
                    await self.deployer.run(alias, rec)
            except asyncio.CancelledError:
                raise
            except Superseded as exc:
                log.warning("rollout superseded", extra={"alias": alias, "reason": str(exc)})
            except Exception:
                log.exception("rollout step failed; retrying", extra={"alias": alias})
                await asyncio.sleep(RETRY_S)

    async def resume_all(self) -> None:
        keys = [k async for k in self.redis.scan_iter(match=ROLLOUT_KEY.format(alias="*"))]
        for key in keys:
            alias = key.split(":")[2]
            self.ensure_runner(alias)

    async def consume(self, stop: asyncio.Event) -> None:
        consumer = Consumer(
            client_config(
                self.settings.kafka_bootstrap,
                {
                    "group.id": CONTROLLER_GROUP,
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "session.timeout.ms": 6000,  # a group join waits half of it on the embedded broker
                    "heartbeat.interval.ms": 1000,
                },
            )
        )
        consumer.subscribe([MODEL_DEPLOYMENTS.name])
        try:
            while not stop.is_set():
                msg = await asyncio.to_thread(consumer.poll, 1.0)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error", extra={"error": str(msg.error())})
                    continue
                ids = {"offset": msg.offset(), "partition": msg.partition()}
                try:
                    event = decode(msg.value(), Deployment)
                except EventError as exc:
                    log.error("bad deployment event skipped", extra={**ids, "error": str(exc)})
                else:
                    if event.action == "adapter_ready":
                        queued = await self.enqueue(event)
                        log.info(
                            "adapter_ready %s",
                            "queued" if queued else "already handled",
                            extra={
                                **ids,
                                "alias": event.alias,
                                "version": event.version,
                                "event_id": str(event.event_id),
                            },
                        )
                # Committed only once the event is in the durable queue.
                await asyncio.to_thread(consumer.commit, message=msg, asynchronous=False)
        finally:
            consumer.close()


async def serve(
    settings: ControllerSettings, metrics: MetricsSource | None = None, stop: asyncio.Event | None = None
) -> None:
    stop = stop or asyncio.Event()
    redis = Redis.from_url(settings.redis_dsn, decode_responses=True)
    admin = AdapterAdmin(settings.adapter_timeout_s, token=settings.worker_token())
    producer, publish = kafka_publisher(settings)
    metrics = metrics or ClickHouseMetrics.from_url(settings.query_url)
    controller = Controller(settings, redis, Deployer(settings, redis, admin, publish, metrics))
    try:
        await controller.resume_all()
        await controller.consume(stop)
    finally:
        for task in controller.runners.values():
            task.cancel()
        await asyncio.gather(*controller.runners.values(), return_exceptions=True)
        producer.close(strict=False)
        await admin.aclose()
        await redis.aclose()


def main() -> None:
    settings = ControllerSettings()
    setup_logging(settings.log_level)
    if settings.controller_metrics_port:
        start_http_server(settings.controller_metrics_port, addr=settings.metrics_host)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop=stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
