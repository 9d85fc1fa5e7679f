"""Operators' transitions, run at once: promote a version, or roll back (a running canary, else the last release).

Both supersede a running rollout (`deployer.py`'s transitions: one Redis transaction, a Deployment event
saying why, replaced adapters unloaded once drained). Used by `flywheel models promote|rollback` and by
`flywheel up`, which routes the first version.
"""

from __future__ import annotations

import json
import uuid

from inference.adapters import AdapterLoadError, ready_workers
from inference.controller.deployer import Deployer
from inference.keys import ADAPTERS_KEY, PATHS_KEY, RELEASES_KEY


async def _path_of(d: Deployer, alias: str, version: str) -> str:
    path = await d.redis.hget(ADAPTERS_KEY, version)
    if path:
        return path
    path = await d.redis.hget(PATHS_KEY.format(alias=alias), version)
    if path:
        return path
    raise AdapterLoadError(version, "-", f"no path known (not in {ADAPTERS_KEY} nor rolled out on {alias})")


async def promote_now(d: Deployer, alias: str, version: str, reason: str = "operator", path: str | None = None) -> None:
    """Route all of `alias` to `version` now (loading it first if needed); supersedes a running rollout.

    `path`: the adapter directory of a version the controller has never rolled out (e.g. the first one)."""
    if path:
        await d.redis.hset(PATHS_KEY.format(alias=alias), version, path)
    active = await d.record(alias)
    current = active.get("current") or await d.current_version(alias)
    rec = {
        "id": uuid.uuid4().hex,
        "phase": "loading",
        "current": current,
        "canary": version,
        "path": "",
        "job_id": "",
        "weight": "0",
        "retire": "[]",
    }
    if d.is_adapter(version):
        rec["path"] = await _path_of(d, alias, version)
        await d.redis.hset(ADAPTERS_KEY, version, rec["path"])
        await d.admin.load(version, rec["path"], await ready_workers(d.redis))
    await d.transition(alias, None, None, rec, None)  # supersedes the running rollout, if any
    await d.promote(alias, rec, f"{reason}: promoted by hand")


async def roll_back_now(d: Deployer, alias: str, reason: str = "operator") -> str:
    """Roll back now: a running canary to its current version, else to the previous release.

    Returns the version now serving."""
    active = await d.record(alias)
    if active and active.get("phase") in ("loading", "canary"):
        rec = {**active, "id": uuid.uuid4().hex}
        await d.transition(alias, None, None, rec, None)
        await d.rollback(alias, rec, f"{reason}: rolled back by hand")
        return rec["current"]
    serving = await d.current_version(alias)
    raw_releases = await d.redis.lrange(RELEASES_KEY.format(alias=alias), 0, -1)
    releases = [json.loads(r) for r in raw_releases]
    older = [r for r in releases if r["version"] != serving]
    target = older[0] if older else {"version": d.settings.served_model_name, "path": ""}
    if d.is_adapter(target["version"]):
        await d.redis.hset(ADAPTERS_KEY, target["version"], target["path"])
        await d.admin.load(target["version"], target["path"], await ready_workers(d.redis))
    # The serving version is the "canary" being rolled back; the target becomes current.
    rec = {
        "id": uuid.uuid4().hex,
        "phase": "canary",
        "current": target["version"],
        "canary": serving,
        "path": "",
        "job_id": "",
        "weight": "100",
        "retire": "[]",
    }
    await d.transition(alias, None, None, rec, None)
    await d.rollback(alias, rec, f"{reason}: rolled back by hand to {target['version']}")
    # The rolled-back release leaves the list so that a second rollback goes one further back.
    for raw, release in zip(raw_releases, releases, strict=True):
        if release["version"] == serving:
            await d.redis.lrem(RELEASES_KEY.format(alias=alias), 0, raw)
    return target["version"]
