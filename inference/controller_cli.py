"""Operators' commands for deployments: `promote VERSION` and `rollback`, immediately.

They run the controller's own transitions (inference/deployer.py): the routes change in one Redis
transaction that supersedes a running canary, a Deployment event says why, and replaced adapters are
unloaded once drained. Exported as the click group `deploy_group` for the `flywheel` CLI.

Example:
    flywheel deploy promote support@v3 --alias support
    flywheel deploy rollback --alias support
"""

from __future__ import annotations

import asyncio

import click
from redis.asyncio import Redis

from inference.adapters import AdapterAdmin, AdapterLoadError
from inference.controller import kafka_publisher
from inference.controller_settings import ControllerSettings
from inference.deployer import Deployer


async def with_deployer(fn):
    """Run `fn(deployer)` with a Deployer on this process's settings, closing its clients after."""
    settings = ControllerSettings()
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    admin = AdapterAdmin(settings.adapter_timeout_s)
    producer, publish = kafka_publisher(settings)
    try:
        return await fn(Deployer(settings, redis, admin, publish))
    finally:
        producer.close(strict=False)
        await admin.aclose()
        await redis.aclose()


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
        asyncio.run(with_deployer(lambda d: d.operator_promote(alias, version, reason)))
    except AdapterLoadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{alias}: {version} at 100%")


@deploy_group.command("rollback")
@click.option("--alias", default="support", show_default=True, help="model alias")
@click.option("--reason", default="operator", show_default=True, help="recorded in the Deployment event")
def rollback_command(alias: str, reason: str) -> None:
    """Stop a running canary, or go back to the previous release."""
    try:
        serving = asyncio.run(with_deployer(lambda d: d.operator_rollback(alias, reason)))
    except AdapterLoadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{alias}: {serving} at 100%")
