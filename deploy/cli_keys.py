"""`flywheel keys create|list|revoke`: the gateway's API keys, with their scopes and per-key limits (requests and
tokens per minute).

Scopes: `chat` (the chat, session and feedback routes), `admin` (router state), `act_as` (the key's holder may
name the end user of a request, with X-User-Id or the body's `user`: an application that signs its users in).
A key is shown once, when it is created; Redis keeps only its hash (inference/gateway/auth.py).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import click
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from inference.gateway.auth import ACT_AS, ApiKeyStore
from schemas.settings import CommonSettings

SCOPES = ("chat", "admin", ACT_AS)
console = Console()


def _run(settings: CommonSettings, action):
    async def go():
        redis = Redis.from_url(settings.redis_dsn)
        try:
            return await action(ApiKeyStore(redis))
        finally:
            await redis.aclose()

    return asyncio.run(go())


@click.group("keys")
def keys_group() -> None:
    """The gateway's API keys: create (shown once), list, revoke."""


@keys_group.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(SCOPES), default=("chat",), show_default=True)
@click.option("--rate", "rate_per_minute", type=click.IntRange(min=1), default=600, show_default=True)
@click.option(
    "--tokens",
    "tokens_per_minute",
    type=click.IntRange(min=0),
    default=100_000,
    show_default=True,
    help="Prompt + completion tokens per minute (0: no token limit).",
)
@click.pass_obj
def create_command(
    settings: CommonSettings, name: str, scopes: tuple[str, ...], rate_per_minute: int, tokens_per_minute: int
) -> None:
    """A new key NAME with its scopes, requests and tokens per minute; prints the key once."""
    plaintext, key = _run(settings, lambda store: store.create(name, scopes, rate_per_minute, tokens_per_minute))
    click.echo(plaintext)
    tokens = f"{tokens_per_minute} tokens/min" if tokens_per_minute else "no token limit"
    click.echo(
        f"key id {key.key_id}: {name}, scopes {','.join(sorted(key.scopes))}, {rate_per_minute}/min, {tokens}",
        err=True,
    )


@keys_group.command("list")
@click.pass_obj
def list_command(settings: CommonSettings) -> None:
    """Every key: id, name, scopes, rate limit, creation time (never the key itself)."""
    keys = _run(settings, lambda store: store.list())
    table = Table()
    for column in ("key id", "name", "scopes", "requests/min", "tokens/min", "created"):
        table.add_column(column, no_wrap=column == "key id")  # an id must stay copyable in a narrow terminal
    for k in keys:
        created = datetime.fromtimestamp(k.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        tokens = str(k.tokens_per_minute) if k.tokens_per_minute else "-"
        table.add_row(k.key_id, k.name, ",".join(sorted(k.scopes)), str(k.rate_per_minute), tokens, created)
    console.print(table)


@keys_group.command("revoke")
@click.argument("key_id")
@click.pass_obj
def revoke_command(settings: CommonSettings, key_id: str) -> None:
    """Revoke the key KEY_ID (as `list` shows it); gateways stop honouring it within seconds."""
    if not _run(settings, lambda store: store.revoke(key_id)):
        raise click.ClickException(f"no key with id {key_id!r}")
    click.echo(f"revoked {key_id}")
