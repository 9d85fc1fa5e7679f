"""Waiting out a full producer queue: retry after polls, then a typed error, never a silent drop."""

from __future__ import annotations

import pytest

from producers.backpressure import produce_blocking
from producers.errors import ProducerBackpressure


class FakeQueue:
    """A queue that frees one slot every `free_every` polls; the clock advances by each poll's timeout."""

    def __init__(self, free_every: int | None):
        self.free_every = free_every
        self.polls = 0
        self.now = 0.0
        self.queued = 0

    def clock(self) -> float:
        return self.now

    def poll(self, timeout: float) -> int:
        self.polls += 1
        self.now += max(timeout, 0.001)
        return 0

    def produce(self) -> None:
        if self.free_every is None or self.polls % self.free_every:
            raise BufferError("Local: Queue full")
        self.queued += 1


@pytest.mark.parametrize("free_every", [1, 3, 10])
def test_produces_once_room_appears(free_every):
    queue = FakeQueue(free_every)
    retries = produce_blocking(queue.produce, queue.poll, block_timeout=5.0, clock=queue.clock)
    assert queue.queued == 1
    assert retries == free_every


@pytest.mark.parametrize("block_timeout", [0.0, 0.2, 1.0])
def test_raises_after_block_timeout_without_room(block_timeout):
    queue = FakeQueue(free_every=None)
    with pytest.raises(ProducerBackpressure, match="queue full"):
        produce_blocking(queue.produce, queue.poll, block_timeout=block_timeout, clock=queue.clock)
    assert queue.queued == 0
    assert block_timeout <= queue.now <= block_timeout + 0.06  # waited the whole timeout, not longer


def test_errors_other_than_a_full_queue_pass_through():
    def produce():
        raise KeyError("boom")

    with pytest.raises(KeyError):
        produce_blocking(produce, lambda _t: 0, block_timeout=1.0)
