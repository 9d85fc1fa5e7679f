"""Feedback -> DPO pairs, in two steps that the agents in streams/agents/pairs.py drive.

1. `FeedbackJoiner` (source partition = session): remembers each message's prompt (ChatRequest) and
   answer (ChatResponse) for `context_ttl_s`; joins every Feedback with them. Feedback that comes before
   its response (or for an unknown message) waits in the pending table for `pending_timeout_s`, then
   becomes a DeadLetter for `chat.feedback.dlq`. Joined feedback is re-keyed by normalized question.
2. `PairBuilder` (partition = normalized question, so one question's thumbs-up answers and thumbs-downs
   meet in one place): indexes thumbs-up answers per question; for a thumbs-down builds a DPOPair with
   chosen from, in order, the correction, the best thumbs-up answer, the teacher, else `needs_chosen`;
   masks PII; drops low-quality pairs and near-duplicates (MinHash).

A completion's prompt (ChatRequest.prompt_format "text": one user message, the exact text the model continued) keeps
its format on the joined feedback and the pair; its question key is the exact prompt (hashed) and its answers are
compared exactly (pairing.answer_key); the teacher, a chat model, is not asked for a completion's chosen text.

Both take their tables as plain mutable mappings (faust tables in the worker, dicts in unit tests).
"""

from __future__ import annotations

import heapq
import logging
import uuid
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from schemas import events
from schemas.events import ChatMessage, ChatRequest, ChatResponse, DeadLetter, DPOPair, Feedback
from schemas.internal import JoinedFeedback
from schemas.text import mask_pii
from schemas.topics import CHAT_FEEDBACK
from streams import pairing

log = logging.getLogger(__name__)

PRODUCER = "flywheel-streams"

Teacher = Callable[[list[dict]], Awaitable[str | None]]


def dead_letter(
    topic: str, partition: int, offset: int, key: str | None, payload: bytes | str, error_type: str, error: str
) -> DeadLetter:
    """What the streams cannot process, named by its position (schemas.events.dead_letter): a replay dead-letters
    once, under the same id the sink would give it."""
    return events.dead_letter(topic, partition, offset, key, payload, error_type, error, PRODUCER)


def question_of(messages: list[dict]) -> str:
    """The last user message: what the answer answers."""
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    return ""


def question_key(messages: list[dict], prompt_format: str = "chat") -> str:
    """Where an answer's thumbs-ups and thumbs-downs meet: the normalized last user message, or for a text prompt
    the exact prompt (pairing.text_prompt_key)."""
    question = question_of(messages)
    if prompt_format == "text":
        return pairing.text_prompt_key(question) if question else ""
    return pairing.normalize_question(question)


def question_partition(question: str, partitions: int) -> int:
    return zlib.crc32(question.encode()) % partitions


@dataclass
class JoinOutput:
    joined: list[JoinedFeedback] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)  # event ids of feedback dead-lettered after its wait


class FeedbackJoiner:
    def __init__(
        self,
        context: MutableMapping,
        pending: MutableMapping,
        context_ttl_s: float,
        pending_timeout_s: float,
        catch_up_s: float = 0.0,
    ):
        self.context = context
        self.pending = pending
        self.context_ttl_s = context_ttl_s
        self.pending_timeout_s = pending_timeout_s
        self.catch_up_s = catch_up_s  # extra wait while the partition's requests/responses are read behind
        # In-memory expiry indexes per partition, rebuilt from the tables after recovery (`index`).
        self._expiry: dict[int, list[tuple[float, str]]] = {}
        self._deadlines: dict[int, list[tuple[float, str]]] = {}

    def index(self) -> None:
        """Rebuild the expiry indexes from the tables (after recovery)."""
        self._expiry.clear()
        self._deadlines.clear()
        for mid, ctx in self.context.items():
            heapq.heappush(self._expiry.setdefault(ctx["p"], []), (ctx["at"] + self.context_ttl_s, mid))
        for mid, waiting in self.pending.items():
            for item in waiting:
                heapq.heappush(self._deadlines.setdefault(item["partition"], []), (item["deadline"], mid))

    def _remember(self, message_id: str, partition: int, now: float, **fields: Any) -> JoinOutput:
        ctx = dict(self.context.get(message_id) or {})
        ctx.update(fields, p=partition, at=now)
        self.context[message_id] = ctx
        heapq.heappush(self._expiry.setdefault(partition, []), (now + self.context_ttl_s, message_id))
        out = JoinOutput()
        if "messages" in ctx and "answer" in ctx and message_id in self.pending:
            for item in self.pending.pop(message_id):
                out.joined.append(self._join(Feedback.model_validate(item["fb"]), ctx, item))
        return out

    def on_request(self, request: ChatRequest, partition: int, now: float) -> JoinOutput:
        messages = [m.model_dump() for m in request.messages]
        return self._remember(
            request.message_id, partition, now, messages=messages, prompt_format=request.prompt_format
        )

    def on_response(self, response: ChatResponse, partition: int, now: float) -> JoinOutput:
        return self._remember(
            response.message_id,
            partition,
            now,
            answer=response.content,
            status=response.status,
            model_version=response.model_version,
            route=response.route,
        )

    def on_feedback(self, feedback: Feedback, partition: int, offset: int, now: float) -> JoinOutput:
        item = {
            "fb": feedback.model_dump(mode="json"),
            "partition": partition,
            "offset": offset,
            "deadline": now + self.pending_timeout_s,
        }
        ctx = self.context.get(feedback.message_id)
        if ctx is not None and "messages" in ctx and "answer" in ctx:
            return JoinOutput(joined=[self._join(feedback, ctx, item)])
        waiting = list(self.pending.get(feedback.message_id) or [])
        if all(w["fb"]["event_id"] != item["fb"]["event_id"] for w in waiting):  # a replay waits once
            waiting.append(item)
        self.pending[feedback.message_id] = waiting
        heapq.heappush(self._deadlines.setdefault(partition, []), (item["deadline"], feedback.message_id))
        return JoinOutput()

    def sweep(self, partition: int, now: float, behind: bool = False) -> JoinOutput:
        """Forget expired answers; dead-letter feedback that waited too long. Only `partition`'s keys.

        `behind`: this partition's requests or responses are not read up to the end yet (a catch-up), so a
        waiting feedback's answer may still come: the wait is extended by `catch_up_s`."""
        out = JoinOutput()
        expiry = self._expiry.get(partition, [])
        while expiry and expiry[0][0] <= now:
            _, mid = heapq.heappop(expiry)
            ctx = self.context.get(mid)
            if ctx is not None and ctx["at"] + self.context_ttl_s <= now:
                del self.context[mid]
        cutoff = now - self.catch_up_s if behind else now
        deadlines = self._deadlines.get(partition, [])
        while deadlines and deadlines[0][0] <= cutoff:
            _, mid = heapq.heappop(deadlines)
            waiting = self.pending.get(mid)
            if not waiting:
                continue
            keep = [w for w in waiting if w["deadline"] > cutoff]
            for item in waiting:
                if item["deadline"] <= cutoff:
                    fb, waited = item["fb"], now - item["deadline"] + self.pending_timeout_s
                    out.dead.append(
                        dead_letter(
                            CHAT_FEEDBACK.name,
                            item["partition"],
                            item["offset"],
                            fb["session_id"],
                            Feedback.model_validate(fb).model_dump_json(),
                            "unmatched_feedback",
                            f"no request and response for message {mid!r} within {waited:.0f} s",
                        )
                    )
                    out.expired.append(fb["event_id"])
            if keep:
                self.pending[mid] = keep
            else:
                del self.pending[mid]
        return out

    @staticmethod
    def _join(feedback: Feedback, ctx: dict[str, Any], item: dict[str, Any]) -> JoinedFeedback:
        prompt_format = ctx.get("prompt_format", "chat")  # context remembered before completions had none
        return JoinedFeedback(
            feedback_id=str(feedback.event_id),
            feedback=feedback.feedback,
            occurred_at=feedback.occurred_at.timestamp(),
            session_id=feedback.session_id,
            message_id=feedback.message_id,
            user_id=feedback.user_id,
            correction=feedback.correction,
            comment=feedback.comment,
            partition=item["partition"],
            offset=item["offset"],
            model_version=ctx["model_version"],
            route=ctx["route"],
            status=ctx["status"],
            messages=ctx["messages"],
            answer=ctx["answer"],
            question=question_key(ctx["messages"], prompt_format),
            prompt_format=prompt_format,
        )


@dataclass
class PairOutcome:
    pair: DPOPair | None = None
    dead: DeadLetter | None = None
    dropped: str | None = None  # why a thumbs-down made no pair (filters); logged and counted


class PairBuilder:
    def __init__(
        self,
        answers: MutableMapping,
        base_model: str,
        dedup: pairing.NearDuplicateFilter,
        min_chars: int,
        max_chars: int,
        teacher: Teacher | None = None,
        review_corrections: bool = False,
    ):
        self.answers = answers
        self.base_model = base_model
        self.dedup = dedup
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.teacher = teacher
        self.review_corrections = review_corrections  # correction pairs wait for `flywheel review`

    async def on_joined(self, rec: JoinedFeedback) -> PairOutcome:
        answer = rec.answer or ""
        exact = rec.prompt_format == "text"
        if rec.feedback == "thumbs_up":
            if rec.status == "ok" and answer.strip() and rec.question:
                entries = self.answers.get(rec.question) or []
                self.answers[rec.question] = pairing.record_thumbs_up(
                    entries, answer, rec.message_id, rec.occurred_at, exact=exact
                )
            return PairOutcome()
        if rec.status != "ok" or not answer.strip():
            return PairOutcome(
                dead=dead_letter(
                    CHAT_FEEDBACK.name,
                    rec.partition,
                    rec.offset,
                    rec.session_id,
                    _payload(rec),
                    "no_answer",
                    f"thumbs_down on message {rec.message_id!r} with status {rec.status!r} and no answer text",
                )
            )
        chosen, source, chosen_message_id = await self._chosen(rec, answer)
        problem = pairing.quality_problem(chosen, answer, self.min_chars, self.max_chars, exact=exact)
        if problem:
            return PairOutcome(dropped=problem)
        prompt = [ChatMessage(role=m["role"], content=mask_pii(m["content"])) for m in rec.messages]
        pair_id = pairing.pair_id_for(rec.feedback_id)
        duplicate = self.dedup.check_and_add(pair_id, pairing.dedup_text(rec.question, answer, chosen))
        if duplicate:
            return PairOutcome(dropped=f"near-duplicate of pair {duplicate}")
        pair = DPOPair(
            event_id=uuid.uuid5(pairing.PAIR_NAMESPACE, pair_id),
            producer=PRODUCER,
            pair_id=pair_id,
            base_model=self.base_model,
            model_version=rec.model_version,
            prompt=prompt,
            chosen=mask_pii(chosen) if chosen is not None else None,
            rejected=mask_pii(answer),
            source=source,  # type: ignore[arg-type]
            session_id=rec.session_id,
            message_id=rec.message_id,
            feedback_event_id=uuid.UUID(rec.feedback_id),
            chosen_message_id=chosen_message_id,
            user_id=rec.user_id,
            review="pending" if self.review_corrections and source == "correction" else "none",
            prompt_format=rec.prompt_format,
        )
        return PairOutcome(pair=pair)

    async def _chosen(self, rec: JoinedFeedback, answer: str) -> tuple[str | None, str, str | None]:
        if rec.correction and rec.correction.strip():
            return rec.correction, "correction", None
        rejected_key = pairing.answer_key(answer, exact=rec.prompt_format == "text")
        entries = [e for e in (self.answers.get(rec.question) or []) if e["key"] != rejected_key]
        best = pairing.best_answer(entries) if rec.question else None
        if best is not None:
            return best["answer"], "thumbs_up", best["message_id"]
        if self.teacher is not None and rec.prompt_format == "chat":
            taught = await self.teacher(rec.messages)
            if taught:
                return taught, "teacher", None
        return None, "needs_chosen", None


def _payload(rec: JoinedFeedback) -> str:
    return rec.model_dump_json(include={"feedback_id", "session_id", "message_id", "feedback"})
