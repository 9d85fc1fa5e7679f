"""The code assistant's routes: OpenAI's legacy `POST /v1/completions` (a text prompt; with `suffix`, fill in the
middle) and `POST /code/complete` (an editor plugin's completion at the cursor).

Both build the text the model continues (inference/gateway/fim.py: the model's FIM tokens, or the plain-text
template) and send it to a worker's `/v1/completions` (never `suffix`: vLLM does not take it) through the chat
routes' machinery (inference/gateway/serving.py): the same admission (key, scope "chat", rate and token limits,
session claim, the message's owner remembered for /feedback), version routing, retries and timeouts, and the same
events, with `route` "completion" or "code" and `prompt_format` "text": the ChatRequest's one user message is the
exact prompt the model continued, which is what a rejected completion's DPO pair trains on.

Completion ids start with "cmpl-" (`new_completion_id`): /feedback takes an editor's "accepted" / "rejected" on them
(thumbs up / down with kind "completion"; protocol.feedback_verdict).

Reads: Redis (keys, rate limits, sessions, message owners), the inference workers.
Writes: chat.requests, chat.responses, inference.latency (through the chat routes' TurnEvents).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi.responses import Response, StreamingResponse

from inference.gateway.admission import Caller
from inference.gateway.fim import FimTemplate
from inference.gateway.protocol import (
    CodeCompletionRequest,
    CompletionRequest,
    GatewayError,
    new_completion_id,
)
from inference.gateway.serving import JSON, ChatServing, session_id_of
from inference.gateway.turns import Turn
from inference.gateway.upstream import COMPLETIONS_PATH

log = logging.getLogger(__name__)


class CompletionServing:
    """/v1/completions and /code/complete, on the shared steps of `ChatServing` (turns, upstream calls, relay)."""

    def __init__(self, chat: ChatServing, template: FimTemplate):
        self.chat = chat
        self.template = template

    async def completions(
        self, req: CompletionRequest, caller: Caller, session_header: str | None, state: Any
    ) -> Response:
        self.chat.check_openai_request(req, caller)
        prompt = self.template.prompt(req.prompt, req.suffix)
        if not prompt:
            raise GatewayError(
                422, "invalid request: prompt: empty, nothing to continue", "invalid_request", param="prompt"
            )
        session_id = session_id_of(session_header)
        turn = await self._admit(
            "completion", caller, session_id, req.user or caller.user_id, req.model, req.stream, session_header
        )
        state.model_version = turn.version
        self.chat.events.request(turn, [{"role": "user", "content": prompt}], req.max_tokens, req.temperature, "text")
        body = req.upstream_body(turn.version, prompt)
        if req.stream:
            stream = await self.chat._open_stream(turn, body, COMPLETIONS_PATH)
            return StreamingResponse(
                self.chat._relay(turn, stream, req.wants_usage), media_type="text/event-stream", headers=turn.headers()
            )
        data = await self.chat._complete(turn, body, COMPLETIONS_PATH)
        data["id"] = turn.message_id
        return Response(orjson.dumps(data), media_type=JSON, headers=turn.headers())

    async def code_complete(self, req: CodeCompletionRequest, caller: Caller, state: Any) -> Response:
        session_id = session_id_of(req.session_id, "session_id")
        prompt = self.template.prompt(req.prefix, req.suffix, req.language, req.path)
        turn = await self._admit("code", caller, session_id, caller.user_id, req.model, False, req.session_id)
        state.model_version = turn.version
        self.chat.events.request(turn, [{"role": "user", "content": prompt}], req.max_tokens, req.temperature, "text")
        body: dict[str, Any] = {
            "model": turn.version,
            "prompt": prompt,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "stream": False,
        }
        if req.stop is not None:
            body["stop"] = req.stop
        data = await self.chat._complete(turn, body, COMPLETIONS_PATH)
        out = {
            "message_id": turn.message_id,
            "session_id": session_id,
            "model": turn.version,
            "completion": turn.content,
            "finish_reason": turn.finish_reason,
            "usage": data.get("usage"),
        }
        return Response(orjson.dumps(out), media_type=JSON, headers=turn.headers())

    async def _admit(
        self,
        route: str,
        caller: Caller,
        session_id: str,
        user_id: str,
        model: str | None,
        stream: bool,
        named_session: str | None,
    ) -> Turn:
        """Rate and token limits, the answer's owner remembered (a session the client named is claimed for the
        user: 403 when it is another's), then the turn with its version: as the chat route admits."""
        message_id = new_completion_id()
        await self.chat.gate.admit_and_remember(
            caller.key, message_id, user_id, session_id, claim=named_session is not None
        )
        return self.chat._turn(route, caller, session_id, user_id, model, stream, message_id)
