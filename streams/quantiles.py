"""A mergeable quantile sketch with a relative-error guarantee (log-spaced buckets, as DDSketch).

Why a sketch and not exact values: window state is checkpointed to a faust table several times
a second and merged across partitions; a sketch is a few hundred integers whatever the traffic,
raw values would be ~8 bytes per event per checkpoint.

Guarantee: for n values and level q, the k-th smallest value with k = min(floor(q * n), n - 1)
(0-based; the element ClickHouse's quantileExact(q) returns) is x, and `quantile(q)` returns y
with |y - x| <= accuracy * x. Values at or below `ZERO_CUTOFF` are counted as 0 exactly.
"""

from __future__ import annotations

import math
from typing import Any

ZERO_CUTOFF = 1e-9


def exact_rank(q: float, n: int) -> int:
    """0-based rank of the q-quantile of n values, as ClickHouse quantileExact picks it."""
    return min(int(q * n), n - 1)


class LogSketch:
    __slots__ = ("accuracy", "gamma", "_log_gamma", "zeros", "buckets", "count")

    def __init__(self, accuracy: float = 0.01):
        self.accuracy = accuracy
        self.gamma = (1 + accuracy) / (1 - accuracy)
        self._log_gamma = math.log(self.gamma)
        self.zeros = 0
        self.buckets: dict[int, int] = {}
        self.count = 0

    def add(self, value: float) -> None:
        self.count += 1
        if value <= ZERO_CUTOFF:
            self.zeros += 1
            return
        index = math.ceil(math.log(value) / self._log_gamma)
        buckets = self.buckets
        buckets[index] = buckets.get(index, 0) + 1

    def merge(self, other: LogSketch) -> None:
        if other.accuracy != self.accuracy:
            raise ValueError("cannot merge sketches of different accuracy")
        self.count += other.count
        self.zeros += other.zeros
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n

    def quantile(self, q: float) -> float | None:
        if self.count == 0:
            return None
        k = exact_rank(q, self.count)
        if k < self.zeros:
            return 0.0
        seen = self.zeros
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen > k:
                # The bucket holds values in (gamma^(i-1), gamma^i]; its midpoint in relative terms.
                return 2 * self.gamma**index / (self.gamma + 1)
        raise AssertionError("unreachable: counts are consistent")

    def to_json(self) -> dict[str, Any]:
        return {"a": self.accuracy, "z": self.zeros, "b": [[i, n] for i, n in self.buckets.items()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogSketch:
        sketch = cls(data["a"])
        sketch.zeros = data["z"]
        sketch.buckets = {int(i): int(n) for i, n in data["b"]}
        sketch.count = sketch.zeros + sum(sketch.buckets.values())
        return sketch
