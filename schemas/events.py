"""Event contracts: one frozen pydantic model per topic value, all sharing the envelope.

Envelope (every event): event_id, event_type, schema_version, occurred_at (UTC), producer.
Models forbid unknown fields: a typo in a producer is an error at the edge, not a silent loss.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

Role = Literal["system", "user", "assistant", "tool"]
Status = Literal["ok", "error", "timeout"]
# openai: /v1/chat/completions; session: /chat; sdk: an app's own events; completion: /v1/completions (text or
# fill-in-the-middle); code: /code/complete (an editor's completion)
Route = Literal["openai", "session", "sdk", "completion", "code"]
# chat: `messages` is a conversation the model's chat template renders; text: one user message holding the exact
# text the model continued (a completion or fill-in-the-middle prompt), trained on as it is
PromptFormat = Literal["chat", "text"]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Id = Annotated[str, Field(min_length=1, max_length=200)]
# Bounds on what one event may carry: a message's text, and a conversation's messages. An event over them is
# refused where it is made (the SDK) and dead-lettered with the reason where it is read (the sink).
MAX_TEXT_CHARS = 100_000
MAX_MESSAGES = 512
MAX_REVIEW_NOTES = 4000  # a reviewer's notes on one answer
MAX_SOURCES = 50  # passages one retrieval returns or one answer cites
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Messages = Annotated[list["ChatMessage"], Field(min_length=1, max_length=MAX_MESSAGES)]


def _now() -> datetime:
    return datetime.now(UTC)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ChatMessage(Frozen):
    role: Role
    content: Text


class Source(Frozen):
    """One retrieved passage of the knowledge base, as an answer cites it."""

    document: Id  # the document's id in the knowledge base (its path or name when added)
    version: Annotated[int, Field(ge=1)]  # the document's version the passage came from
    passage: Id  # "<document>#<n>": the passage's id
    score: float  # the retriever's score (fused: reciprocal rank fusion)
    title: Annotated[str, Field(max_length=500)] = ""


Sources = Annotated[list[Source], Field(max_length=MAX_SOURCES)]


class Event(Frozen):
    """The envelope. Subclasses fix `event_type` with a Literal and may bump `schema_version`."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    event_type: str
    schema_version: Literal[1] = 1
    occurred_at: AwareDatetime = Field(default_factory=_now)
    producer: Annotated[str, Field(min_length=1, max_length=100)] = "flywheel"

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


class ChatRequest(Event):
    event_type: Literal["chat_request"] = "chat_request"
    session_id: Id
    message_id: Id
    user_id: Id = "anonymous"
    model_alias: Id
    messages: Messages
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    stream: bool = False
    route: Route = "openai"
    prompt_format: PromptFormat = "chat"


class ChatResponse(Event):
    event_type: Literal["chat_response"] = "chat_response"
    session_id: Id
    message_id: Id
    user_id: Id = "anonymous"
    model_alias: Id
    model_version: Id
    worker: str = ""
    content: Text = ""
    finish_reason: str | None = None
    prompt_tokens: NonNegInt = 0
    completion_tokens: NonNegInt = 0
    ttft_ms: NonNegFloat | None = None
    latency_ms: NonNegFloat
    status: Status = "ok"
    error: str | None = None
    route: Route = "openai"
    sources: Sources = Field(default_factory=list)  # the passages a retrieval-augmented answer was given


class Feedback(Event):
    """A user's verdict on one answer. `kind` "completion" is an editor's accept (thumbs_up) or reject (thumbs_down)
    of a code completion: one verdict scale, so pairs, windows and rollouts read both alike."""

    event_type: Literal["feedback"] = "feedback"
    session_id: Id
    message_id: Id
    user_id: Id = "anonymous"
    feedback: Literal["thumbs_up", "thumbs_down"]
    comment: Annotated[str, Field(max_length=4000)] | None = None
    correction: Annotated[str, Field(min_length=1, max_length=16000)] | None = None
    kind: Literal["rating", "completion"] = "rating"
    passage_ids: Annotated[list[Id], Field(max_length=MAX_SOURCES)] = Field(default_factory=list)  # the answer's


class InferenceLatency(Event):
    event_type: Literal["inference_latency"] = "inference_latency"
    model_version: Id
    worker: str = ""
    session_id: Id
    message_id: Id
    route: Route = "openai"
    prompt_tokens: NonNegInt = 0
    completion_tokens: NonNegInt = 0
    ttft_ms: NonNegFloat | None = None
    latency_ms: NonNegFloat
    tokens_per_s: NonNegFloat = 0.0
    status: Status = "ok"


class MetricsWindow(Event):
    event_type: Literal["metrics_window"] = "metrics_window"
    model_version: Id
    route: Route
    window_start: AwareDatetime
    window_seconds: Annotated[int, Field(gt=0)]
    requests: NonNegInt
    errors: NonNegInt = 0
    timeouts: NonNegInt = 0
    latency_p50_ms: NonNegFloat | None = None
    latency_p90_ms: NonNegFloat | None = None
    latency_p99_ms: NonNegFloat | None = None
    ttft_p50_ms: NonNegFloat | None = None
    ttft_p99_ms: NonNegFloat | None = None
    tokens_per_s: NonNegFloat = 0.0
    thumbs_up: NonNegInt = 0
    thumbs_down: NonNegInt = 0


class DPOPair(Event):
    event_type: Literal["dpo_pair"] = "dpo_pair"
    pair_id: Id
    base_model: Id
    model_version: Id
    prompt: Messages
    chosen: Text | None = None
    rejected: Text
    # where the chosen answer came from: a user's correction, a thumbs-up answer to the same question, the teacher
    # model, an AI judge comparing two answers (`flywheel data judge`), or nowhere yet
    source: Literal["correction", "thumbs_up", "teacher", "judge", "needs_chosen"]
    session_id: Id
    message_id: Id
    feedback_event_id: uuid.UUID
    chosen_message_id: Id | None = None
    user_id: Id | None = None  # who sent the thumbs-down (None: a pair from before this field)
    # A user's correction may wait for a person's review (FLYWHEEL_STREAMS_REVIEW_CORRECTIONS): "pending" pairs
    # train nothing; `flywheel review` re-publishes the pair as "approved" or "rejected". "none": no review asked.
    review: Literal["none", "pending", "approved", "rejected"] = "none"
    prompt_format: PromptFormat = "chat"  # "text": `prompt` is one user message, the raw text the model continued


class RetrainJob(Event):
    event_type: Literal["retrain_job"] = "retrain_job"
    job_id: Id
    base_model: Id
    status: Literal["requested", "started", "succeeded", "failed"]
    pair_ids: list[Id] = Field(default_factory=list)
    parent_version: Id | None = None
    adapter_version: Id | None = None
    verdict: Literal["accepted", "rejected"] | None = None
    error: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class TrainingMetrics(Event):
    """One logged step of a training job (TRL's log: loss, reward margin and accuracy)."""

    event_type: Literal["training_metrics"] = "training_metrics"
    job_id: Id
    base_model: Id
    adapter_version: Id | None = None
    split: Literal["train", "eval"] = "train"
    step: NonNegInt
    epoch: NonNegFloat = 0.0
    loss: float | None = None
    reward_margin: float | None = None
    reward_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    learning_rate: NonNegFloat | None = None


class Deployment(Event):
    event_type: Literal["deployment"] = "deployment"
    alias: Id
    action: Literal["adapter_ready", "canary_started", "step", "hold", "promoted", "rolled_back"]
    version: Id
    previous_version: Id | None = None
    weight: Annotated[int, Field(ge=0, le=100)] | None = None
    reason: str = ""
    adapter_path: str | None = None
    job_id: Id | None = None


class HumanReview(Event):
    """A person's scores of one answer, from a filled review sheet (`flywheel review import`).

    Its event_id is `human_review_id` of what it says: re-importing a sheet repeats ids (the store keeps one row),
    a changed score or note is a new event, and the reviewer's latest one counts (`v_reviewed_accuracy`)."""

    event_type: Literal["human_review"] = "human_review"
    message_id: Id
    model_version: Id
    reviewer: Id
    accuracy: Literal[0, 1]  # 1: the answer is right
    friendliness: Annotated[int, Field(ge=1, le=5)] | None = None
    completeness: Annotated[int, Field(ge=1, le=5)] | None = None
    notes: Annotated[str, Field(max_length=MAX_REVIEW_NOTES)] = ""


HUMAN_REVIEW_NAMESPACE = uuid.UUID("0b6c8f4e-2d1a-4f39-8e57-3c9a1d2f6b84")


def human_review_id(
    message_id: str, reviewer: str, accuracy: int, friendliness: int | None, completeness: int | None, notes: str
) -> uuid.UUID:
    """The event id of a review: the same scores and notes by the same reviewer of the same answer, the same id."""
    name = json.dumps([message_id, reviewer, accuracy, friendliness, completeness, notes], ensure_ascii=False)
    return uuid.uuid5(HUMAN_REVIEW_NAMESPACE, name)


class Retrieval(Event):
    """One knowledge-base lookup the gateway made for a retrieval-augmented answer: the query, what came back
    (ranked, best first) and how long it took. Keyed like the chat events, by session."""

    event_type: Literal["retrieval"] = "retrieval"
    session_id: Id
    message_id: Id  # the answer the passages were given to
    user_id: Id = "anonymous"
    model_alias: Id
    model_version: Id
    query: Text
    retriever: Literal["hybrid", "dense", "bm25"] = "hybrid"
    k: Annotated[int, Field(ge=1, le=MAX_SOURCES)]
    sources: Sources = Field(default_factory=list)
    latency_ms: NonNegFloat
    status: Status = "ok"
    error: str | None = None


class DeadLetter(Event):
    """What a consumer could not use, with why; the payload is kept verbatim (UTF-8, errors replaced)."""

    event_type: Literal["dead_letter"] = "dead_letter"
    source_topic: str
    partition: int = -1
    offset: int = -1
    key: str | None = None
    payload: str
    error_type: str
    error: str


# Every writer of dead letters (the sink, the streams) names a letter by its input's position, in one namespace:
# one position has one dead-letter id whoever writes it, and a replay dead-letters once.
DEAD_LETTER_NAMESPACE = uuid.UUID("6f1c1d2e-6a47-4f7e-9d1b-5a0c2b7e9f10")


def dead_letter(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | str | None,
    payload: bytes | str | None,
    error_type: str,
    error: str,
    producer: str,
    name: str | None = None,
) -> DeadLetter:
    """A DeadLetter whose event_id comes from `name` (default "topic/partition/offset"): re-sent copies collapse.

    Bytes are decoded as UTF-8 with errors replaced, so the payload is kept whatever it was."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    if not isinstance(payload, str):
        payload = (payload or b"").decode("utf-8", "replace")
    return DeadLetter(
        event_id=uuid.uuid5(DEAD_LETTER_NAMESPACE, name or f"{topic}/{partition}/{offset}"),
        producer=producer,
        source_topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        payload=payload,
        error_type=error_type,
        error=error,
    )


EVENT_TYPES: tuple[type[Event], ...] = (
    ChatRequest,
    ChatResponse,
    Feedback,
    InferenceLatency,
    MetricsWindow,
    DPOPair,
    RetrainJob,
    TrainingMetrics,
    Deployment,
    HumanReview,
    Retrieval,
    DeadLetter,
)
EVENT_BY_TYPE: dict[str, type[Event]] = {cls.model_fields["event_type"].default: cls for cls in EVENT_TYPES}
