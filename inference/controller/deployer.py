"""The transitions of a deployment: load, canary steps, promote, roll back, drain and unload.

Used by the controller service (`service.py`) and by the operators' transitions (`operator.py`), so a promotion
by hand does exactly what an automatic promotion does. The decisions themselves are the pure `rollout.first_weight`
(the canary's first weight, from the alias's recent traffic rate) and `rollout.decide` (at every poll, on the
figures since the canary started and the canary's responses since its step started).

Redis: the rollout keys of inference/keys.py (described there).

Every route change is one MULTI/EXEC with the rollout record (WATCHed, so an operator's transition
supersedes a running rollout instead of racing it), and carries the Deployment event to publish in
`pending`; the event is published after EXEC and `pending` cleared, so a crash in between publishes
it again on resume (same event_id: consumers may deduplicate). A canary that holds past its step's time
announces a `hold` event (no route change) whenever what it waits for changes, e.g. from "step samples"
to "evidence: thumbs-down"; its reason has the counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import WatchError

from inference.adapters import AdapterAdmin, AdapterLoadError, ready_workers, wait_advertised
from inference.controller.canary_metrics import MetricsSource
from inference.controller.rollout import Outcome, Policy, decide, first_weight, next_weight, resume_action, step_routes
from inference.controller.settings import ControllerSettings
from inference.keys import ADAPTERS_KEY, DONE_KEY, PATHS_KEY, RELEASES_KEY, ROLLOUT_KEY, ROUTES_KEY
from schemas.events import Deployment

log = logging.getLogger(__name__)

PRODUCER_NAME = "hotswap-controller"
# Longest wait for the workers' readiness records to list a freshly loaded adapter (a few heartbeats).
ADVERTISE_TIMEOUT_S = 15.0

Publish = Callable[[Deployment], None]
# Holds not announced: every step waits for its time, which its `step` event already says.
QUIET_HOLDS = frozenset({"step time"})


class Superseded(Exception):
    """The rollout record changed under us (an operator's promote/rollback): stop this rollout."""


def _routes_of(raw: dict) -> dict[str, int]:
    return {v: int(w) for v, w in raw.items() if int(w) > 0}


class Deployer:
    def __init__(
        self,
        settings: ControllerSettings,
        redis: Redis,
        admin: AdapterAdmin,
        publish: Publish,
        metrics: MetricsSource | None = None,
        policy: Policy | None = None,
    ):
        self.settings = settings
        self.redis = redis  # decode_responses=True
        self.admin = admin
        self.publish = publish
        self.metrics = metrics
        self.policy = policy or settings.policy()

    # --- reading state -----------------------------------------------------------------------------

    async def routes(self, alias: str) -> dict[str, int]:
        return _routes_of(await self.redis.hgetall(ROUTES_KEY.format(alias=alias)))

    async def current_version(self, alias: str) -> str:
        """The version serving most of the alias's traffic; the base model when nothing is routed."""
        routes = await self.routes(alias)
        if not routes:
            return self.settings.served_model_name
        return max(sorted(routes), key=lambda v: routes[v])

    async def record(self, alias: str) -> dict[str, str]:
        return await self.redis.hgetall(ROLLOUT_KEY.format(alias=alias))

    def is_adapter(self, version: str) -> bool:
        return version != self.settings.served_model_name

    async def recent_rate(self, alias: str) -> float | None:
        """Responses/s of the alias's routed versions over the last `canary_rate_window_s`; None if unknown."""
        if self.metrics is None:
            return None
        window = self.settings.canary_rate_window_s
        versions = sorted(await self.routes(alias)) or [await self.current_version(alias)]
        try:
            figures = await asyncio.to_thread(
                self.metrics, alias, versions, datetime.now(UTC) - timedelta(seconds=window)
            )
        except Exception as exc:  # the store may be down: start at the plan's first weight
            log.warning("traffic rate unknown", extra={"alias": alias, "error": repr(exc)})
            return None
        return sum(f.responses for f in figures.values()) / window

    # --- transitions ---------------------------------------------------------------------------------

    async def transition(
        self,
        alias: str,
        expect_id: str | None,
        routes: dict[str, int] | None,
        record: dict[str, str] | None,
        event: Deployment | None,
    ) -> None:
        """Atomically: check the rollout id, replace the routes and the record; then publish `event`."""
        rkey = ROLLOUT_KEY.format(alias=alias)
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(rkey)
                if expect_id is not None and await pipe.hget(rkey, "id") != expect_id:
                    raise Superseded(f"rollout {expect_id} of {alias} was superseded")
                pipe.multi()
                if routes is not None:
                    pipe.delete(ROUTES_KEY.format(alias=alias))
                    pipe.hset(ROUTES_KEY.format(alias=alias), mapping=routes)
                if record is not None:
                    pipe.delete(rkey)
                    fields = dict(record)
                    if event is not None:
                        fields["pending"] = event.model_dump_json()
                    pipe.hset(rkey, mapping=fields)
                await pipe.execute()
            except WatchError:
                raise Superseded(f"rollout {expect_id} of {alias} was superseded") from None
        if event is not None:
            await self.announce(alias, event)

    async def announce(self, alias: str, event: Deployment) -> None:
        """Publish a transition's event, then forget it (control path: a failed publish raises)."""
        await asyncio.to_thread(self.publish, event)
        rkey = ROLLOUT_KEY.format(alias=alias)
        pending = await self.redis.hget(rkey, "pending")
        if pending and json.loads(pending).get("event_id") == str(event.event_id):
            await self.redis.hdel(rkey, "pending")
        log.info(
            "deployment %s",
            event.action,
            extra={
                "alias": alias,
                "version": event.version,
                "weight": event.weight,
                "reason": event.reason,
                "event_id": str(event.event_id),
            },
        )

    def _event(
        self,
        alias: str,
        action: str,
        version: str,
        previous: str | None,
        weight: int | None,
        reason: str,
        rec: dict[str, str] | None = None,
    ) -> Deployment:
        rec = rec or {}
        return Deployment(
            alias=alias,
            action=action,
            version=version,
            previous_version=previous,
            weight=weight,
            reason=reason,
            adapter_path=rec.get("path") or None,
            job_id=rec.get("job_id") or None,
            producer=PRODUCER_NAME,
        )

    async def begin(self, ready: Deployment) -> dict[str, str] | None:
        """Record a new rollout for an adapter_ready event; None when it is a redelivery."""
        alias, version = ready.alias, ready.version
        if await self.redis.hexists(DONE_KEY.format(alias=alias), version):
            log.info("adapter already rolled out; skipped", extra={"alias": alias, "version": version})
            return None
        current = await self.current_version(alias)
        if current == version:
            log.info("adapter already serving; skipped", extra={"alias": alias, "version": version})
            return None
        rec = {
            "id": uuid.uuid4().hex,
            "phase": "loading",
            "current": current,
            "canary": version,
            "path": ready.adapter_path or "",
            "job_id": ready.job_id or "",
            "weight": "0",
            "retire": "[]",
        }
        await self.transition(alias, None, None, rec, None)
        if ready.adapter_path:
            await self.redis.hset(PATHS_KEY.format(alias=alias), version, ready.adapter_path)
        return rec

    async def load(self, alias: str, rec: dict[str, str]) -> bool:
        """Register, load and verify the canary everywhere, then route its first weight. False: rolled back."""
        version, path = rec["canary"], rec["path"]
        # Registered first: a worker that restarts from now on loads it before it says ready.
        await self.redis.hset(ADAPTERS_KEY, version, path)
        try:
            workers = await ready_workers(self.redis)
            await self.admin.load(version, path, workers)
            await wait_advertised(self.redis, version, workers, ADVERTISE_TIMEOUT_S)
            await asyncio.sleep(self.settings.route_propagation_s)  # for the gateways to re-read the records
        except AdapterLoadError as exc:
            await self.rollback(alias, rec, f"adapter failed to load: {exc}")
            return False
        rate = await self.recent_rate(alias)
        p = self.policy
        weight = first_weight(p.plan, rate, p.min_canary_rate, p.max_first_weight)
        traffic = "unknown" if rate is None else f"{rate:.2f}/s"
        rec = {**rec, "phase": "canary", "weight": str(weight), "started_at": f"{time.time():.3f}"}
        event = self._event(
            alias,
            "canary_started",
            version,
            rec["current"],
            weight,
            f"loaded and verified on every ready worker; canary at {weight}% (alias traffic "
            f"{traffic} over {self.settings.canary_rate_window_s:.0f} s)",
            rec,
        )
        await self.transition(alias, rec["id"], step_routes(rec["current"], version, weight), rec, event)
        await self._catch_up(version, path)
        return True

    async def _catch_up(self, version: str, path: str) -> None:
        """Load on workers that became ready since (they load routed adapters themselves too)."""
        try:
            workers = await ready_workers(self.redis)
            missing = [w for w in workers if version not in await self.admin.loaded(w)]
            if missing:
                await self.admin.load(version, path, missing)
        except Exception as exc:  # the worker's own heartbeat loads it; not a reason to stop
            log.warning("catch-up load failed", extra={"version": version, "error": repr(exc)})

    async def run_canary(self, alias: str, rec: dict[str, str]) -> Outcome:
        """Step through the plan from the recorded weight until promotion or rollback.

        Every poll reads the figures of both versions since the canary started (the evidence accumulates
        across steps and restarts) and the canary's responses since its step started."""
        assert self.metrics is not None, "a canary needs a metrics source"
        current, canary = rec["current"], rec["canary"]
        weight = int(rec["weight"])
        started = datetime.fromtimestamp(float(rec.get("started_at") or time.time()), UTC)
        while True:
            step_started, t0 = datetime.now(UTC), time.monotonic()
            announced = None  # the category of the last hold announced in this step
            while True:
                await asyncio.sleep(self.settings.canary_poll_s)
                if (await self.redis.hget(ROLLOUT_KEY.format(alias=alias), "id")) != rec["id"]:
                    raise Superseded(f"rollout {rec['id']} of {alias} was superseded")
                figures = await asyncio.to_thread(self.metrics, alias, [canary, current], started)
                step = await asyncio.to_thread(self.metrics, alias, [canary], step_started)
                d = decide(
                    figures[canary],
                    figures[current],
                    self.policy,
                    step_elapsed_s=time.monotonic() - t0,
                    total_elapsed_s=(datetime.now(UTC) - started).total_seconds(),
                    step_responses=step[canary].responses,
                )
                if d.outcome is not Outcome.HOLD:
                    break
                log.info("canary hold", extra={"alias": alias, "version": canary, "weight": weight, "reason": d.reason})
                # What the rollout waits for, for `flywheel status` and `models show` (a step rewrites the record).
                await self.redis.hset(ROLLOUT_KEY.format(alias=alias), "waiting", d.reason)
                if d.category != announced and d.category not in QUIET_HOLDS:
                    announced = d.category
                    await self._announce_hold(alias, self._event(alias, "hold", canary, current, weight, d.reason, rec))
            if d.outcome is Outcome.ROLLBACK:
                await self.rollback(alias, rec, f"{d.reason} (at {weight}%)")
                return Outcome.ROLLBACK
            weight = next_weight(self.policy.plan, weight)
            if weight >= 100:
                await self.promote(alias, rec, d.reason)
                return Outcome.ADVANCE
            rec = {**rec, "weight": str(weight)}
            event = self._event(alias, "step", canary, current, weight, d.reason, rec)
            await self.transition(alias, rec["id"], step_routes(current, canary, weight), rec, event)

    async def _announce_hold(self, alias: str, event: Deployment) -> None:
        """Publish a hold: information only, so a failed publish is logged and the canary goes on."""
        try:
            await self.announce(alias, event)
        except Exception as exc:
            log.warning(
                "hold event not published", extra={"alias": alias, "version": event.version, "error": repr(exc)}
            )

    async def promote(self, alias: str, rec: dict[str, str], reason: str) -> None:
        """Route everything to the canary; retire the other routed adapters once drained."""
        canary = rec["canary"]
        routed = await self.routes(alias)
        retire = sorted(v for v in routed if v != canary and self.is_adapter(v))
        done = {**rec, "phase": "finishing", "weight": "100", "outcome": "promoted", "retire": json.dumps(retire)}
        event = self._event(alias, "promoted", canary, rec["current"], 100, reason, rec)
        await self.transition(alias, rec["id"], {canary: 100}, done, event)
        await self.redis.lpush(RELEASES_KEY.format(alias=alias), json.dumps({"version": canary, "path": rec["path"]}))
        await self.finish(alias, done)

    async def rollback(self, alias: str, rec: dict[str, str], reason: str) -> None:
        """Route everything back to the current version; retire the canary once drained."""
        canary, current = rec["canary"], rec["current"]
        retire = [canary] if self.is_adapter(canary) else []
        done = {**rec, "phase": "finishing", "weight": "0", "outcome": "rolled_back", "retire": json.dumps(retire)}
        event = self._event(alias, "rolled_back", canary, current, 0, reason, rec)
        await self.transition(alias, rec["id"], {current: 100}, done, event)
        await self.finish(alias, done)

    async def finish(self, alias: str, rec: dict[str, str]) -> None:
        """After the final route change: wait for the gateways to see it, drain, unload, forget."""
        if rec.get("pending"):
            await self.announce(alias, Deployment.model_validate_json(rec["pending"]))
        retire = json.loads(rec.get("retire") or "[]")
        if retire:
            # No gateway routes a new request to a retired version after its next refresh.
            await asyncio.sleep(self.settings.route_propagation_s)
            workers = await ready_workers(self.redis)
            for version in retire:
                if version in await self.routes(alias):
                    continue  # routed again meanwhile (an operator's promote): keep it
                drained = await self.admin.wait_drained(version, workers, self.settings.drain_timeout_s)
                if not drained:
                    log.warning("unloading undrained adapter", extra={"alias": alias, "version": version})
                await self.admin.unload(version, workers)
                await self.redis.hdel(ADAPTERS_KEY, version)
        rkey = ROLLOUT_KEY.format(alias=alias)
        async with self.redis.pipeline(transaction=True) as pipe:
            if rec.get("outcome"):
                pipe.hset(DONE_KEY.format(alias=alias), rec["canary"], rec["outcome"])
            await pipe.execute()
        # Forget the record only if it is still ours (an operator may have started another).
        if await self.redis.hget(rkey, "id") == rec["id"]:
            await self.redis.delete(rkey)
        log.info(
            "rollout finished",
            extra={"alias": alias, "version": rec.get("canary"), "outcome": rec.get("outcome"), "retired": retire},
        )

    # --- the service's entry points ------------------------------------------------------------------

    async def run(self, alias: str, rec: dict[str, str]) -> None:
        """Carry a recorded rollout to its end from whatever phase it is in (a fresh one or a resumed one)."""
        if rec.get("pending"):
            await self.announce(alias, Deployment.model_validate_json(rec["pending"]))
            rec = {k: v for k, v in rec.items() if k != "pending"}
        if rec["phase"] == "finishing":
            await self.finish(alias, rec)
            return
        if rec["phase"] == "loading":
            if not await self.load(alias, rec):
                return
            rec = await self.record(alias)
        await self.run_canary(alias, rec)

    async def resume(self, alias: str) -> None:
        """Pick up the alias's recorded rollout after a restart (see rollout.resume_action)."""
        rec = await self.record(alias)
        if not rec:
            return
        action = resume_action(rec["phase"], await self.routes(alias), rec["current"], rec["canary"])
        log.warning(
            "resuming rollout: %s",
            action.reason,
            extra={"alias": alias, "version": rec["canary"], "action": action.action},
        )
        if action.action == "rollback":
            await self.rollback(alias, rec, f"controller restart: {action.reason}")
            return
        if action.action == "continue":
            try:  # the canary must still be loaded everywhere before it keeps its traffic
                await self.admin.verify(rec["canary"], await ready_workers(self.redis))
            except AdapterLoadError as exc:
                await self.rollback(alias, rec, f"controller restart: canary failed verification: {exc}")
                return
        await self.run(alias, rec)
