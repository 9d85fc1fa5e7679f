"""API keys for the gateway: created once, stored hashed, verified from a short in-process cache.

Redis keys:
- `flywheel:apikeys`  hash  sha256(plaintext key) hex -> JSON {key_id, name, scopes, rate_per_minute,
  tokens_per_minute (0: no token limit), created_at}. The plaintext is shown once, by `create`, and never stored.

Cost per request: `verify` of a hot key costs no round trip (the TTL cache answers); a cold key costs
one HGET, shared by every concurrent request for the same key. Revocation is seen at once by the process
that revokes and within `cache_ttl_s` by every other gateway process.

Example:
    store = ApiKeyStore(redis.asyncio.from_url("redis://localhost:6379/0"))
    plaintext, key = await store.create("ci", {"chat"}, rate_per_minute=600)
    assert await store.verify(plaintext) == key
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
from redis.asyncio import Redis

from inference.keys import APIKEYS_KEY

KEY_PREFIX = "fw-"
KEY_BODY_CHARS = 40  # secrets.token_urlsafe(30) is exactly 40 url-safe characters
KEY_ID_LENGTH = 12
DEV_KEY_NAME = "dev"
# `act_as`: the key's holder (an application that signs its own users in) may name the end user of a request
# (X-User-Id, or the body's `user`); without it, the user is the key's own principal, `key-<key id>`.
ACT_AS = "act_as"
DEV_KEY_SCOPES = frozenset({"chat", "admin", ACT_AS})

_KEY_RE = re.compile(rf"{KEY_PREFIX}[A-Za-z0-9_-]{{{KEY_BODY_CHARS}}}")
_KEY_ID_RE = re.compile(rf"[0-9a-f]{{{KEY_ID_LENGTH}}}")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: frozenset[str]
    rate_per_minute: int
    created_at: float = 0.0
    tokens_per_minute: int = 0  # prompt + completion tokens a minute; 0: no token limit
    principal: str | None = None  # a signed-in user's id (inference/gateway/user_tokens.py); never stored

    def token_bucket(self) -> str:
        """The rate limiter's bucket of the key's tokens (beside its requests' bucket, named by the key id)."""
        return f"tokens:{self.key_id}"

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "key_id": self.key_id,
                "name": self.name,
                "scopes": sorted(self.scopes),
                "rate_per_minute": self.rate_per_minute,
                "tokens_per_minute": self.tokens_per_minute,
                "created_at": self.created_at,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> ApiKey:
        d = orjson.loads(raw)
        return cls(
            key_id=d["key_id"],
            name=d["name"],
            scopes=frozenset(d["scopes"]),
            rate_per_minute=int(d["rate_per_minute"]),
            created_at=float(d.get("created_at", 0.0)),
            tokens_per_minute=int(d.get("tokens_per_minute", 0)),
        )


def parse_bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
        return None
    return token


def new_plaintext_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(30)


def well_formed(plaintext: str) -> bool:
    return _KEY_RE.fullmatch(plaintext) is not None


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def key_id_of(digest: str) -> str:
    return digest[:KEY_ID_LENGTH]


class TTLCache:
    """A bounded map whose entries expire; least recently used entries go first when full."""

    def __init__(self, ttl_s: float, max_size: int, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.max_size, self._clock = ttl_s, max_size, clock
        self._data: OrderedDict[str, tuple[float, object]] = OrderedDict()

    def get(self, key: str) -> tuple[bool, object]:
        """(hit, value); an expired entry is a miss and is dropped."""
        entry = self._data.get(key)
        if entry is None:
            return False, None
        expires_at, value = entry
        if expires_at <= self._clock():
            del self._data[key]
            return False, None
        self._data.move_to_end(key)
        return True, value

    def put(self, key: str, value: object) -> None:
        self._data[key] = (self._clock() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_size:
            self._data.popitem(last=False)

    def discard_where(self, predicate: Callable[[str], bool]) -> None:
        for key in [k for k in self._data if predicate(k)]:
            del self._data[key]

    def __len__(self) -> int:
        return len(self._data)


class ApiKeyStore:
    def __init__(self, redis: Redis, cache_ttl_s: float = 5.0, cache_size: int = 10_000):
        self.redis = redis
        # Negative answers are cached too, so a client hammering with a wrong key costs no round trips.
        self._cache = TTLCache(cache_ttl_s, cache_size)
        self._inflight: dict[str, asyncio.Task[ApiKey | None]] = {}

    async def create(
        self, name: str, scopes: Iterable[str], rate_per_minute: int, tokens_per_minute: int = 0
    ) -> tuple[str, ApiKey]:
        """A new key; the returned plaintext is the only copy that will ever exist."""
        scopes = frozenset(scopes)
        if not name or not scopes or any(not s for s in scopes):
            raise ValueError("an API key needs a name and at least one non-empty scope")
        if rate_per_minute < 1:
            raise ValueError(f"rate_per_minute must be >= 1, got {rate_per_minute}")
        if tokens_per_minute < 0:
            raise ValueError(f"tokens_per_minute must be >= 0 (0: no token limit), got {tokens_per_minute}")
        plaintext = new_plaintext_key()
        digest = hash_key(plaintext)
        key = ApiKey(key_id_of(digest), name, scopes, rate_per_minute, time.time(), tokens_per_minute)
        await self.redis.hset(APIKEYS_KEY, digest, key.to_json())
        self._cache.discard_where(lambda d: d == digest)
        return plaintext, key

    async def verify(self, plaintext: str | None) -> ApiKey | None:
        if not plaintext or not well_formed(plaintext):
            return None
        digest = hash_key(plaintext)
        hit, value = self._cache.get(digest)
        if hit:
            return value  # type: ignore[return-value]
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.ensure_future(self._load(digest))
            self._inflight[digest] = task
            task.add_done_callback(lambda _t: self._inflight.pop(digest, None))
        # shield: one cancelled request must not cancel the lookup other requests wait on
        return await asyncio.shield(task)

    async def _load(self, digest: str) -> ApiKey | None:
        raw = await self.redis.hget(APIKEYS_KEY, digest)
        key = ApiKey.from_json(raw) if raw is not None else None
        self._cache.put(digest, key)
        return key

    async def revoke(self, key_id: str) -> bool:
        """Delete the key; True when it existed. Other processes stop honouring it within cache_ttl_s."""
        if not _KEY_ID_RE.fullmatch(key_id):
            return False
        digests = [
            d.decode() if isinstance(d, bytes) else d
            async for d, _ in self.redis.hscan_iter(APIKEYS_KEY, match=f"{key_id}*")
        ]
        self._cache.discard_where(lambda d: d.startswith(key_id))
        if not digests:
            return False
        return await self.redis.hdel(APIKEYS_KEY, *digests) > 0

    async def list(self) -> list[ApiKey]:
        raw = await self.redis.hgetall(APIKEYS_KEY)
        return sorted((ApiKey.from_json(v) for v in raw.values()), key=lambda k: (k.name, k.created_at))


async def ensure_dev_key(store: ApiKeyStore, path: Path, rate_per_minute: int, tokens_per_minute: int) -> str:
    """The local stack's key: reuse the one in `path` while it still verifies with these scopes and limits, else
    create and save one."""
    if path.exists():
        existing = path.read_text().strip()
        key = await store.verify(existing)
        limits = (rate_per_minute, tokens_per_minute)
        if key is not None and key.scopes >= DEV_KEY_SCOPES and (key.rate_per_minute, key.tokens_per_minute) == limits:
            return existing
        if key is not None:  # made before a scope was added or the limits changed: replaced
            await store.revoke(key.key_id)
    plaintext, _ = await store.create(DEV_KEY_NAME, DEV_KEY_SCOPES, rate_per_minute, tokens_per_minute)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(plaintext + "\n")
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply when tmp already existed
    os.replace(tmp, path)
    return plaintext
