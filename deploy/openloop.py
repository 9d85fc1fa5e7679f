"""Open-loop traffic: arrivals on a fixed schedule, whatever the server's latency, in a thread of their own."""

from __future__ import annotations

import asyncio
import threading
import time


class OpenLoop:
    """Open-loop arrivals: `rate` per second on a fixed schedule, each handled by `one(client)` as its own task,
    whatever the answers' latency (a closed loop would slow down with the server and hide its queueing). Runs in a
    thread with its own event loop, so the caller may block. Subclasses say how to connect and what one arrival does.
    """

    name = "traffic"

    def __init__(self, rate: float):
        self.rate = rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name=self.name, daemon=True)

    def start(self):
        self.started_at = time.time()
        self._thread.start()
        return self

    def stop(self, timeout: float = 300.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.stopped_at = time.time()

    def client(self):
        """An async context manager giving the client each arrival uses."""
        raise NotImplementedError

    async def one(self, client) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        async with self.client() as client:
            tasks: set[asyncio.Task] = set()
            t0, k = time.monotonic(), 0
            while not self._stop.is_set():
                delay = t0 + k / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(min(delay, 0.5))
                    continue
                k += 1
                task = asyncio.create_task(self.one(client))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
