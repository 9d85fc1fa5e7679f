"""Admission of a gateway request: the API key and its scope, the rate limits (requests; tokens, post-paid), and
who owns a session.

Reads Redis (keys, rate limits, sessions, message owners) in one round trip per request where it can.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from inference.gateway.auth import ApiKey, ApiKeyStore, parse_bearer
from inference.gateway.protocol import GatewayError
from inference.gateway.ratelimit import Decision, RateLimiter
from inference.gateway.sessions import SessionNotOwned, SessionStore, parse_session
from inference.gateway.user_tokens import InvalidUserToken, UserTokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    key: ApiKey
    user_id: str
    request_id: str


class Gate:
    """API key, scope and per-key rate limit; the session route reads its history in the same round trip."""

    def __init__(
        self,
        redis: Redis,
        keys: ApiKeyStore,
        limiter: RateLimiter,
        sessions: SessionStore,
        user_tokens: UserTokens | None = None,
    ):
        self.redis = redis
        self.keys = keys
        self.user_tokens = user_tokens  # signed-in users' JWTs, when the gateway is set up for them
        self._charges: set[asyncio.Task] = set()  # token charges in flight (a task needs a reference)
        self.limiter = limiter
        self.sessions = sessions

    async def authenticate(self, authorization: str | None, scope: str) -> ApiKey:
        if not authorization:
            raise GatewayError(401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key")
        token = parse_bearer(authorization)
        if token and self.user_tokens is not None and looks_like_jwt(token):
            try:
                key = await self.user_tokens.check(token)
            except InvalidUserToken as exc:
                raise GatewayError(401, str(exc), "invalid_user_token") from None
        else:
            key = await self.keys.verify(token) if token else None
        if key is None:
            raise GatewayError(401, "invalid API key", "invalid_api_key")
        if not key.allows(scope):
            raise GatewayError(403, f"this API key lacks the '{scope}' scope", "insufficient_scope")
        return key

    async def admit(self, key: ApiKey) -> None:
        _check_rate(await self.limiter.hit(key.key_id, key.rate_per_minute), key)

    async def admit_feedback(self, key: ApiKey, user_id: str, per_user_minute: int) -> None:
        """The key's rate limit, and the user's own feedback quota (feedback is training data: one user must
        not steer a job alone): both checked in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        self.limiter.queue(pipe, key.key_id, key.rate_per_minute)
        self.limiter.queue(pipe, f"feedback:{key.key_id}:{user_id}", per_user_minute)
        rate, quota = await pipe.execute()
        _check_rate(Decision.from_reply(rate), key)
        decision = Decision.from_reply(quota)
        if not decision.allowed:
            raise GatewayError(
                429,
                f"feedback quota of {per_user_minute} per minute exceeded for this user; "
                f"retry in {decision.retry_after_header} s",
                "feedback_quota_exceeded",
                headers={"Retry-After": decision.retry_after_header},
            )

    async def admit_and_remember(
        self, key: ApiKey, message_id: str, user_id: str, session_id: str, claim: bool = False
    ) -> None:
        """Rate limit and record the owner of the coming answer (for /feedback): one round trip. With `claim`
        (a session id the client named), the session becomes the user's unless it is another user's: 403 then.
        A refused request leaves an owner record of an id nobody was given; it expires with the others."""
        pipe = self.redis.pipeline(transaction=False)
        self._queue_limits(pipe, key)
        self.sessions.queue_remember_message(pipe, message_id, user_id, session_id)
        if claim:
            self.sessions.queue_claim(pipe, session_id, user_id)
        rest = _check_limits(await pipe.execute(), key)
        if claim:
            owner = rest[-1].decode() if isinstance(rest[-1], bytes) else rest[-1]
            if owner != user_id:
                raise not_owned(SessionNotOwned(session_id))

    async def admit_with_history(self, key: ApiKey, session_id: str, user_id: str) -> list[dict]:
        """Rate limit, then the session's history; 403 when the session belongs to another user."""
        pipe = self.redis.pipeline(transaction=False)
        self._queue_limits(pipe, key)
        self.sessions.queue_session(pipe, session_id)
        history, owner = _check_limits(await pipe.execute(), key)
        try:
            return parse_session(history, owner, session_id, user_id)
        except SessionNotOwned as exc:
            raise not_owned(exc) from None

    def _queue_limits(self, pipe, key: ApiKey) -> None:
        """A request that makes the model answer: the key's request limit, and its token limit when it has one
        (admitted while not overdrawn; `charge_later` counts the answer's tokens once they are known)."""
        self.limiter.queue(pipe, key.key_id, key.rate_per_minute)
        if key.tokens_per_minute:
            self.limiter.queue_check(pipe, key.token_bucket(), key.tokens_per_minute)

    def charge_later(self, key: ApiKey, tokens: int) -> None:
        """Charge an answer's tokens to the key's token limit in the background (not in the answer's latency)."""
        if key.tokens_per_minute and tokens > 0:
            task = asyncio.create_task(self.limiter.charge(key.token_bucket(), key.tokens_per_minute, tokens))
            self._charges.add(task)
            task.add_done_callback(self._charged)

    def _charged(self, task: asyncio.Task) -> None:
        self._charges.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not charge an answer's tokens", extra={"error": repr(task.exception())})


def looks_like_jwt(token: str) -> bool:
    """A compact JWS: header.payload.signature (an API key has no dot)."""
    return token.count(".") == 2


def _check_limits(replies: list, key: ApiKey) -> list:
    """Refuse on the replies of `Gate._queue_limits` (first in `replies`); the replies after them."""
    _check_rate(Decision.from_reply(replies[0]), key)
    if not key.tokens_per_minute:
        return replies[1:]
    tokens = Decision.from_reply(replies[1])
    if not tokens.allowed:
        raise GatewayError(
            429,
            f"token limit of {key.tokens_per_minute} tokens per minute exceeded for this API key; "
            f"retry in {tokens.retry_after_header} s",
            "token_limit_exceeded",
            headers={"Retry-After": tokens.retry_after_header},
        )
    return replies[2:]


def not_owned(exc: SessionNotOwned) -> GatewayError:
    return GatewayError(403, f"{exc}; use another session id", "not_session_owner", param="session_id")


def _check_rate(decision: Decision, key: ApiKey) -> None:
    if not decision.allowed:
        raise GatewayError(
            429,
            f"rate limit of {key.rate_per_minute} requests per minute exceeded for this API key; "
            f"retry in {decision.retry_after_header} s",
            "rate_limit_exceeded",
            headers={"Retry-After": decision.retry_after_header},
        )
