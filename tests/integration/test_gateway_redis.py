"""Auth, rate limits and sessions against a real redis-server (the `stack` fixture's), in a private db.

The tests use database 7 of the stack's Redis and flush it around each test, so they neither see nor
disturb the keys other tests keep in database 0.
"""

import asyncio
import os
import stat

import pytest
from redis.asyncio import Redis

from inference.gateway.auth import DEV_KEY_NAME, ApiKeyStore, ensure_dev_key, hash_key
from inference.gateway.ratelimit import Decision, RateLimiter
from inference.gateway.sessions import (
    ACTIVE_KEY,
    HISTORY_KEY,
    InvalidId,
    SessionNotOwned,
    SessionStore,
    parse_history,
    parse_session,
)
from inference.keys import APIKEYS_KEY, RATELIMIT_KEY

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

TEST_DB = 7
LIMITS = (6000, 600_000)  # the dev key's requests and tokens per minute


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def redis(redis_url):
    client = Redis.from_url(redis_url.rsplit("/", 1)[0] + f"/{TEST_DB}")
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


async def calls(redis: Redis, command: str) -> int:
    """How many times the server has run `command` (INFO commandstats)."""
    stats = await redis.info("commandstats")
    return stats.get(f"cmdstat_{command}", {}).get("calls", 0)


# --- API keys ---------------------------------------------------------------------------------------


async def test_create_verify_list(redis):
    store = ApiKeyStore(redis)
    plaintext, key = await store.create("ci", {"chat"}, rate_per_minute=60)
    assert plaintext.startswith("fw-") and len(plaintext) == 43
    assert key.key_id == hash_key(plaintext)[:12]
    assert await store.verify(plaintext) == key
    assert await ApiKeyStore(redis).verify(plaintext) == key  # another process, cold cache
    assert await store.verify("fw-" + "x" * 40) is None
    assert await store.verify("not-a-key") is None
    assert await store.verify(None) is None
    await store.create("admin", {"chat", "admin"}, rate_per_minute=10)
    assert [k.name for k in await store.list()] == ["admin", "ci"]


@pytest.mark.parametrize(("name", "scopes", "rate"), [("", {"chat"}, 1), ("x", set(), 1), ("x", {"chat"}, 0)])
async def test_create_refuses_bad_keys(redis, name, scopes, rate):
    with pytest.raises(ValueError):
        await ApiKeyStore(redis).create(name, scopes, rate)


async def test_keys_are_hashed_at_rest(redis):
    plaintext, _ = await ApiKeyStore(redis).create("ci", {"chat"}, rate_per_minute=60)
    dump = []
    async for k in redis.scan_iter():
        dump.append(k)
        if await redis.type(k) == b"hash":
            for field, value in (await redis.hgetall(k)).items():
                dump += [field, value]
    blob = b"".join(dump)
    assert plaintext.encode() not in blob
    assert plaintext[3:].encode() not in blob
    assert hash_key(plaintext).encode() in blob


async def test_hot_key_costs_no_round_trip_and_cold_lookups_are_shared(redis):
    store = ApiKeyStore(redis)
    plaintext, key = await store.create("ci", {"chat"}, rate_per_minute=60)
    before = await calls(redis, "hget")
    results = await asyncio.gather(*(store.verify(plaintext) for _ in range(50)))
    for _ in range(100):
        assert await store.verify(plaintext) == key
    assert all(r == key for r in results)
    assert await calls(redis, "hget") - before == 1


async def test_revoke_is_immediate_locally_and_bounded_by_the_ttl_elsewhere(redis):
    admin = ApiKeyStore(redis, cache_ttl_s=0.5)
    other = ApiKeyStore(redis, cache_ttl_s=0.5)  # a second gateway process
    plaintext, key = await admin.create("ci", {"chat"}, rate_per_minute=60)
    assert await admin.verify(plaintext) == key
    assert await other.verify(plaintext) == key
    assert await admin.revoke(key.key_id) is True
    assert await admin.verify(plaintext) is None
    assert await redis.hlen(APIKEYS_KEY) == 0
    await asyncio.sleep(0.6)
    assert await other.verify(plaintext) is None
    assert await admin.revoke(key.key_id) is False
    assert await admin.revoke("not-hex") is False
    assert await admin.list() == []


async def test_ensure_dev_key_creates_reuses_and_replaces(redis, tmp_path):
    store = ApiKeyStore(redis)
    path = tmp_path / "data" / "dev-api-key"
    first = await ensure_dev_key(store, path, *LIMITS)
    assert path.read_text().strip() == first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = await store.verify(first)
    assert key.name == DEV_KEY_NAME and key.scopes == {"chat", "admin", "act_as"}
    assert await ensure_dev_key(store, path, *LIMITS) == first
    await store.revoke(key.key_id)
    second = await ensure_dev_key(store, path, *LIMITS)
    assert second != first and await store.verify(second) is not None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # a dev key made before a scope existed is replaced (and revoked) by one with every scope
    old_plaintext, old = await store.create(DEV_KEY_NAME, {"chat", "admin"}, rate_per_minute=10)
    path.write_text(old_plaintext + "\n")
    third = await ensure_dev_key(store, path, *LIMITS)
    assert third != old_plaintext and (await store.verify(third)).scopes == {"chat", "admin", "act_as"}
    assert await store.verify(old_plaintext) is None
    # new limits (FLYWHEEL_GATEWAY_DEV_KEY_*): a new key with them
    fourth = await ensure_dev_key(store, path, 60, 0)
    key = await store.verify(fourth)
    assert fourth != third and (key.rate_per_minute, key.tokens_per_minute) == (60, 0)
    assert await store.verify(third) is None


async def test_a_token_limit_admits_until_the_answers_tokens_overdraw_it(redis):
    limiter = RateLimiter(redis, period_s=1.0)
    pipe = redis.pipeline(transaction=False)
    limiter.queue_check(pipe, "tok", 100)
    (fresh,) = await pipe.execute()
    assert Decision.from_reply(fresh).allowed
    assert await redis.get(RATELIMIT_KEY.format(key_id="tok")) is None  # a check counts nothing
    charged = await limiter.charge("tok", 100, 80)
    assert charged.allowed and charged.remaining == 20
    pipe = redis.pipeline(transaction=False)
    limiter.queue_check(pipe, "tok", 100)
    (after_80,) = await pipe.execute()
    assert Decision.from_reply(after_80).allowed  # 20 tokens left: the next answer may start
    overdrawn = await limiter.charge("tok", 100, 70)  # it used 70: 50 past the limit, counted anyway
    assert overdrawn.allowed and overdrawn.remaining == 0
    pipe = redis.pipeline(transaction=False)
    limiter.queue_check(pipe, "tok", 100)
    (refused,) = await pipe.execute()
    refused = Decision.from_reply(refused)
    assert not refused.allowed and 0.3 < refused.retry_after_s <= 0.5  # 50 tokens at 100/s to pay back
    await asyncio.sleep(refused.retry_after_s + 0.05)
    pipe = redis.pipeline(transaction=False)
    limiter.queue_check(pipe, "tok", 100)
    (again,) = await pipe.execute()
    assert Decision.from_reply(again).allowed


# --- rate limits ------------------------------------------------------------------------------------


async def test_rate_limit_allows_the_limit_then_refuses_then_recovers(redis):
    limiter = RateLimiter(redis, period_s=1.0)
    decisions = [await limiter.hit("k1", 5) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True] * 5
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    refused = await limiter.hit("k1", 5)
    assert not refused.allowed
    assert 0 < refused.retry_after_s <= 0.2
    assert refused.retry_after_header == "1"
    assert (await limiter.hit("k2", 5)).allowed  # keys are independent
    assert 0 < await redis.pttl(RATELIMIT_KEY.format(key_id="k1")) <= 1000
    await asyncio.sleep(refused.retry_after_s + 0.02)
    assert (await limiter.hit("k1", 5)).allowed  # one interval later, one more request
    assert not (await limiter.hit("k1", 5)).allowed
    await asyncio.sleep(1.05)
    recovered = await limiter.hit("k1", 5)
    assert recovered.allowed and recovered.remaining == 4


async def test_rate_limit_burst_of_a_limit_that_does_not_divide_the_period(redis):
    limiter = RateLimiter(redis, period_s=1.0)
    assert [(await limiter.hit("k", 3)).allowed for _ in range(4)] == [True, True, True, False]


async def test_rate_limit_refuses_a_nonpositive_limit(redis):
    with pytest.raises(ValueError):
        await RateLimiter(redis).hit("k", 0)


async def test_rate_limit_and_history_share_one_pipeline(redis):
    limiter, sessions = RateLimiter(redis), SessionStore(redis)
    await sessions.record_turn("s1", "u1", "m1", "hi", "hello")
    before = [await calls(redis, c) for c in ("eval", "script", "script|exists")]
    pipe = redis.pipeline(transaction=False)
    limiter.queue(pipe, "k", 60)
    sessions.queue_history(pipe, "s1")
    rate_reply, history_reply = await pipe.execute()
    assert Decision.from_reply(rate_reply) == Decision(True, 59, 0.0)
    assert parse_history(history_reply) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    after = [await calls(redis, c) for c in ("eval", "script", "script|exists")]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 0, 0]  # no SCRIPT EXISTS round trip


@pytest.mark.parametrize(
    ("retry_after_s", "header"), [(0.001, "1"), (0.999, "1"), (1.0, "1"), (1.2, "2"), (59.5, "60")]
)
def test_retry_after_header_is_whole_seconds_at_least_one(retry_after_s, header):
    assert Decision(False, 0, retry_after_s).retry_after_header == header


# --- sessions ---------------------------------------------------------------------------------------


async def test_history_is_trimmed_to_ten_turns_and_expires(redis):
    sessions = SessionStore(redis)
    for i in range(12):
        await sessions.record_turn("s1", "u1", f"m{i}", f"q{i}", f"a{i}")
    history = await sessions.history("s1")
    assert len(history) == 20
    assert history[0] == {"role": "user", "content": "q2"}
    assert history[-1] == {"role": "assistant", "content": "a11"}
    assert 0 < await redis.ttl(HISTORY_KEY.format(session_id="s1")) <= 3600
    assert await sessions.history("unknown") == []


async def test_history_and_activity_lapse_after_the_ttl(redis):
    sessions = SessionStore(redis, ttl_s=1)
    await sessions.record_turn("s1", "u1", "m1", "q", "a")
    assert await sessions.active_count() == 1
    await asyncio.sleep(1.1)
    assert await sessions.history("s1") == []
    assert await sessions.active_count() == 0
    assert await redis.zcard(ACTIVE_KEY) == 0


async def test_message_ownership(redis):
    sessions = SessionStore(redis)
    await sessions.record_turn("s1", "alice", "chatcmpl-1", "q", "a")
    await sessions.remember_message("chatcmpl-2", "bob", None)
    assert await sessions.message_owner("chatcmpl-1") == ("alice", "s1")
    assert await sessions.message_owner("chatcmpl-2") == ("bob", None)
    assert await sessions.message_owner("chatcmpl-3") is None
    assert await sessions.message_owner("bad id*") is None
    assert 0 < await redis.ttl("flywheel:msg:chatcmpl-1") <= 86_400


async def test_delete_and_active_count(redis):
    sessions = SessionStore(redis)
    for sid in ("s1", "s2", "s3"):
        await sessions.record_turn(sid, "u1", f"m-{sid}", "q", "a")
    await sessions.record_turn("s1", "u1", "m-again", "q", "a")
    assert await sessions.active_count() == 3
    assert await sessions.delete("s2") is True
    assert await sessions.history("s2") == []
    assert await sessions.delete("s2") is False
    assert await sessions.active_count() == 2
    assert await sessions.message_owner("m-s2") == ("u1", "s2")  # feedback on a deleted session still checks
    await redis.zadd(ACTIVE_KEY, {"stale": 0})  # a session last seen long ago
    assert await sessions.active_count() == 2


async def test_session_owner_is_recorded_with_the_turn_and_checked(redis):
    sessions = SessionStore(redis)
    await sessions.record_turn("s1", "alice", "m1", "q", "a")
    pipe = redis.pipeline(transaction=False)
    sessions.queue_session(pipe, "s1")
    sessions.queue_session(pipe, "new")
    history, owner, new_history, new_owner = await pipe.execute()
    assert parse_session(history, owner, "s1", "alice") == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    assert parse_session(new_history, new_owner, "new", "bob") == []  # a new session is anyone's
    with pytest.raises(SessionNotOwned):
        parse_session(history, owner, "s1", "bob")
    with pytest.raises(SessionNotOwned):  # the write checks again, atomically, and writes nothing
        await sessions.record_turn("s1", "bob", "m2", "q2", "a2")
    assert len(await sessions.history("s1")) == 2
    assert await sessions.message_owner("m2") is None
    with pytest.raises(SessionNotOwned):
        await sessions.delete("s1", "bob")
    assert await sessions.delete("s1", "alice") is True
    await sessions.record_turn("s1", "bob", "m3", "q", "a")  # deleted: the id is free again
    assert await sessions.delete("s1") is True  # no user: an operator's delete


async def test_bad_session_ids_never_reach_redis(redis):
    sessions = SessionStore(redis)
    for call in (sessions.history("a*"), sessions.delete("a:b"), sessions.record_turn("a b", "u", "m", "q", "a")):
        with pytest.raises(InvalidId):
            await call
    with pytest.raises(InvalidId):
        await sessions.record_turn("s1", "u", "bad id", "q", "a")
    assert await redis.dbsize() == 0


# --- worker discovery -----------------------------------------------------------------------------------


async def test_worker_records_on_other_hosts_are_ignored(redis):
    import json

    from inference.gateway.router import RouteTable, WorkerPool
    from inference.gateway.settings import GatewaySettings
    from inference.gateway.upstream import Refresher
    from inference.keys import worker_key

    record = {"ready": True, "adapters": [], "model": "tiny"}
    await redis.set(worker_key(0), json.dumps({**record, "url": "http://127.0.0.1:8000"}))
    await redis.set(worker_key(1), json.dumps({**record, "url": "http://evil.example:8000"}))
    settings = GatewaySettings(gateway_upstreams=[])
    refresher = Refresher(settings, redis, WorkerPool(1, 5.0), RouteTable(("support",), "tiny"))
    await refresher.refresh_once()
    assert set(refresher.discovered) == {"http://127.0.0.1:8000"}
    allowed = GatewaySettings(gateway_upstreams=[], gateway_worker_hosts="127.0.0.1,evil.example")
    refresher = Refresher(allowed, redis, WorkerPool(1, 5.0), RouteTable(("support",), "tiny"))
    await refresher.refresh_once()
    assert set(refresher.discovered) == {"http://127.0.0.1:8000", "http://evil.example:8000"}
