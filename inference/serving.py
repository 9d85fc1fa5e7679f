"""The gateway's logic: admission (API key, scope, rate limit), chat completions (OpenAI and session
APIs, streamed or not), feedback, and the events each request produces.

Reads: Redis (keys, rate limits, sessions, message owners), the inference workers (inference/upstream.py).
Writes: chat.requests, chat.responses, inference.latency, chat.feedback (through inference/publisher.py,
fire-and-forget: no request waits for the broker).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi.responses import Response, StreamingResponse
from redis.asyncio import Redis

from inference.auth import ACT_AS, ApiKey, ApiKeyStore, parse_bearer
from inference.metrics import GatewayMetrics
from inference.protocol import (
    ChatCompletionRequest,
    FeedbackRequest,
    GatewayError,
    SessionChatRequest,
    error_body,
    new_message_id,
)
from inference.publisher import EventPublisher
from inference.ratelimit import Decision, RateLimiter
from inference.router import RouteTable, UnknownModel
from inference.sessions import (
    InvalidId,
    SessionNotOwned,
    SessionStore,
    parse_session,
    resolve_session_id,
    valid_id,
)
from inference.settings import GatewaySettings
from inference.upstream import Upstream, UpstreamFailure, UpstreamStream, UpstreamTimeout
from schemas.events import ChatRequest, ChatResponse, Feedback, InferenceLatency
from schemas.text import mask_pii

log = logging.getLogger(__name__)

JSON = "application/json"
SSE_DONE = b"data: [DONE]\n\n"
EVENT_ROLES = {"system", "user", "assistant", "tool"}
ROLE_ALIASES = {"developer": "system", "function": "tool"}


# -- admission -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    key: ApiKey
    user_id: str
    request_id: str


class Gate:
    """API key, scope and per-key rate limit; the session route reads its history in the same round trip."""

    def __init__(self, redis: Redis, keys: ApiKeyStore, limiter: RateLimiter, sessions: SessionStore):
        self.redis = redis
        self.keys = keys
        self.limiter = limiter
        self.sessions = sessions

    async def authenticate(self, authorization: str | None, scope: str) -> ApiKey:
        if not authorization:
            raise GatewayError(401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key")
        token = parse_bearer(authorization)
        key = await self.keys.verify(token) if token else None
        if key is None:
            raise GatewayError(401, "invalid API key", "invalid_api_key")
        if not key.allows(scope):
            raise GatewayError(403, f"this API key lacks the '{scope}' scope", "insufficient_scope")
        return key

    async def admit(self, key: ApiKey) -> None:
        _check_rate(await self.limiter.hit(key.key_id, key.rate_per_minute), key)

    async def admit_and_remember(
        self, key: ApiKey, message_id: str, user_id: str, session_id: str, claim: bool = False
    ) -> None:
        """Rate limit and record the owner of the coming answer (for /feedback): one round trip. With `claim`
        (a session id the client named), the session becomes the user's unless it is another user's: 403 then.
        A refused request leaves an owner record of an id nobody was given; it expires with the others."""
        pipe = self.redis.pipeline(transaction=False)
        self.limiter.queue(pipe, key.key_id, key.rate_per_minute)
        self.sessions.queue_remember_message(pipe, message_id, user_id, session_id)
        if claim:
            self.sessions.queue_claim(pipe, session_id, user_id)
        rate, *rest = await pipe.execute()
        _check_rate(Decision.from_reply(rate), key)
        if claim:
            owner = rest[-1].decode() if isinstance(rest[-1], bytes) else rest[-1]
            if owner != user_id:
                raise _not_owned(SessionNotOwned(session_id))

    async def admit_with_history(self, key: ApiKey, session_id: str, user_id: str) -> list[dict]:
        """Rate limit, then the session's history; 403 when the session belongs to another user."""
        pipe = self.redis.pipeline(transaction=False)
        self.limiter.queue(pipe, key.key_id, key.rate_per_minute)
        self.sessions.queue_session(pipe, session_id)
        rate, history, owner = await pipe.execute()
        _check_rate(Decision.from_reply(rate), key)
        try:
            return parse_session(history, owner, session_id, user_id)
        except SessionNotOwned as exc:
            raise _not_owned(exc) from None


def _not_owned(exc: SessionNotOwned) -> GatewayError:
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


# -- one chat turn ---------------------------------------------------------------------------------


@dataclass
class Turn:
    """What one request knows about itself, from admission to its final events."""

    route: str  # "openai" | "session" (the events' route)
    request_id: str
    session_id: str
    message_id: str
    user_id: str
    alias: str
    version: str
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    worker: str = ""
    ttft_s: float | None = None
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: str = "ok"
    error: str | None = None

    @property
    def content(self) -> str:
        return "".join(self.parts)

    def ids(self) -> dict[str, str]:
        return {"request_id": self.request_id, "session_id": self.session_id, "message_id": self.message_id}

    def headers(self) -> dict[str, str]:
        return {"X-Session-Id": self.session_id, "X-Model-Version": self.version}


def _event_message(role: str, content: str) -> dict[str, str]:
    """A message as the ChatRequest event's `messages` takes it: a dict that pydantic validates in one pass
    with the event (a ChatMessage built per message cost 5% of a /chat request's CPU)."""
    role = ROLE_ALIASES.get(role, role)
    return {"role": role if role in EVENT_ROLES else "user", "content": content}


class ChatServing:
    def __init__(
        self,
        settings: GatewaySettings,
        upstream: Upstream,
        routes: RouteTable,
        sessions: SessionStore,
        publisher: EventPublisher,
        metrics: GatewayMetrics,
        gate: Gate,
    ):
        self.settings = settings
        self.upstream = upstream
        self.routes = routes
        self.sessions = sessions
        self.publisher = publisher
        self.metrics = metrics
        self.gate = gate
        self.system_prompt = settings.gateway_system_prompt
        self.extra_fields = frozenset(settings.gateway_extra_fields)
        self.mask = mask_pii if settings.gateway_mask_pii else _as_is

    # -- OpenAI-compatible ---------------------------------------------------------------------

    async def chat_completions(
        self, req: ChatCompletionRequest, caller: Caller, session_header: str | None, state: Any
    ) -> Response:
        unknown = req.unknown_fields(self.extra_fields)
        if unknown:
            raise GatewayError(
                422,
                f"unknown field(s) {', '.join(unknown)}: not forwarded to the model (n is at most 1)",
                "unknown_field",
                param=unknown[0],
            )
        if req.user is not None and not caller.key.allows(ACT_AS):
            raise GatewayError(
                403, f"this API key may not name users (`user` needs the '{ACT_AS}' scope)", "insufficient_scope"
            )
        user_id = req.user or caller.user_id
        session_id = _session_id(session_header)
        message_id = new_message_id()
        await self.gate.admit_and_remember(
            caller.key, message_id, user_id, session_id, claim=session_header is not None
        )
        turn = self._turn("openai", caller, session_id, user_id, req.model, req.stream, message_id)
        state.model_version = turn.version
        self._publish_request(
            turn,
            [_event_message(m.role, m.text()) for m in req.messages],
            req.max_tokens or req.max_completion_tokens,
            req.temperature,
        )
        body = req.upstream_body(turn.version)
        if req.stream:
            stream = await self._open_stream(turn, body)
            return StreamingResponse(
                self._relay(turn, stream, req.wants_usage), media_type="text/event-stream", headers=turn.headers()
            )
        data = await self._complete(turn, body)
        data["id"] = turn.message_id
        return Response(orjson.dumps(data), media_type=JSON, headers=turn.headers())

    # -- session API -----------------------------------------------------------------------------

    async def session_chat(self, req: SessionChatRequest, caller: Caller, stream: bool, state: Any) -> Response:
        try:
            session_id = resolve_session_id(req.session_id)
        except InvalidId as exc:
            raise GatewayError(422, f"session_id: {exc}", "invalid_session_id", param="session_id") from None
        history = await self.gate.admit_with_history(caller.key, session_id, caller.user_id)
        turn = self._turn("session", caller, session_id, caller.user_id, req.model, stream)
        state.model_version = turn.version
        keep = 2 * self.settings.gateway_history_turns
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages += history[-keep:] if keep else []
        messages.append({"role": "user", "content": req.message})
        self._publish_request(turn, messages, req.max_tokens, req.temperature)  # roles: system, user, assistant
        body: dict[str, Any] = {"model": turn.version, "messages": messages, "stream": stream}
        if req.max_tokens is not None:
            body["max_tokens"] = req.max_tokens
        if req.temperature is not None:
            body["temperature"] = req.temperature

        async def record() -> None:
            try:
                await self.sessions.record_turn(session_id, turn.user_id, turn.message_id, req.message, turn.content)
            except SessionNotOwned as exc:  # another user took the new session id since admission
                raise _not_owned(exc) from None

        if stream:
            body["stream_options"] = {"include_usage": True}
            upstream = await self._open_stream(turn, body)
            return StreamingResponse(
                self._relay(turn, upstream, False, record), media_type="text/event-stream", headers=turn.headers()
            )
        data = await self._complete(turn, body)
        await record()
        usage = data.get("usage")
        out = {
            "session_id": session_id,
            "message_id": turn.message_id,
            "model": turn.version,
            "content": turn.content,
            "finish_reason": turn.finish_reason,
            "usage": usage,
        }
        return Response(orjson.dumps(out), media_type=JSON, headers=turn.headers())

    async def delete_session(self, session_id: str, caller: Caller) -> Response:
        await self.gate.admit(caller.key)
        if not valid_id(session_id):
            raise GatewayError(
                422,
                f"invalid session id {session_id!r}: 1-128 characters of A-Z a-z 0-9 _ -",
                "invalid_session_id",
                param="session_id",
            )
        try:
            deleted = await self.sessions.delete(session_id, caller.user_id)
        except SessionNotOwned as exc:
            raise _not_owned(exc) from None
        if not deleted:
            raise GatewayError(404, f"session {session_id!r} not found (unknown or expired)", "session_not_found")
        return Response(orjson.dumps({"session_id": session_id, "deleted": True}), media_type=JSON)

    # -- feedback ----------------------------------------------------------------------------------

    async def feedback(self, req: FeedbackRequest, caller: Caller) -> Response:
        await self.gate.admit(caller.key)
        owner = await self.sessions.message_owner(req.message_id)
        if owner is None:
            raise GatewayError(
                404,
                f"message {req.message_id!r} not found (unknown or expired)",
                "message_not_found",
                param="message_id",
            )
        owner_user, owner_session = owner
        if owner_user != caller.user_id:
            raise GatewayError(
                403, f"message {req.message_id!r} belongs to another user", "not_message_owner", param="message_id"
            )
        if owner_session is not None and owner_session != req.session_id:
            raise GatewayError(
                404,
                f"message {req.message_id!r} not found in session {req.session_id!r}",
                "message_not_found",
                param="session_id",
            )
        event = Feedback(
            session_id=req.session_id,
            message_id=req.message_id,
            user_id=caller.user_id,
            feedback=req.feedback,
            comment=self.mask(req.comment) if req.comment else req.comment,
            correction=self.mask(req.correction) if req.correction else req.correction,
            producer="gateway",
        )
        self.publisher.publish(event)
        log.info(
            "feedback accepted",
            extra={
                "request_id": caller.request_id,
                "session_id": req.session_id,
                "message_id": req.message_id,
                "feedback": req.feedback,
            },
        )
        out = {"event_id": str(event.event_id), "message_id": req.message_id, "status": "accepted"}
        return Response(orjson.dumps(out), status_code=202, media_type=JSON)

    # -- models --------------------------------------------------------------------------------------

    def models(self) -> Response:
        created = int(time.time())
        data = []
        for alias in self.routes.aliases:
            versions = self.routes.versions(alias)
            data.append(
                {
                    "id": alias,
                    "object": "model",
                    "created": created,
                    "owned_by": "flywheel",
                    "versions": [{"version": r.version, "weight": r.weight} for r in versions],
                }
            )
            for r in versions:
                if r.version != alias:
                    data.append(
                        {
                            "id": r.version,
                            "object": "model",
                            "created": created,
                            "owned_by": "flywheel",
                            "parent": alias,
                            "weight": r.weight,
                        }
                    )
        return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON)

    # -- shared steps ------------------------------------------------------------------------------

    def _turn(
        self,
        route: str,
        caller: Caller,
        session_id: str,
        user_id: str,
        model: str | None,
        stream: bool,
        message_id: str | None = None,
    ) -> Turn:
        try:
            alias, version = self.routes.resolve(model, user_id)
        except UnknownModel as exc:
            raise GatewayError(404, str(exc), "model_not_found", param="model") from None
        return Turn(
            route, caller.request_id, session_id, message_id or new_message_id(), user_id, alias, version, stream
        )

    def _publish_request(
        self, turn: Turn, messages: list[dict[str, str]], max_tokens: int | None, temperature: float | None
    ) -> None:
        try:
            event = ChatRequest(
                session_id=turn.session_id,
                message_id=turn.message_id,
                user_id=turn.user_id,
                model_alias=turn.alias,
                messages=[{"role": m["role"], "content": self.mask(m["content"])} for m in messages],
                max_tokens=max_tokens,
                temperature=temperature,
                stream=turn.stream,
                route=turn.route,
                producer="gateway",
            )
        except Exception as exc:  # an event we cannot build must not fail the request; it is visible
            log.error("chat_request event invalid", extra={**turn.ids(), "error": repr(exc)})
            self.metrics.event("failed", 1)
            return
        self.publisher.publish(event)

    async def _complete(self, turn: Turn, body: dict) -> dict:
        try:
            worker, data, _ = await self.upstream.complete(body)
        except UpstreamFailure as exc:
            raise self._failed(turn, exc) from None
        turn.worker = worker.url
        choices = data.get("choices") or [{}]
        message = choices[0].get("message") or {}
        turn.parts.append(message.get("content") or "")
        turn.finish_reason = choices[0].get("finish_reason")
        self._usage(turn, data.get("usage"))
        self._finish(turn)
        return data

    async def _open_stream(self, turn: Turn, body: dict) -> UpstreamStream:
        try:
            stream = await self.upstream.stream(body)
        except UpstreamFailure as exc:
            raise self._failed(turn, exc) from None
        turn.worker = stream.worker.url
        return stream

    async def _relay(
        self, turn: Turn, stream: UpstreamStream, forward_usage: bool, on_done=None
    ) -> AsyncIterator[bytes]:
        """Forward each upstream chunk as it arrives, with the message id as `id`; events at the end."""
        mid = turn.message_id
        try:
            async for line in stream:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                chunk = orjson.loads(payload)
                if "id" in chunk:
                    chunk["id"] = mid
                choices = chunk.get("choices")
                if choices:
                    first = choices[0]
                    delta = first.get("delta") or {}
                    text = delta.get("content")
                    if text:
                        if turn.ttft_s is None:
                            turn.ttft_s = time.perf_counter() - turn.started
                        turn.parts.append(text)
                    if first.get("finish_reason"):
                        turn.finish_reason = first["finish_reason"]
                usage = chunk.get("usage")
                if usage:
                    self._usage(turn, usage)
                if not forward_usage:
                    if not choices and usage:
                        continue  # the usage-only chunk the client did not ask for
                    chunk.pop("usage", None)
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            if on_done is not None:
                await on_done()
            yield SSE_DONE
        except UpstreamFailure as exc:
            turn.status, turn.error = _status_of(exc), str(exc)
            yield _sse_error(exc.status, str(exc))
        except GatewayError as exc:  # the turn could not be recorded (the session was taken meanwhile)
            turn.status, turn.error = "error", exc.message
            yield _sse_error(exc.status, exc.message)
        except TimeoutError:
            turn.status, turn.error = "timeout", "upstream read timeout"
            yield _sse_error(504, "the model stopped answering within the gateway's timeout")
        except asyncio.CancelledError:
            turn.status, turn.error = "error", "client disconnected"
            raise
        except Exception as exc:
            turn.status, turn.error = "error", f"upstream stream failed: {exc!r}"
            log.warning("stream relay failed", extra={**turn.ids(), "error": repr(exc)})
            yield _sse_error(502, "the inference worker failed mid-answer")
        finally:
            await self.upstream.close_stream(stream)
            self._finish(turn)

    @staticmethod
    def _usage(turn: Turn, usage: dict | None) -> None:
        if usage:
            turn.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            turn.completion_tokens = int(usage.get("completion_tokens") or 0)

    def _failed(self, turn: Turn, exc: UpstreamFailure) -> GatewayError:
        turn.worker = exc.worker or turn.worker
        turn.status, turn.error = _status_of(exc), str(exc)
        self._finish(turn)
        code = {503: "no_worker_available", 504: "upstream_timeout"}.get(exc.status, "upstream_error")
        status = exc.status if exc.status in (400, 404, 413, 422, 503, 504) else 502
        return GatewayError(status, public_message(exc, status, turn.request_id), code)

    def _finish(self, turn: Turn) -> None:
        """Metrics, the response and latency events, and one log line for a finished turn."""
        latency = time.perf_counter() - turn.started
        version = turn.version
        m = self.metrics
        if turn.ttft_s is not None:
            m.ttft.labels(turn.route).observe(turn.ttft_s)
        if turn.completion_tokens:
            m.completion_tokens.labels(version).inc(turn.completion_tokens)
            m.prompt_tokens.labels(version).inc(turn.prompt_tokens)
            gen_s = latency - (turn.ttft_s or 0.0)
            tps = turn.completion_tokens / gen_s if gen_s > 0 else 0.0
            m.tokens_per_s.labels(version).observe(tps)
        else:
            tps = 0.0
        latency_ms = latency * 1000
        ttft_ms = turn.ttft_s * 1000 if turn.ttft_s is not None else None
        try:
            self.publisher.publish(
                ChatResponse(
                    session_id=turn.session_id,
                    message_id=turn.message_id,
                    user_id=turn.user_id,
                    model_alias=turn.alias,
                    model_version=version,
                    worker=turn.worker,
                    content=self.mask(turn.content),
                    finish_reason=turn.finish_reason,
                    prompt_tokens=turn.prompt_tokens,
                    completion_tokens=turn.completion_tokens,
                    ttft_ms=ttft_ms,
                    latency_ms=latency_ms,
                    status=turn.status,
                    error=turn.error,
                    route=turn.route,
                    producer="gateway",
                )
            )
            self.publisher.publish(
                InferenceLatency(
                    model_version=version,
                    worker=turn.worker,
                    session_id=turn.session_id,
                    message_id=turn.message_id,
                    route=turn.route,
                    prompt_tokens=turn.prompt_tokens,
                    completion_tokens=turn.completion_tokens,
                    ttft_ms=ttft_ms,
                    latency_ms=latency_ms,
                    tokens_per_s=tps,
                    status=turn.status,
                    producer="gateway",
                )
            )
        except Exception as exc:
            log.error("response events invalid", extra={**turn.ids(), "error": repr(exc)})
            m.event("failed", 2)
        # DEBUG for a served turn: one JSON line per request cost 4% of the CPU; /metrics counts them
        level = logging.DEBUG if turn.status == "ok" else logging.WARNING
        if log.isEnabledFor(level):
            log.log(
                level,
                "chat turn",
                extra={
                    **turn.ids(),
                    "user_id": turn.user_id,
                    "route": turn.route,
                    "model_version": version,
                    "worker": turn.worker,
                    "status": turn.status,
                    "error": turn.error,
                    "latency_ms": round(latency_ms, 2),
                    "ttft_ms": ttft_ms,
                    "completion_tokens": turn.completion_tokens,
                },
            )


def _session_id(header: str | None) -> str:
    try:
        return resolve_session_id(header)
    except InvalidId as exc:
        raise GatewayError(422, f"X-Session-Id: {exc}", "invalid_session_id", param="X-Session-Id") from None


_URL = re.compile(r"https?://[^\s'\"),]+")


def public_message(exc: UpstreamFailure, status: int, request_id: str) -> str:
    """What a client is told of an upstream failure: the worker's own words for a request it refused (4xx),
    without addresses; otherwise a generic message (the details, with the worker, are in the log and events)."""
    if status == 503:
        return "no inference worker is available for this model; retry later"
    if status == 504:
        return "the model did not answer within the gateway's timeout"
    if 400 <= status < 500:
        return _URL.sub("<worker>", str(exc))
    return f"the inference worker failed (request id {request_id})"


def _as_is(text: str) -> str:
    return text


def _status_of(exc: UpstreamFailure) -> str:
    return "timeout" if isinstance(exc, UpstreamTimeout) else "error"


def _sse_error(status: int, message: str) -> bytes:
    return b"data: " + error_body(status, message) + b"\n\n" + SSE_DONE
