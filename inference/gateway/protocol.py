"""Request and response models of the gateway's endpoints, and the OpenAI-style error body.

The OpenAI-compatible edge (`ChatCompletionRequest`; `CompletionRequest` for /v1/completions) declares the fields
a single answer uses, with bounds, and forwards those; any other field is refused (422) unless the gateway's
settings allow it (`FLYWHEEL_GATEWAY_EXTRA_FIELDS`). The session, code completion and feedback APIs are ours and
forbid unknown fields, like the events.
"""

from __future__ import annotations

import random
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

M = TypeVar("M", bound=BaseModel)
Temperature = Annotated[float, Field(ge=0, le=2)]
MaxTokens = Annotated[int, Field(ge=1, le=1_000_000)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
MAX_MESSAGES = 256
MAX_CONTENT_CHARS = 32_000


def new_message_id() -> str:
    """The id of one answer, returned as the completion `id` and used by /feedback.

    128 random bits (not a secret: feedback checks the owner); getrandbits is ~10x cheaper than uuid4."""
    return f"chatcmpl-{random.getrandbits(128):032x}"


INT64 = (-(2**63), 2**63 - 1)  # what the workers' JSON (and ours, orjson) carries; larger integers are refused


def _fits_64_bits(value: Any) -> bool:
    """Whether every integer in a free-form JSON value fits in 64 bits."""
    if isinstance(value, bool) or not isinstance(value, int | dict | list):
        return True
    if isinstance(value, int):
        return INT64[0] <= value <= INT64[1]
    items = value.values() if isinstance(value, dict) else value
    return all(_fits_64_bits(v) for v in items)


def _check_free_form(*values: Any) -> None:
    if not all(_fits_64_bits(v) for v in values):
        raise ValueError("integers must fit in 64 bits")


class OpenMessage(BaseModel):
    """One chat message as OpenAI clients send it; content may be text, parts or null (tool calls)."""

    model_config = ConfigDict(extra="allow")

    role: Annotated[str, Field(max_length=32)]
    content: (
        Annotated[str, Field(max_length=MAX_CONTENT_CHARS)]
        | Annotated[list[dict[str, Any]], Field(max_length=64)]
        | None
    ) = None

    @model_validator(mode="after")
    def _free_form_fits(self) -> OpenMessage:
        _check_free_form(self.model_extra, self.content)
        return self

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


class _OpenAIRequest(BaseModel):
    """What the two OpenAI routes' requests share: extra fields kept for the caller to check (`unknown_fields`),
    and usage always asked of a streaming worker, so that token counts are known at the end."""

    model_config = ConfigDict(extra="allow")
    stream: bool = False
    stream_options: StreamOptions | None = None

    def unknown_fields(self, allowed: frozenset[str] | set[str] = frozenset()) -> list[str]:
        """Fields of the request that are neither declared nor in `allowed`, sorted."""
        return sorted(set(self.model_extra or ()) - set(allowed))

    @property
    def wants_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _with_usage(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body


class ChatCompletionRequest(_OpenAIRequest):
    """POST /v1/chat/completions: OpenAI's fields for one answer, and vLLM's sampling extensions, with bounds.

    Other fields are kept in `model_extra` for the caller to check against the allowed extras
    (`unknown_fields`): refused by default, forwarded when the settings allow them."""

    model: Annotated[str, Field(max_length=200)] | None = None  # None: the gateway's default alias
    messages: Annotated[list[OpenMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    user: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    # one answer per message: the events, feedback and training pairs follow one answer
    n: Literal[1] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: Annotated[str, Field(max_length=200)] | Annotated[list[str], Field(max_length=4)] | None = None
    seed: Annotated[int, Field(ge=INT64[0], le=INT64[1])] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=300)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: dict[str, Any] | None = None
    top_k: Annotated[int, Field(ge=-1, le=1000)] | None = None  # vLLM
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None  # vLLM
    repetition_penalty: Annotated[float, Field(gt=0, le=2)] | None = None  # vLLM

    @model_validator(mode="after")
    def _free_form_fits(self) -> ChatCompletionRequest:
        _check_free_form(
            self.model_extra, self.response_format, self.stream_options and self.stream_options.model_extra
        )
        return self

    def upstream_body(self, model_version: str) -> dict[str, Any]:
        """The body sent to a worker: the client's, with the chosen version as `model` and, when
        streaming, usage requested so that token counts are known at the end."""
        body = self.model_dump(exclude_none=True)
        body["model"] = model_version
        return self._with_usage(body)


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
    """POST /feedback. "accepted" / "rejected": an editor's verdict on a code completion (`feedback_verdict`)."""

    model_config = ConfigDict(extra="forbid")

    session_id: Annotated[str, Field(min_length=1, max_length=200)]
    message_id: Annotated[str, Field(min_length=1, max_length=200)]
    feedback: Literal["thumbs_up", "thumbs_down", "accepted", "rejected"]
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


# -- completions: /v1/completions and /code/complete (inference/gateway/completions.py) ------------------------

COMPLETION_ID_PREFIX = "cmpl-"  # OpenAI's prefix of legacy completions; /feedback tells a completion by it
EDITOR_VERDICTS = {"accepted": "thumbs_up", "rejected": "thumbs_down"}
MAX_CODE_TOKENS = 4096
Verdict = Literal["thumbs_up", "thumbs_down"]
FeedbackKind = Literal["rating", "completion"]
Stop = Annotated[str, Field(max_length=200)] | Annotated[list[str], Field(max_length=4)]


def new_completion_id() -> str:
    """The id of one completion (its message id): like `new_message_id`, with the completions' prefix."""
    return f"{COMPLETION_ID_PREFIX}{random.getrandbits(128):032x}"


class CompletionRequest(_OpenAIRequest):
    """POST /v1/completions: OpenAI's legacy completion of one text prompt; with `suffix`, fill-in-the-middle.

    Like the chat route, other fields are kept in `model_extra` and refused unless the settings allow them."""

    model: Annotated[str, Field(max_length=200)] | None = None  # None: the gateway's default alias
    prompt: Annotated[str, Field(max_length=MAX_CONTENT_CHARS)]  # a string, or a list of exactly one string
    suffix: Annotated[str, Field(max_length=MAX_CONTENT_CHARS)] | None = None  # text after the gap: fill the middle
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: Stop | None = None
    seed: Annotated[int, Field(ge=INT64[0], le=INT64[1])] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    n: Literal[1] | None = None  # one completion per message: feedback and pairs follow one answer
    echo: bool | None = None  # false only: the answer is the completion
    logprobs: int | None = None  # not returned

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_text_prompt(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        if len(value) == 1 and isinstance(value[0], str):
            return value[0]
        if value and all(isinstance(v, int) or isinstance(v, list) for v in value):
            raise ValueError("token ids are not supported: send the prompt as text")
        raise ValueError("one prompt per request: send a string (or a list of exactly one string)")

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("echo is not supported: the answer holds the completion only")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("logprobs are not returned by this gateway: leave the field out")
        return value

    @model_validator(mode="after")
    def _free_form_fits(self) -> CompletionRequest:
        _check_free_form(self.model_extra, self.stream_options and self.stream_options.model_extra)
        return self

    def upstream_body(self, model_version: str, prompt: str) -> dict[str, Any]:
        """The body sent to a worker's /v1/completions: the built `prompt` (never `suffix`: vLLM does not take it),
        the chosen version as `model`, the sampling fields, and usage asked for when streaming."""
        body = self.model_dump(exclude_none=True, exclude={"prompt", "suffix", "user", "n", "echo", "logprobs"})
        body["model"] = model_version
        body["prompt"] = prompt
        return self._with_usage(body)


Language = Annotated[str, Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_+#.\-]+$")]
FilePath = Annotated[str, Field(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")]


class CodeCompletionRequest(BaseModel):
    """POST /code/complete: the code around an editor's cursor; the answer is the code to insert there.

    `language` and `path` head the plain-text prompt (inference/gateway/fim.py); `session_id` groups an editing
    session's completions (a new one when absent); the answer's `message_id` is what /feedback accepts or rejects."""

    model_config = ConfigDict(extra="forbid")

    prefix: Annotated[str, Field(max_length=MAX_CONTENT_CHARS)]  # the code before the cursor
    suffix: Annotated[str, Field(max_length=MAX_CONTENT_CHARS)] = ""  # the code after it
    language: Language | None = None  # e.g. "python"
    path: FilePath | None = None  # the file's path in the project, e.g. "src/shop/cart.py"
    model: Annotated[str, Field(max_length=200)] | None = None  # an alias or version; default: the gateway's alias
    max_tokens: Annotated[int, Field(ge=1, le=MAX_CODE_TOKENS)] = 64
    temperature: Temperature = 0.2
    stop: Stop | None = None
    session_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None

    @model_validator(mode="after")
    def _something_to_complete(self) -> CodeCompletionRequest:
        if not self.prefix and not self.suffix:
            raise ValueError("prefix and suffix are both empty: there is no code to complete")
        return self


class CodeCompletionResponse(BaseModel):
    message_id: str  # for /feedback: "accepted" or "rejected"
    session_id: str
    model: str  # the version that answered
    completion: str  # the code to insert at the cursor
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


def feedback_verdict(req: FeedbackRequest) -> tuple[Verdict, FeedbackKind]:
    """(verdict, kind) of a feedback request. Any verdict on a completion (an id from /v1/completions or
    /code/complete) has kind "completion"; an editor's "accepted" / "rejected" are thumbs up / down, and only a
    completion takes them (422 on a chat answer: the code acceptance view must count editors' verdicts only)."""
    completion = req.message_id.startswith(COMPLETION_ID_PREFIX)
    if req.feedback in EDITOR_VERDICTS:
        if not completion:
            raise GatewayError(
                422,
                f"feedback {req.feedback!r} is for code completions (ids {COMPLETION_ID_PREFIX}...); "
                "rate a chat answer with thumbs_up or thumbs_down",
                "invalid_feedback",
                param="feedback",
            )
        return EDITOR_VERDICTS[req.feedback], "completion"  # type: ignore[return-value]
    return req.feedback, "completion" if completion else "rating"  # type: ignore[return-value]
