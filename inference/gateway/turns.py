"""One chat turn as the gateway records it: what a request knows about itself, and the events, metrics and log
line it leaves (chat.requests when it starts; chat.responses and inference.latency when it ends).

Events are published fire-and-forget (inference/gateway/publisher.py); personal data in them is masked by `mask`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from inference.gateway.auth import ApiKey
from inference.gateway.metrics import GatewayMetrics
from inference.gateway.publisher import EventPublisher
from schemas.events import ChatRequest, ChatResponse, InferenceLatency

log = logging.getLogger(__name__)

EVENT_ROLES = {"system", "user", "assistant", "tool"}
ROLE_ALIASES = {"developer": "system", "function": "tool"}


@dataclass
class Turn:
    """What one request knows about itself, from admission to its final events."""

    route: str  # the events' route: "openai" | "session" | "completion" | "code"
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
    key: ApiKey | None = None  # the caller's key: its token limit is charged with the answer's tokens
    sources: list[dict] | None = None  # a rag answer's passages (inference/gateway/rag.py); None: not a rag answer

    @property
    def content(self) -> str:
        return "".join(self.parts)

    def ids(self) -> dict[str, str]:
        return {"request_id": self.request_id, "session_id": self.session_id, "message_id": self.message_id}

    def headers(self) -> dict[str, str]:
        return {"X-Session-Id": self.session_id, "X-Model-Version": self.version}


def event_message(role: str, content: str) -> dict[str, str]:
    """A message as the ChatRequest event's `messages` takes it: a dict that pydantic validates in one pass
    with the event (a ChatMessage built per message cost 5% of a /chat request's CPU)."""
    role = ROLE_ALIASES.get(role, role)
    return {"role": role if role in EVENT_ROLES else "user", "content": content}


class TurnEvents:
    """Publishes a turn's events and records its metrics."""

    def __init__(self, publisher: EventPublisher, metrics: GatewayMetrics, mask: Callable[[str], str]):
        self.publisher = publisher
        self.metrics = metrics
        self.mask = mask

    def request(
        self,
        turn: Turn,
        messages: list[dict[str, str]],
        max_tokens: int | None,
        temperature: float | None,
        prompt_format: str = "chat",
    ) -> None:
        """The ChatRequest event of a turn (messages masked). `prompt_format` "text": `messages` is one user message,
        the exact text the model continued (inference/gateway/completions.py)."""
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
                prompt_format=prompt_format,
                producer="gateway",
            )
        except Exception as exc:  # an event we cannot build must not fail the request; it is visible
            log.error("chat_request event invalid", extra={**turn.ids(), "error": repr(exc)})
            self.metrics.event("failed", 1)
            return
        self.publisher.publish(event)

    def finish(self, turn: Turn) -> None:
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
                    sources=turn.sources or [],
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
