"""Feedback -> DPO pairs: join feedback with its prompt and answer, then build pairs per question.

chat.requests + chat.responses + chat.feedback + streams.pair-ticks
                                     --[join_feedback]-----> streams.feedback-joined, chat.feedback.dlq
                                        (tables pair-context, pair-pending)
streams.feedback-joined --[build_pairs]--> dpo.pairs, chat.feedback.dlq   (table pair-answers)
[pair_tick timer] --> streams.pair-ticks (every partition)
"""

from __future__ import annotations

import logging
import time

import faust
import httpx
from faust.types import TP

from schemas.codec import decode, encode
from schemas.errors import EventError
from schemas.events import ChatRequest, ChatResponse, DeadLetter, Feedback
from schemas.internal import JoinedFeedback
from schemas.topics import CHAT_FEEDBACK, CHAT_REQUESTS, CHAT_RESPONSES
from schemas.topology import PAIR_TICKS
from streams import counters
from streams.pairing import NearDuplicateFilter
from streams.pairs import FeedbackJoiner, JoinOutput, PairBuilder, question_partition
from streams.settings import StreamSettings
from streams.teacher import ask_teacher
from streams.windows import WindowBook
from streams.wiring import Channels, Shared

log = logging.getLogger(__name__)

TABLE_PAIR_CONTEXT = "pair-context"
TABLE_PAIR_PENDING = "pair-pending"
TABLE_PAIR_ANSWERS = "pair-answers"
AGENT_JOIN_FEEDBACK = "streams.join-feedback"
AGENT_BUILD_PAIRS = "streams.build-pairs"


def install(
    app: faust.App,
    ch: Channels,
    shared: Shared,
    settings: StreamSettings,
    partitions: int,
    book: WindowBook | None,
) -> None:
    """Register the join and pair agents and the tick timer. `book`: the metric windows of this process, if
    it runs them, which wait for feedback still to join or joined and on its way."""
    pair_context = app.Table(TABLE_PAIR_CONTEXT, partitions=partitions)  # message id -> prompt, answer
    pair_pending = app.Table(TABLE_PAIR_PENDING, partitions=partitions)  # message id -> waiting feedback
    pair_answers = app.Table(TABLE_PAIR_ANSWERS, partitions=partitions)  # normalized question -> thumbs-up answers
    joiner = FeedbackJoiner(
        pair_context,
        pair_pending,
        settings.streams_context_ttl_s,
        settings.streams_pending_timeout_s,
        settings.streams_pending_catch_up_s,
    )
    join_read: dict[tuple[str, int], int] = {}  # (requests|responses topic, partition) -> last offset joined
    teacher_client: httpx.AsyncClient | None = None  # made on first use, inside the running loop

    async def dead_letter(dead: DeadLetter, **extra) -> None:
        """Feedback that will never make a pair, to its DLQ with the reason."""
        await ch.feedback_dlq.send(key=(dead.key or "").encode(), value=encode(dead))
        counters.DEAD_LETTERS.labels(dead.error_type).inc()
        log.warning("feedback dead-lettered", extra={"error_type": dead.error_type, **extra})

    async def teacher(messages: list[dict]) -> str | None:
        nonlocal teacher_client
        if teacher_client is None:
            teacher_client = httpx.AsyncClient()
        return await ask_teacher(
            teacher_client,
            settings.streams_teacher_url,
            settings.streams_teacher_model,
            messages,
            settings.streams_teacher_timeout_s,
        )

    builder = PairBuilder(
        pair_answers,
        settings.served_model_name,
        NearDuplicateFilter(settings.streams_dedup_threshold, settings.streams_dedup_recent),
        settings.streams_pair_min_chars,
        settings.streams_pair_max_chars,
        teacher=teacher if settings.streams_teacher_url else None,
        review_corrections=settings.streams_review_corrections,
    )

    @pair_pending.on_recover
    async def _index_pairs() -> None:
        joiner.index()
        shared.recovered.add(TABLE_PAIR_PENDING)

    @app.agent(ch.join_source, name=AGENT_JOIN_FEEDBACK)
    async def join_feedback(stream: faust.StreamT) -> None:
        """Join feedback with its prompt and answer (same session, same partition); re-key by question."""
        decoders = {CHAT_REQUESTS.name: ChatRequest, CHAT_RESPONSES.name: ChatResponse, CHAT_FEEDBACK.name: Feedback}
        async for event in stream.events():
            message = event.message
            topic, partition, offset, now = message.topic, message.partition, message.offset, time.time()
            if topic == PAIR_TICKS.name:
                out = joiner.sweep(partition, now, join_behind(partition))
            else:
                if topic != CHAT_FEEDBACK.name:  # read, even if it does not decode: it is no backlog
                    join_read[(topic, partition)] = offset
                try:
                    parsed = decode(event.value, decoders[topic])
                except EventError as exc:
                    shared.skip_undecodable(topic, partition, offset, exc)
                    if topic == CHAT_FEEDBACK.name and book is not None:
                        book.observe(topic, partition, offset, None, now)
                    continue
                if isinstance(parsed, ChatRequest):
                    out = joiner.on_request(parsed, partition, now)
                elif isinstance(parsed, ChatResponse):
                    out = joiner.on_response(parsed, partition, now)
                else:
                    out = joiner.on_feedback(parsed, partition, offset, now)
            if book is not None:
                hold_windows(book, topic, partition, offset, parsed if topic == CHAT_FEEDBACK.name else None, out, now)
            for rec in out.joined:
                await ch.feedback_joined.send(
                    key=rec.question.encode(),
                    value=rec.model_dump_json().encode(),
                    partition=question_partition(rec.question, partitions),
                )
            for dead in out.dead:
                await dead_letter(dead, offset=dead.offset, event_id=str(dead.event_id))

    def join_behind(partition: int) -> bool:
        """Whether the join reads this partition's requests or responses behind their highwater (a catch-up)."""
        for topic in (CHAT_REQUESTS.name, CHAT_RESPONSES.name):
            highwater = app.consumer.highwater(TP(topic, partition))
            read = join_read.get((topic, partition))
            if highwater is not None and read is not None and highwater - 1 > read:
                return True
        return False

    def hold_windows(
        book: WindowBook,
        topic: str,
        partition: int,
        offset: int,
        feedback: Feedback | None,
        out: JoinOutput,
        now: float,
    ) -> None:
        # Joined feedback is in the producer's buffer, then the broker, before the metric agent applies it (and
        # during a catch-up the join runs far ahead of the metrics): it holds its windows until applied.
        wait = settings.streams_pending_timeout_s + settings.streams_window_idle_s
        for rec in out.joined:
            book.hold(rec.feedback_id, rec.occurred_at, now + wait)
        for feedback_id in out.expired:  # dead-lettered: it will never reach a window
            book.release(feedback_id)
        if feedback is not None:
            book.observe(topic, partition, offset, feedback.occurred_at.timestamp(), now)
            if not out.joined and not out.dead:  # waiting for its response (longer during a catch-up)
                book.hold(
                    str(feedback.event_id),
                    feedback.occurred_at.timestamp(),
                    now + wait + settings.streams_pending_catch_up_s,
                )

    @app.agent(ch.feedback_joined, name=AGENT_BUILD_PAIRS)
    async def build_pairs(stream: faust.StreamT) -> None:
        """One question's thumbs-up answers and thumbs-downs meet in this partition: build DPO pairs."""
        async for value in stream:
            rec = JoinedFeedback.model_validate_json(value)
            outcome = await builder.on_joined(rec)
            if outcome.pair is not None:
                pair = outcome.pair
                await ch.dpo_pairs.send(key=pair.base_model.encode(), value=encode(pair))
                counters.PAIRS.labels(pair.source).inc()
                log.info(
                    "pair emitted",
                    extra={"pair_id": pair.pair_id, "source": pair.source, "message_id": pair.message_id},
                )
            elif outcome.dead is not None:
                await dead_letter(outcome.dead, message_id=rec.message_id)
            elif outcome.dropped:
                log.info("pair dropped", extra={"reason": outcome.dropped, "message_id": rec.message_id})

    @app.timer(interval=settings.streams_tick_interval_s)
    async def pair_tick() -> None:
        """Time passes even when no event does: every partition's joiner sweeps its TTLs and timeouts."""
        if TABLE_PAIR_PENDING not in shared.recovered:
            return
        for partition in range(partitions):
            await ch.pair_ticks.send(value=b"tick", partition=partition)
