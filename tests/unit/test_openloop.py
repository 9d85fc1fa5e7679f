"""The open-loop generator does not wait for answers: arrivals keep their schedule while earlier ones hang."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from deploy.openloop import OpenLoop


class Hanging(OpenLoop):
    """Every arrival hangs until released, as answers from a stalled server would."""

    def __init__(self, rate: float):
        super().__init__(rate)
        self.started = 0
        self.release = threading.Event()
        self.five_started = threading.Event()

    def client(self):
        return contextlib.AsyncExitStack()

    async def one(self, client) -> None:
        self.started += 1
        if self.started >= 5:
            self.five_started.set()
        while not self.release.is_set():
            await asyncio.sleep(0.01)


def test_arrivals_do_not_wait_for_answers():
    load = Hanging(rate=50.0).start()
    try:
        assert load.five_started.wait(30), f"only {load.started} arrivals while the first ones hang"
    finally:
        load.release.set()
        load.stop(timeout=30)
    assert not load._thread.is_alive()  # stop waits for the hanging arrivals to finish
