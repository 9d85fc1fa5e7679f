"""Per-key rate limits in Redis: GCRA (the generic cell rate algorithm) in one Lua script, one round trip.

Redis keys:
- `flywheel:ratelimit:<key_id>`  string  the key's theoretical arrival time (TAT), ms since 1700000000 (unix s),
  expiring when the bucket is full again (an idle key leaves nothing behind).

Why GCRA: it is a token bucket stored as a single number, so each hit is one GET and one SET on one small
key inside an atomic script; it spreads the allowance evenly (no double burst at a window edge, as a fixed
window allows); it needs no sorted set per key (as a sliding log does, O(limit) memory); and it gives an
exact retry-after. A key may burst its whole per-minute allowance, then gets one request per
`period/limit` seconds. The clock is Redis's `TIME`, so every gateway process agrees.

Example:
    limiter = RateLimiter(redis)
    decision = await limiter.hit(key.key_id, key.rate_per_minute)
    if not decision.allowed:
        return 429 with headers {"Retry-After": decision.retry_after_header}

Tokens are limited with the same algorithm, post-paid: a request is admitted while the key's token bucket is not
overdrawn (`queue_check`, cost 0), and the answer's tokens (prompt + completion, known only at its end) are charged
afterwards (`charge`), which may overdraw the bucket by one answer; the key then waits until it is paid back.

To share a round trip with other reads (the session history), queue the script on a pipeline:
    pipe = redis.pipeline(transaction=False)
    limiter.queue(pipe, key.key_id, key.rate_per_minute)
    sessions.queue_history(pipe, session_id)
    rate_reply, history_reply = await pipe.execute()
    decision = Decision.from_reply(rate_reply)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from inference.keys import RATELIMIT_KEY

# KEYS[1] the TAT key; ARGV[1] limit per period; ARGV[2] period in ms; ARGV[3] cost (1 a request, 0 a check that
# the bucket is not overdrawn, n tokens); ARGV[4] '1': charge even beyond the limit (tokens already spent).
# Returns {allowed 0|1, remaining, retry_after_ms}.
GCRA_LUA = """
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local cost = tonumber(ARGV[3] or 1)
local force = ARGV[4] == '1'
local interval = period / limit
local t = redis.call('TIME')
-- ms since 2023-11-14 rather than 1970: smaller numbers keep sub-ms intervals exact in doubles
local now = (tonumber(t[1]) - 1700000000) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - period
if not force and allow_at - now > 0.01 then  -- tolerance: float rounding must not refuse the last of a burst
  return {0, 0, math.ceil(allow_at - now)}
end
if cost > 0 then
  redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
end
return {1, math.max(0, math.floor((now + period - new_tat) / interval + 1e-6)), 0}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after_s: float

    @property
    def retry_after_header(self) -> str:
        """The `Retry-After` value: whole seconds, at least 1 (a client that retries sooner is refused)."""
        return str(max(1, math.ceil(self.retry_after_s)))

    @classmethod
    def from_reply(cls, reply: list[int]) -> Decision:
        allowed, remaining, retry_ms = reply
        return cls(bool(allowed), int(remaining), int(retry_ms) / 1000)


class RateLimiter:
    def __init__(self, redis: Redis, period_s: float = 60.0):
        """`period_s` is the window the limit counts over: a minute in service, shorter in tests."""
        self.redis = redis
        self.period_ms = int(period_s * 1000)
        self._script = redis.register_script(GCRA_LUA)  # EVALSHA, falling back to EVAL once per server

    async def hit(self, key_id: str, limit_per_minute: int) -> Decision:
        """Count one request against the key; one round trip."""
        _check(limit_per_minute)
        reply = await self._script(keys=[RATELIMIT_KEY.format(key_id=key_id)], args=[limit_per_minute, self.period_ms])
        return Decision.from_reply(reply)

    def queue(self, pipe: Pipeline, key_id: str, limit_per_minute: int) -> None:
        """Queue one hit on `pipe`; read its reply with `Decision.from_reply`.

        EVAL, not the registered script: a pipeline that carries a Script first asks the server whether
        it knows the script (SCRIPT EXISTS), which would cost a second round trip on every execute.
        """
        _check(limit_per_minute)
        pipe.eval(GCRA_LUA, 1, RATELIMIT_KEY.format(key_id=key_id), limit_per_minute, self.period_ms)

    def queue_check(self, pipe: Pipeline, key_id: str, limit_per_minute: int) -> None:
        """Queue a check that the bucket is not overdrawn (nothing counted): the token limit's admission."""
        _check(limit_per_minute)
        pipe.eval(GCRA_LUA, 1, RATELIMIT_KEY.format(key_id=key_id), limit_per_minute, self.period_ms, 0)

    async def charge(self, key_id: str, limit_per_minute: int, cost: int) -> Decision:
        """Count `cost` units already spent (an answer's tokens), even past the limit; one round trip."""
        _check(limit_per_minute)
        args = [limit_per_minute, self.period_ms, cost, 1]
        return Decision.from_reply(await self._script(keys=[RATELIMIT_KEY.format(key_id=key_id)], args=args))


def _check(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"a rate limit must be >= 1 per period, got {limit}")
