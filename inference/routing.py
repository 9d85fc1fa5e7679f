"""The routing table in Redis: which model versions serve an alias, with what weight, on which workers.

Key layout (the contract between the gateway, the workers and the hot-swap controller):
- `flywheel:routes:<alias>`   hash  version -> weight (0..100; weights of an alias sum to 100).
  A version is the base model's served name (e.g. `tiny`) or a LoRA adapter name (`support@v2`).
- `flywheel:adapters`         hash  adapter version -> adapter directory (what workers load at start).
- `flywheel:workers:<index>`  string JSON {url, ready, adapters, started_at}, with a short TTL that the
  worker's heartbeat refreshes: a worker that dies vanishes from the table by itself.

Assignment is sticky: a user's bucket is md5(user id) mod 100, as in the seed design, so a user sees
one version throughout a canary step and moves only when the weights move past their bucket.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    version: str
    weight: int


def bucket(user_id: str) -> int:
    """The user's sticky bucket in [0, 100)."""
    return int(hashlib.md5(user_id.encode()).hexdigest(), 16) % 100


def choose(routes: list[Route], user_id: str) -> str:
    """Pick the version whose cumulative weight range holds the user's bucket.

    Routes are ordered by version name so that every gateway process agrees on the ranges.
    """
    if not routes:
        raise LookupError("no routes")
    b = bucket(user_id)
    total = 0
    ordered = sorted(routes, key=lambda r: r.version)
    for route in ordered:
        total += route.weight
        if b < total:
            return route.version
    return max(ordered, key=lambda r: r.weight).version  # weights summing under 100: the heaviest


def parse_routes(raw: dict) -> list[Route]:
    """Routes from an HGETALL reply (bytes or str), dropping zero weights."""
    routes = []
    for version, weight in raw.items():
        v = version.decode() if isinstance(version, bytes) else version
        w = int(weight)
        if w > 0:
            routes.append(Route(v, w))
    return routes


def worker_record(url: str, ready: bool, adapters: list[str], started_at: float) -> str:
    return json.dumps({"url": url, "ready": ready, "adapters": adapters, "started_at": started_at})
