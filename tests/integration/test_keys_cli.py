"""`flywheel keys create|list|revoke` on the stack's Redis: a key works at once with its scopes, is listed without
its secret, and stops verifying once revoked."""

from __future__ import annotations

import asyncio

import pytest
from click.testing import CliRunner
from redis.asyncio import Redis

from deploy.cli import main
from inference.gateway.auth import ApiKeyStore
from tests.conftest import settings_env

pytestmark = pytest.mark.integration


def verify(redis_url: str, plaintext: str):
    async def go():
        redis = Redis.from_url(redis_url)
        try:
            return await ApiKeyStore(redis, cache_ttl_s=0).verify(plaintext)
        finally:
            await redis.aclose()

    return asyncio.run(go())


def test_create_list_revoke(stack):
    env = settings_env(stack)
    created = CliRunner().invoke(main, ["keys", "create", "shop-app", "--scope", "chat", "--scope", "act_as"], env=env)
    assert created.exit_code == 0, created.output
    plaintext = created.stdout.strip()
    key = verify(stack.redis_dsn, plaintext)
    assert key.name == "shop-app" and key.scopes == {"chat", "act_as"} and key.rate_per_minute == 600
    assert key.tokens_per_minute == 100_000
    unlimited = CliRunner().invoke(main, ["keys", "create", "batch", "--rate", "60", "--tokens", "0"], env=env)
    assert unlimited.exit_code == 0 and "no token limit" in unlimited.stderr, unlimited.output
    batch = verify(stack.redis_dsn, unlimited.stdout.strip())
    assert (batch.rate_per_minute, batch.tokens_per_minute) == (60, 0)
    listed = CliRunner().invoke(main, ["keys", "list"], env=env)
    assert listed.exit_code == 0 and key.key_id in listed.stdout and "shop-app" in listed.stdout
    assert plaintext not in listed.stdout
    bad = CliRunner().invoke(main, ["keys", "create", "x", "--scope", "root"], env=env)
    assert bad.exit_code == 2 and "root" in bad.output
    revoked = CliRunner().invoke(main, ["keys", "revoke", key.key_id], env=env)
    assert revoked.exit_code == 0, revoked.output
    assert verify(stack.redis_dsn, plaintext) is None
    again = CliRunner().invoke(main, ["keys", "revoke", key.key_id], env=env)
    assert again.exit_code == 1 and "no key" in again.output
