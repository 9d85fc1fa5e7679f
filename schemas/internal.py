"""Records of the streams' internal topics: frozen models like the events, checked when read.

They travel between the agents of one faust app (schemas/topology.py names the topics); nothing outside the
streams reads them. A change of field is a change of what a running app's in-flight messages hold: add fields
with defaults.
"""

from __future__ import annotations

from typing import Any, Literal

from schemas.events import Frozen


class JoinedFeedback(Frozen):
    """streams.feedback-joined: one feedback with its request and answer, keyed by the normalized question."""

    feedback_id: str
    feedback: Literal["thumbs_up", "thumbs_down"]
    occurred_at: float  # the feedback's time, epoch seconds
    session_id: str
    message_id: str
    user_id: str = "anonymous"  # who sent the feedback: a job needs pairs from several users
    correction: str | None = None
    comment: str | None = None
    partition: int  # where the feedback was read (for its dead letter)
    offset: int
    model_version: str
    route: str
    status: str  # the answer's status: ok, error, timeout
    messages: list[dict[str, Any]]  # the prompt, as sent
    answer: str | None = None
    question: str  # normalized: where a question's thumbs-up answers meet its thumbs-downs
    # "text": `messages` is one user message, the exact text a completion continued (ChatRequest.prompt_format)
    prompt_format: Literal["chat", "text"] = "chat"


class TriggerInput(Frozen):
    """streams.trigger-input: a usable pair, a job's status, or a clock tick, in one partition's order."""

    kind: Literal["pair", "job", "tick"]
    base_model: str | None = None  # None for a tick: every model decides again
    pair_id: str | None = None
    user_id: str | None = None  # who sent the pair's thumbs-down
    usable: bool = False  # a pair with a chosen answer
    job_id: str | None = None
    status: str | None = None
    pair_ids: list[str] = []
    at: float | None = None  # the job event's time, epoch seconds


TICK = TriggerInput(kind="tick")
