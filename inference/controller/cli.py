"""Operators' commands for deployments: `promote VERSION` and `rollback`, immediately; and what is live now.

They run the controller's own transitions (`operator.py` over `deployer.py`, beside this module): the routes
change in one Redis transaction that supersedes a running canary, a Deployment event says why, and replaced adapters are
unloaded once drained. The `flywheel` CLI adds the commands of `deploy_group` to `flywheel models`.

Example:
    flywheel models promote support@v3 --alias support
    flywheel models rollback --alias support
"""

from __future__ import annotations

import asyncio
import time

import click
import redis as sync_redis
from redis.asyncio import Redis

from inference.adapters import AdapterAdmin, AdapterLoadError
from inference.controller.deployer import Deployer
from inference.controller.operator import promote_now, roll_back_now
from inference.controller.service import kafka_publisher
from inference.controller.settings import ControllerSettings
from inference.keys import ROLLOUT_KEY, ROUTES_KEY


async def with_deployer(fn):
    """Run `fn(deployer)` with a Deployer on this process's settings, closing its clients after."""
    settings = ControllerSettings()
    redis = Redis.from_url(settings.redis_dsn, decode_responses=True)
    admin = AdapterAdmin(settings.adapter_timeout_s, token=settings.worker_token())
    producer, publish = kafka_publisher(settings)
    try:
        return await fn(Deployer(settings, redis, admin, publish))
    finally:
        producer.close(strict=False)
        await admin.aclose()
        await redis.aclose()


def live_state(redis_url: str, alias: str) -> dict:
    """The alias's routes (version -> weight) and its running rollout, if any, read from Redis.

    The rollout has its phase, canary, current, weight, age in seconds and, while a step holds, `waiting`: what
    the decision waits for, with the counts (e.g. "evidence: thumbs-down 3/12 ...")."""
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
    try:
        routes = {v: int(w) for v, w in client.hgetall(ROUTES_KEY.format(alias=alias)).items()}
        rec = client.hgetall(ROLLOUT_KEY.format(alias=alias))
    finally:
        client.close()
    state: dict = {"alias": alias, "routes": dict(sorted(routes.items(), key=lambda kv: -kv[1]))}
    if rec:
        started = float(rec.get("started_at") or 0) or None
        state["rollout"] = {
            "phase": rec.get("phase"),
            "canary": rec.get("canary"),
            "current": rec.get("current"),
            "weight": int(rec["weight"]) if rec.get("weight") else None,
            "age_s": round(time.time() - started) if started else None,
            "waiting": rec.get("waiting"),
        }
    return state


def describe(state: dict) -> list[str]:
    """Lines for `flywheel status`: the routes, then the rollout and what it waits for."""
    routes = ", ".join(f"{v} {w}%" for v, w in state["routes"].items()) or "nothing routed (the base model)"
    lines = [f"{state['alias']}: {routes}"]
    r = state.get("rollout")
    if r:
        age = f", {r['age_s'] // 60} min {r['age_s'] % 60} s since the canary started" if r["age_s"] else ""
        lines.append(f"rollout of {r['canary']} ({r['phase']}, at {r['weight']}%{age})")
        if r["waiting"]:
            lines.append(f"  holding: {r['waiting']}")
    return lines


@click.group("deploy")
def deploy_group() -> None:
    """Promote or roll back model versions by hand (same transitions as the hot-swap controller)."""


@deploy_group.command("promote")
@click.argument("version")
@click.option("--alias", default="support", show_default=True, help="model alias")
@click.option("--reason", default="operator", show_default=True, help="recorded in the Deployment event")
def promote_command(version: str, alias: str, reason: str) -> None:
    """Route all of ALIAS to VERSION now (loads and verifies it on every worker first)."""
    try:
        asyncio.run(with_deployer(lambda d: promote_now(d, alias, version, reason)))
    except AdapterLoadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{alias}: {version} at 100%")


@deploy_group.command("rollback")
@click.option("--alias", default="support", show_default=True, help="model alias")
@click.option("--reason", default="operator", show_default=True, help="recorded in the Deployment event")
def rollback_command(alias: str, reason: str) -> None:
    """Stop a running canary, or go back to the previous release."""
    try:
        serving = asyncio.run(with_deployer(lambda d: roll_back_now(d, alias, reason)))
    except AdapterLoadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{alias}: {serving} at 100%")
