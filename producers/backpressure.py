"""Waiting for room in a full producer queue: poll (which frees delivered messages) and retry.

A full queue means the broker is slower than the caller, or down. Dropping the event would
lose data silently; blocking forever would hang the caller. So `send` waits up to
`block_timeout` and then raises ProducerBackpressure, and the caller decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from producers.errors import ProducerBackpressure

POLL_STEP_S = 0.05


def produce_blocking(
    produce: Callable[[], None],
    poll: Callable[[float], object],
    block_timeout: float,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Call `produce` until it stops raising BufferError; return the number of retries.

    Between tries `poll` serves delivery reports, which is what frees queue slots.
    Raises ProducerBackpressure once `block_timeout` seconds have passed without room.
    """
    deadline = clock() + block_timeout
    retries = 0
    while True:
        remaining = deadline - clock()
        poll(max(0.0, min(POLL_STEP_S, remaining)))
        retries += 1
        try:
            produce()
            return retries
        except BufferError:
            if clock() >= deadline:
                raise ProducerBackpressure(
                    f"producer queue full for {block_timeout:g}s: the broker is not keeping up or is down"
                ) from None
