"""Request and response models of the gateway's endpoints, and the OpenAI-style error body.

The OpenAI-compatible edge (`ChatCompletionRequest`) accepts unknown fields and forwards them
upstream untouched (vLLM understands many extensions); the session and feedback APIs are ours
and forbid unknown fields, like the events.
"""

from __future__ import annotations

import random
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

M = TypeVar("M", bound=BaseModel)
Temperature = Annotated[float, Field(ge=0, le=2)]
MaxTokens = Annotated[int, Field(ge=1, le=1_000_000)]


def new_message_id() -> str:
    """The id of one answer, returned as the completion `id` and used by /feedback.

    128 random bits (not a secret: feedback checks the owner); getrandbits is ~10x cheaper than uuid4."""
    return f"chatcmpl-{random.getrandbits(128):032x}"


class OpenMessage(BaseModel):
    """One chat message as OpenAI clients send it; content may be text, parts or null (tool calls)."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message as plain text (text parts joined), for events and history."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(str(p.get("text", "")) for p in self.content if isinstance(p, dict))


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Unknown fields are kept (`model_extra`) and sent upstream."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None  # None: the gateway's default alias
    messages: Annotated[list[OpenMessage], Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    user: Annotated[str, Field(min_length=1, max_length=200)] | None = None

    @property
    def wants_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def upstream_body(self, model_version: str) -> dict[str, Any]:
        """The body sent to a worker: the client's, with the chosen version as `model` and, when
        streaming, usage requested so that token counts are known at the end."""
        body = self.model_dump(exclude_none=True)
        body["model"] = model_version
        if self.stream:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        return body


class SessionChatRequest(BaseModel):
    """POST /chat and /chat/stream: one user message in a conversation kept by the gateway."""

    model_config = ConfigDict(extra="forbid")

    session_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    message: Annotated[str, Field(min_length=1, max_length=32_000)]
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    model: str | None = None  # an alias or version; default: the gateway's alias


class SessionChatResponse(BaseModel):
    session_id: str
    message_id: str
    model: str
    content: str
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


class FeedbackRequest(BaseModel):
    """POST /feedback."""

    model_config = ConfigDict(extra="forbid")

    session_id: Annotated[str, Field(min_length=1, max_length=200)]
    message_id: Annotated[str, Field(min_length=1, max_length=200)]
    feedback: Literal["thumbs_up", "thumbs_down"]
    comment: Annotated[str, Field(max_length=4000)] | None = None
    correction: Annotated[str, Field(min_length=1, max_length=16000)] | None = None


class FeedbackAccepted(BaseModel):
    event_id: str
    message_id: str
    status: Literal["accepted"] = "accepted"


# -- errors ------------------------------------------------------------------------------------

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class GatewayError(Exception):
    """An error the gateway answers with `status` and an OpenAI-style JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or ERROR_TYPES.get(status, "error")
        self.headers = headers
        self.param = param

    def body(self) -> bytes:
        return error_body(self.status, self.message, self.code, self.param)


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    """{"error": {"message", "type", "code", "param"}} as OpenAI clients expect it."""
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
                "code": code,
                "param": param,
            }
        }
    )


def parse_request(model: type[M], raw: bytes) -> M:
    """The request body as `model` (JSON parsed and validated in one pass); GatewayError 422 when invalid."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        message, field = describe_validation_errors(list(exc.errors(include_url=False)))
        raise GatewayError(422, message, "invalid_request", param=field) from None


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A readable message naming the offending field(s), and the first field's dotted path."""
    parts = []
    first_field = None
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        field = ".".join(loc) or "<body>"
        if first_field is None:
            first_field = field
        parts.append(f"{field}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts), first_field
