"""The gateway's logic: chat completions (OpenAI and session APIs, streamed or not), feedback, and the events
each request produces. Admission (key, scope, rate limit, session owners) is inference/gateway/admission.py.

Reads: Redis (keys, rate limits, sessions, message owners), the inference workers (inference/gateway/upstream.py).
Writes: chat.requests, chat.responses, inference.latency, chat.feedback (through inference/gateway/publisher.py,
fire-and-forget: no request waits for the broker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi.responses import Response, StreamingResponse

from inference.gateway.admission import Caller, Gate, not_owned
from inference.gateway.auth import ACT_AS
from inference.gateway.metrics import GatewayMetrics
from inference.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    GatewayError,
    SessionChatRequest,
    error_body,
    feedback_verdict,
    new_message_id,
)
from inference.gateway.publisher import EventPublisher
from inference.gateway.rag import Grounding, Retriever
from inference.gateway.router import RouteTable, UnknownModel
from inference.gateway.sessions import (
    InvalidId,
    SessionNotOwned,
    SessionStore,
    resolve_session_id,
    valid_id,
)
from inference.gateway.settings import GatewaySettings
from inference.gateway.turns import Turn, TurnEvents, event_message
from inference.gateway.upstream import (
    CHAT_PATH,
    Upstream,
    UpstreamFailure,
    UpstreamStream,
    public_message,
    status_of,
)
from schemas.events import Feedback
from schemas.text import mask_pii

log = logging.getLogger(__name__)

JSON = "application/json"
SSE_DONE = b"data: [DONE]\n\n"


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
        retriever: Retriever | None = None,
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
        self.events = TurnEvents(publisher, metrics, mask_pii if settings.gateway_mask_pii else _as_is)
        self.grounding = None
        if retriever is not None:
            redis, ttl_s = sessions.redis, sessions.message_ttl_s
            self.grounding = Grounding(retriever, redis, ttl_s, publisher.publish, self.events.mask)

    # -- OpenAI-compatible ---------------------------------------------------------------------

    def check_openai_request(self, req: ChatCompletionRequest | CompletionRequest, caller: Caller) -> None:
        """What both OpenAI routes refuse: fields the model would not get, and a `user` the key may not name."""
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

    async def chat_completions(
        self, req: ChatCompletionRequest, caller: Caller, session_header: str | None, state: Any
    ) -> Response:
        self.check_openai_request(req, caller)
        user_id = req.user or caller.user_id
        session_id = session_id_of(session_header)
        message_id = new_message_id()
        await self.gate.admit_and_remember(
            caller.key, message_id, user_id, session_id, claim=session_header is not None
        )
        turn = self._turn("openai", caller, session_id, user_id, req.model, req.stream, message_id)
        state.model_version = turn.version
        messages = [event_message(m.role, m.text()) for m in req.messages]
        body = req.upstream_body(turn.version)
        if self.grounding is not None and self.grounding.serves(turn.alias):
            messages = body["messages"] = await self.grounding.augment(turn, messages)
        self.events.request(turn, messages, req.max_tokens or req.max_completion_tokens, req.temperature)
        if req.stream:
            stream = await self._open_stream(turn, body)
            return StreamingResponse(
                self._relay(turn, stream, req.wants_usage), media_type="text/event-stream", headers=turn.headers()
            )
        data = await self._complete(turn, body)
        data["id"] = turn.message_id
        if turn.sources is not None:
            data["sources"] = turn.sources
        return Response(orjson.dumps(data), media_type=JSON, headers=turn.headers())

    # -- session API -----------------------------------------------------------------------------

    async def session_chat(self, req: SessionChatRequest, caller: Caller, stream: bool, state: Any) -> Response:
        session_id = session_id_of(req.session_id, "session_id")
        history = await self.gate.admit_with_history(caller.key, session_id, caller.user_id)
        turn = self._turn("session", caller, session_id, caller.user_id, req.model, stream)
        state.model_version = turn.version
        keep = 2 * self.settings.gateway_history_turns
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages += history[-keep:] if keep else []
        messages.append({"role": "user", "content": req.message})
        if self.grounding is not None and self.grounding.serves(turn.alias):
            messages = await self.grounding.augment(turn, messages)
        self.events.request(turn, messages, req.max_tokens, req.temperature)  # roles: system, user, assistant
        body: dict[str, Any] = {"model": turn.version, "messages": messages, "stream": stream}
        if req.max_tokens is not None:
            body["max_tokens"] = req.max_tokens
        if req.temperature is not None:
            body["temperature"] = req.temperature

        async def record() -> None:
            try:
                await self.sessions.record_turn(session_id, turn.user_id, turn.message_id, req.message, turn.content)
            except SessionNotOwned as exc:  # another user took the new session id since admission
                raise not_owned(exc) from None

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
        if turn.sources is not None:
            out["sources"] = turn.sources
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
            raise not_owned(exc) from None
        if not deleted:
            raise GatewayError(404, f"session {session_id!r} not found (unknown or expired)", "session_not_found")
        return Response(orjson.dumps({"session_id": session_id, "deleted": True}), media_type=JSON)

    # -- feedback ----------------------------------------------------------------------------------

    async def feedback(self, req: FeedbackRequest, caller: Caller) -> Response:
        await self.gate.admit_feedback(caller.key, caller.user_id, self.settings.gateway_feedback_per_user_minute)
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
        verdict, kind = feedback_verdict(req)  # an editor's accepted / rejected: thumbs up / down on a completion
        event = Feedback(
            session_id=req.session_id,
            message_id=req.message_id,
            user_id=caller.user_id,
            feedback=verdict,
            kind=kind,
            comment=self.events.mask(req.comment) if req.comment else req.comment,
            correction=self.events.mask(req.correction) if req.correction else req.correction,
            passage_ids=await self.grounding.passages_of(req.message_id) if self.grounding is not None else [],
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
            route,
            caller.request_id,
            session_id,
            message_id or new_message_id(),
            user_id,
            alias,
            version,
            stream,
            key=caller.key,
        )

    def _finish(self, turn: Turn) -> None:
        """The turn's events, and its tokens charged to the key's token limit (after the answer: not its latency)."""
        self.events.finish(turn)
        if turn.key is not None:
            self.gate.charge_later(turn.key, turn.prompt_tokens + turn.completion_tokens)

    async def _complete(self, turn: Turn, body: dict, path: str = CHAT_PATH) -> dict:
        try:
            worker, data, _ = await self.upstream.complete(body, path)
        except UpstreamFailure as exc:
            raise self._failed(turn, exc) from None
        turn.worker = worker.url
        choices = data.get("choices") or [{}]
        turn.parts.append(_choice_text(choices[0], "message") or "")
        turn.finish_reason = choices[0].get("finish_reason")
        self._usage(turn, data.get("usage"))
        self._finish(turn)
        return data

    async def _open_stream(self, turn: Turn, body: dict, path: str = CHAT_PATH) -> UpstreamStream:
        try:
            stream = await self.upstream.stream(body, path)
        except UpstreamFailure as exc:
            raise self._failed(turn, exc) from None
        turn.worker = stream.worker.url
        return stream

    async def _relay(
        self, turn: Turn, stream: UpstreamStream, forward_usage: bool, on_done=None
    ) -> AsyncIterator[bytes]:
        """Forward each upstream chunk as it arrives, with the message id as `id`; events at the end."""
        mid = turn.message_id
        sources = turn.sources  # a rag answer's sources ride on its first chunk
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
                if sources is not None:
                    chunk["sources"], sources = sources, None
                choices = chunk.get("choices")
                if choices:
                    first = choices[0]
                    text = _choice_text(first, "delta")
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
            turn.status, turn.error = status_of(exc), str(exc)
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
        turn.status, turn.error = status_of(exc), str(exc)
        self._finish(turn)
        code = {503: "no_worker_available", 504: "upstream_timeout"}.get(exc.status, "upstream_error")
        status = exc.status if exc.status in (400, 404, 413, 422, 503, 504) else 502
        return GatewayError(status, public_message(exc, status, turn.request_id), code)


def session_id_of(value: str | None, param: str = "X-Session-Id") -> str:
    """The session a request names (a new one when it names none); 422 naming `param` when the id is malformed."""
    try:
        return resolve_session_id(value)
    except InvalidId as exc:
        raise GatewayError(422, f"{param}: {exc}", "invalid_session_id", param=param) from None


def _choice_text(choice: dict, part: str) -> str | None:
    """The text of an upstream choice: a chat choice's `message` (or stream `delta`) content, or a completion's `text`
    (/v1/completions)."""
    if "text" in choice:
        return choice["text"]
    return (choice.get(part) or {}).get("content")


def _as_is(text: str) -> str:
    return text


def _sse_error(status: int, message: str) -> bytes:
    return b"data: " + error_body(status, message) + b"\n\n" + SSE_DONE
