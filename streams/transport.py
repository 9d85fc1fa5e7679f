"""faust's aiokafka consumer with two changes for this workload (faust-streaming 0.15.3, pinned).

1. Fetch wait: ours (FLYWHEEL_STREAMS_FETCH_MAX_WAIT_MS) instead of faust's hard-coded 1500 ms, so that a
   quiet partition does not delay the next fetch of a busy one by 1.5 s.
2. Per-message hand-off: faust's fetch loop (Consumer._drain_messages) runs
   `wait_first(callback(message), suspend_flow.wait())` for every message: four tasks and an
   asyncio.wait each, the ceiling of a do-nothing agent here (about 3,700 events/s; aiokafka alone reads
   about 140,000/s). The callback only puts the event on its stream's queue, without waiting
   (Conductor -> put_nowait_enhanced; back-pressure pauses the partition instead), so while the flow is
   not suspended we await it directly (a do-nothing agent: about 10,000 events/s). During a rebalance
   (flow suspended) faust's own path runs, so a message in flight is still abandoned as faust intends.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults


def install(fetch_max_wait_ms: int) -> None:
    """Make this process's faust apps use the consumer below."""

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport):  # noqa: ANN001, ANN202
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read by aiokafka's Fetcher at start
            return consumer

    class Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
            if len(coros) == 2 and timeout is None and not self.suspend_flow.is_set():
                callback, suspended = coros  # the fetch loop's call, the only one in faust's Consumer
                suspended.close()
                return WaitResults([callback], [await callback], False)
            return await super().wait_first(*coros, timeout=timeout)

    faust_aiokafka.Transport.Consumer = Consumer
