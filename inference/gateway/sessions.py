"""Conversation history, message ownership and active sessions in Redis.

Redis keys:
- `flywheel:session:<session_id>`  list    JSON {role, content}, oldest first, trimmed to the last
  `max_turns` turns (2 messages each), expiring `ttl_s` after the last turn.
- `flywheel:msg:<message_id>`      string  JSON {user_id, session_id}: who may give feedback on the message
  (unknown id -> 404, another user -> 403); expires after `message_ttl_s`. Kept when a session is deleted.
- `flywheel:session-owner:<session_id>` string  the user id that owns the session (set by its first turn,
  same TTL as the history): another user's /chat or DELETE on it is refused (403).
- `flywheel:sessions:active`       zset    session_id -> last-seen unix time; members older than `ttl_s`
  are pruned on every write and before counting, so counting never scans keys.

Round trips: `history` one (LRANGE), `remember_message` none when queued on the rate-limit pipeline
(`queue_remember_message`), `record_turn` one (one Lua script: owner check and SET, RPUSH, LTRIM,
EXPIRE, SET, ZADD, ZREMRANGEBYSCORE), `remember_message` one (SET), `message_owner` one (GET), `delete` one
(a Lua script: owner check, DEL, ZREM), `active_count` one (a MULTI/EXEC pipeline).
`queue_session` lets the gateway read the history and the owner in the same pipeline as the rate-limit check.
"""

from __future__ import annotations

import re
import time
import uuid

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from inference.keys import ACTIVE_KEY, HISTORY_KEY, MESSAGE_KEY, OWNER_KEY

# One script rather than a six-command pipeline: the same single round trip, atomic, and about half the
# client-side cost per turn (redis-py encodes and parses one command instead of six).
# KEYS: history, message owner, active set, session owner. ARGV: user msg, assistant msg, max messages, ttl_s,
# owner JSON, message ttl_s, now, now - ttl_s, session id, user id.
# Returns 0 (nothing written) when another user owns the session: the check done at admission is repeated
# atomically here, so two users racing on a new session id cannot both write to it.
RECORD_TURN_LUA = """
local owner = redis.call('GET', KEYS[4])
if owner and owner ~= ARGV[10] then return 0 end
redis.call('SET', KEYS[4], ARGV[10], 'EX', ARGV[4])
redis.call('RPUSH', KEYS[1], ARGV[1], ARGV[2])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[8])
return 1
"""

# KEYS: history, session owner, active set. ARGV: session id, user id ('' = any).
# Returns -1 when another user owns the session, else the number of history lists deleted (0 or 1).
DELETE_LUA = """
local owner = redis.call('GET', KEYS[2])
if owner and ARGV[2] ~= '' and owner ~= ARGV[2] then return -1 end
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
"""

# Ids become parts of Redis keys: a strict charset keeps them from reaching other keys or patterns.
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


class InvalidId(ValueError):
    """A session or message id that is empty, too long, or has characters outside [A-Za-z0-9_-]."""


class SessionNotOwned(Exception):
    """The session belongs to another user."""

    def __init__(self, session_id: str):
        super().__init__(f"session {session_id!r} belongs to another user")
        self.session_id = session_id


def new_session_id() -> str:
    return uuid.uuid4().hex


def valid_id(value: str | None) -> bool:
    return value is not None and _ID_RE.fullmatch(value) is not None


def resolve_session_id(value: str | None) -> str:
    """The client's session id when it sent one (raises InvalidId when malformed), else a new one."""
    return new_session_id() if value is None or value == "" else _checked(value, "session id")


def _checked(value: str, what: str) -> str:
    if not valid_id(value):
        raise InvalidId(f"invalid {what} {value!r}: 1-128 characters of A-Z a-z 0-9 _ -")
    return value


def _owner_json(user_id: str, session_id: str | None) -> bytes:
    return orjson.dumps({"user_id": user_id, "session_id": session_id})


def parse_history(raw: list[bytes | str]) -> list[dict]:
    """The reply of LRANGE on a history key as messages."""
    return [orjson.loads(m) for m in raw]


def parse_session(history: list[bytes | str], owner: bytes | str | None, session_id: str, user_id: str) -> list[dict]:
    """The replies queued by `SessionStore.queue_session` as the history; SessionNotOwned for another user's."""
    if owner is not None:
        if isinstance(owner, bytes):
            owner = owner.decode()
        if owner != user_id:
            raise SessionNotOwned(session_id)
    return parse_history(history)


class SessionStore:
    def __init__(self, redis: Redis, max_turns: int = 10, ttl_s: int = 3600, message_ttl_s: int = 86_400):
        self.redis = redis
        self.max_turns, self.ttl_s, self.message_ttl_s = max_turns, ttl_s, message_ttl_s
        self._record_turn = redis.register_script(RECORD_TURN_LUA)
        self._delete = redis.register_script(DELETE_LUA)

    async def history(self, session_id: str) -> list[dict]:
        """The session's last `max_turns` turns as [{role, content}], oldest first; [] when unknown."""
        key = HISTORY_KEY.format(session_id=_checked(session_id, "session id"))
        return parse_history(await self.redis.lrange(key, 0, -1))

    def queue_history(self, pipe: Pipeline, session_id: str) -> None:
        """Queue the history read on `pipe`; read its reply with `parse_history`."""
        pipe.lrange(HISTORY_KEY.format(session_id=_checked(session_id, "session id")), 0, -1)

    def queue_session(self, pipe: Pipeline, session_id: str) -> None:
        """Queue the history and the owner reads on `pipe` (two replies); read them with `parse_session`."""
        self.queue_history(pipe, session_id)
        pipe.get(OWNER_KEY.format(session_id=session_id))

    async def record_turn(
        self, session_id: str, user_id: str, message_id: str, user_msg: str, assistant_msg: str
    ) -> None:
        """Append one turn, remember who owns the answer and the session, mark the session active: one round
        trip. Raises SessionNotOwned (and writes nothing) when another user owns the session."""
        _checked(session_id, "session id")
        now = time.time()
        written = await self._record_turn(
            keys=[
                HISTORY_KEY.format(session_id=session_id),
                self._message_key(message_id),
                ACTIVE_KEY,
                OWNER_KEY.format(session_id=session_id),
            ],
            args=[
                orjson.dumps({"role": "user", "content": user_msg}),
                orjson.dumps({"role": "assistant", "content": assistant_msg}),
                2 * self.max_turns,
                self.ttl_s,
                _owner_json(user_id, session_id),
                self.message_ttl_s,
                repr(now),
                repr(now - self.ttl_s),
                session_id,
                user_id,
            ],
        )
        if not written:
            raise SessionNotOwned(session_id)

    def queue_claim(self, pipe: Pipeline, session_id: str, user_id: str) -> None:
        """Claim the session for `user_id` unless someone owns it (SET NX, the session's TTL), then read its owner:
        two replies; the second is the owner, which is `user_id` unless the session is another user's."""
        key = OWNER_KEY.format(session_id=_checked(session_id, "session id"))
        pipe.set(key, user_id, nx=True, ex=self.ttl_s)
        pipe.get(key)

    def queue_remember_message(self, pipe: Pipeline, message_id: str, user_id: str, session_id: str | None) -> None:
        """`remember_message` queued on `pipe` (with the rate-limit check: one round trip per request)."""
        pipe.set(self._message_key(message_id), _owner_json(user_id, session_id), ex=self.message_ttl_s)

    async def remember_message(self, message_id: str, user_id: str, session_id: str | None) -> None:
        """Record the owner of a message that has no history (the OpenAI-compatible route)."""
        await self.redis.set(self._message_key(message_id), _owner_json(user_id, session_id), ex=self.message_ttl_s)

    @staticmethod
    def _message_key(message_id: str) -> str:
        return MESSAGE_KEY.format(message_id=_checked(message_id, "message id"))

    async def message_owner(self, message_id: str) -> tuple[str, str | None] | None:
        """(user_id, session_id) of a message; None when unknown, expired, or not a valid id."""
        if not valid_id(message_id):
            return None
        raw = await self.redis.get(MESSAGE_KEY.format(message_id=message_id))
        if raw is None:
            return None
        owner = orjson.loads(raw)
        return owner["user_id"], owner["session_id"]

    async def delete(self, session_id: str, user_id: str | None = None) -> bool:
        """Forget the session's history; True when it had one. With `user_id`, raises SessionNotOwned when
        another user owns the session."""
        _checked(session_id, "session id")
        deleted = await self._delete(
            keys=[HISTORY_KEY.format(session_id=session_id), OWNER_KEY.format(session_id=session_id), ACTIVE_KEY],
            args=[session_id, user_id or ""],
        )
        if deleted < 0:
            raise SessionNotOwned(session_id)
        return deleted > 0

    async def active_count(self) -> int:
        """Sessions with a turn within `ttl_s`; prunes the older ones first (one round trip)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zremrangebyscore(ACTIVE_KEY, "-inf", time.time() - self.ttl_s)
        pipe.zcard(ACTIVE_KEY)
        _, count = await pipe.execute()
        return count
