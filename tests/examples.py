"""One valid example of every event, shared by unit and integration tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from schemas.events import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    DeadLetter,
    Deployment,
    DPOPair,
    Event,
    Feedback,
    HumanReview,
    InferenceLatency,
    MetricsWindow,
    RetrainJob,
    TrainingMetrics,
)

PROMPT = [
    ChatMessage(role="system", content="You are helpful."),
    ChatMessage(role="user", content="Where is my order?"),
]


def examples() -> list[Event]:
    return [
        ChatRequest(
            session_id="s1",
            message_id="m1",
            user_id="u1",
            model_alias="support",
            messages=PROMPT,
            max_tokens=16,
            temperature=0.2,
        ),
        ChatResponse(
            session_id="s1",
            message_id="m1",
            user_id="u1",
            model_alias="support",
            model_version="tiny@v1",
            worker="w0",
            content="It ships today.",
            finish_reason="stop",
            prompt_tokens=12,
            completion_tokens=5,
            ttft_ms=8.5,
            latency_ms=30.1,
        ),
        Feedback(
            session_id="s1",
            message_id="m1",
            user_id="u1",
            feedback="thumbs_down",
            comment="wrong",
            correction="It shipped yesterday.",
        ),
        InferenceLatency(
            model_version="tiny@v1",
            worker="w0",
            session_id="s1",
            message_id="m1",
            prompt_tokens=12,
            completion_tokens=5,
            ttft_ms=8.5,
            latency_ms=30.1,
            tokens_per_s=166.0,
        ),
        MetricsWindow(
            model_version="tiny@v1",
            route="openai",
            window_start=datetime(2026, 1, 1, tzinfo=UTC),
            window_seconds=10,
            requests=5,
            errors=1,
            latency_p50_ms=20.0,
            latency_p99_ms=80.0,
            thumbs_down=1,
        ),
        DPOPair(
            pair_id="p1",
            base_model="tiny",
            model_version="tiny",
            prompt=PROMPT,
            chosen="It shipped yesterday.",
            rejected="It ships today.",
            source="correction",
            session_id="s1",
            message_id="m1",
            feedback_event_id=uuid.uuid4(),
        ),
        RetrainJob(job_id="j1", base_model="tiny", status="requested", pair_ids=["p1", "p2"], metrics={"loss": 0.5}),
        TrainingMetrics(
            job_id="j1",
            base_model="tiny",
            step=10,
            epoch=0.5,
            loss=0.69,
            reward_margin=0.01,
            reward_accuracy=0.5,
            learning_rate=1e-4,
        ),
        Deployment(
            alias="support",
            action="canary_started",
            version="support@v2",
            previous_version="support@v1",
            weight=5,
            reason="adapter passed the gate",
        ),
        HumanReview(
            message_id="m1",
            model_version="tiny@v1",
            reviewer="alice",
            accuracy=0,
            friendliness=4,
            completeness=2,
            notes="It has not shipped yet.",
        ),
        DeadLetter(
            source_topic="chat.responses",
            partition=0,
            offset=42,
            key="s1",
            payload="{bad",
            error_type="not_json",
            error="not a JSON object",
        ),
    ]
