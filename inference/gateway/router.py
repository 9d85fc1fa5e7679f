"""Which worker and which model version serve a request: pure logic, no I/O.

- `WorkerPool`: least outstanding requests among the workers that are not ejected; a worker is
  ejected after `eject_failures` consecutive connection failures and comes back, on probation,
  once its cool-down has passed (one more failure ejects it again).
- `RouteTable`: the in-memory copy of the Redis routing tables (refreshed in the background by
  inference/gateway/upstream.py), resolving a requested model name to the version a user gets.
- `may_retry`: the rule for retrying on another worker: only a connection failure, and only
  while nothing has been sent to the client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from inference.routing import Route, choose


class NoWorkerAvailable(Exception):
    """Every worker is ejected or none is known."""


@dataclass
class Worker:
    url: str
    outstanding: int = 0
    failures: int = 0  # consecutive connection failures
    ejected_until: float = 0.0
    requests: int = 0
    static: bool = False  # from settings, kept when discovery forgets it
    # Model versions the worker has loaded (base + adapters, from its readiness record);
    # None for a static upstream, which is trusted to serve whatever it is asked for.
    versions: frozenset[str] | None = None

    def available(self, now: float) -> bool:
        return self.ejected_until <= now

    def serves(self, version: str | None) -> bool:
        return version is None or self.versions is None or version in self.versions


@dataclass
class WorkerPool:
    eject_failures: int = 1
    cooldown_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    workers: dict[str, Worker] = field(default_factory=dict)
    _rr: int = 0  # tie-breaker rotation, so equal loads spread over workers

    def set_workers(self, discovered: Iterable[str] | Mapping[str, frozenset[str]], static: Iterable[str] = ()) -> None:
        """Replace the worker list, keeping the counters of workers still present.

        `discovered` maps each worker's URL to the versions it has loaded (a plain list of URLs:
        versions unknown, the worker gets any request).
        """
        loaded = discovered if isinstance(discovered, Mapping) else dict.fromkeys(discovered)
        wanted: dict[str, bool] = {u.rstrip("/"): True for u in static}
        for u in loaded:
            wanted.setdefault(u.rstrip("/"), False)
        current = self.workers
        self.workers = {}
        for url, is_static in wanted.items():
            worker = current.get(url) or Worker(url, static=is_static)
            worker.versions = None if is_static else loaded.get(url)
            self.workers[url] = worker

    def pick(self, exclude: Iterable[str] = (), version: str | None = None, include_ejected: bool = False) -> Worker:
        """The available worker with the fewest outstanding requests that has `version` loaded;
        marks it busy (call release). A canary's adapter reaches each worker within a heartbeat
        of the route change, so until then only the workers that have it get its requests.
        `include_ejected`: the last resort, when no worker is left, is any worker that serves the version."""
        now = self.clock()
        excluded = set(exclude)
        candidates = [
            w
            for w in self.workers.values()
            if w.url not in excluded and (include_ejected or w.available(now)) and w.serves(version)
        ]
        if not candidates:
            if any(w.url not in excluded and w.available(now) for w in self.workers.values()):
                raise NoWorkerAvailable(f"no ready worker has model version {version!r} loaded yet")
            raise NoWorkerAvailable(self._why_none(excluded, now))
        self._rr = (self._rr + 1) % len(candidates)
        best = min(
            range(len(candidates)),
            key=lambda i: (candidates[i].outstanding, (i - self._rr) % len(candidates)),
        )
        worker = candidates[best]
        worker.outstanding += 1
        worker.requests += 1
        return worker

    def release(self, worker: Worker) -> None:
        worker.outstanding = max(0, worker.outstanding - 1)

    def succeeded(self, worker: Worker) -> None:
        worker.failures = 0

    def failed(self, worker: Worker) -> bool:
        """Record a connection failure; returns True when it ejected the worker."""
        worker.failures += 1
        if worker.failures >= self.eject_failures:
            worker.ejected_until = self.clock() + self.cooldown_s
            # On probation after the cool-down: the next failure ejects it again at once.
            worker.failures = self.eject_failures - 1
            return True
        return False

    def ready_count(self) -> int:
        now = self.clock()
        return sum(1 for w in self.workers.values() if w.available(now))

    def snapshot(self) -> list[dict]:
        now = self.clock()
        return [
            {
                "url": w.url,
                "outstanding": w.outstanding,
                "requests": w.requests,
                "ejected_for_s": round(max(0.0, w.ejected_until - now), 3),
                "static": w.static,
            }
            for w in self.workers.values()
        ]

    def _why_none(self, excluded: set[str], now: float) -> str:
        if not self.workers:
            return "no inference worker is registered"
        if all(w.url in excluded for w in self.workers.values()):
            return "every inference worker failed for this request"
        return "every inference worker is ejected after connection failures"


def may_retry(connection_failed: bool, sent_to_client: bool, attempt: int, max_attempts: int) -> bool:
    """Retry on another worker only after a connection failure, before anything reached the client."""
    return connection_failed and not sent_to_client and attempt < max_attempts


class UnknownModel(LookupError):
    pass


@dataclass
class RouteTable:
    """Routing tables by alias, as last read from Redis; an empty table means the base model."""

    aliases: tuple[str, ...]
    base_model: str
    routes: dict[str, list[Route]] = field(default_factory=dict)

    def update(self, alias: str, routes: list[Route]) -> None:
        self.routes[alias] = routes

    def versions(self, alias: str) -> list[Route]:
        return self.routes.get(alias) or [Route(self.base_model, 100)]

    def known_versions(self) -> set[str]:
        return {r.version for a in self.aliases for r in self.versions(a)} | {self.base_model}

    def resolve(self, model: str | None, user_id: str) -> tuple[str, str]:
        """(alias, version) for a requested model name: an alias is resolved stickily by user;
        a version name (the base model or an adapter in a table) is served as asked."""
        name = model or self.aliases[0]
        if name in self.aliases:
            return name, choose(self.versions(name), user_id)
        if name in self.known_versions():
            return self.alias_of(name), name
        raise UnknownModel(f"model {name!r} does not exist; available: {', '.join(self.aliases)}")

    def model_list(self) -> dict:
        """OpenAI's model list (GET /v1/models): each alias with its versions and weights, then each version."""
        created = int(time.time())
        data = []
        for alias in self.aliases:
            versions = self.versions(alias)
            data.append(
                {
                    "id": alias,
                    "object": "model",
                    "created": created,
                    "owned_by": "flywheel",
                    "versions": [{"version": r.version, "weight": r.weight} for r in versions],
                }
            )
            data.extend(
                {
                    "id": r.version,
                    "object": "model",
                    "created": created,
                    "owned_by": "flywheel",
                    "parent": alias,
                    "weight": r.weight,
                }
                for r in versions
                if r.version != alias
            )
        return {"object": "list", "data": data}

    def alias_of(self, version: str) -> str:
        for alias in self.aliases:
            if any(r.version == version for r in self.versions(alias)):
                return alias
        return self.aliases[0]
