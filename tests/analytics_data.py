"""A synthetic, fully known traffic history for the analyst views (built from the event models).

Two versions in the last half hour, `support@v1` (busier, worse thumbs-down rate, slower) and
`support@v2`, plus an old version two days back (outside a 1 h window), dead letters, duplicate
deliveries of some events (same event_id in a second insert: FINAL must count them once) and a
user who changed their mind (thumbs_down, then thumbs_up: the latest verdict counts).
`Expected` holds what the views must answer, computed here from the same numbers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from schemas.ddl import DATABASE
from schemas.events import ChatMessage, ChatRequest, ChatResponse, DeadLetter, Event, Feedback
from schemas.rows import columns, to_row
from schemas.topics import BY_EVENT, DLQ_TABLE

V1, V2, V0 = "support@v1", "support@v2", "support@v0"

# question text as asked (varied case and spacing) -> how often; normalized ranks are asserted.
QUESTIONS = [
    ("Where is my order?", 9),
    ("  WHERE is my   order? ", 6),  # same question once normalized: 15 in all
    ("How do I return an item?", 12),
    ("Do you ship to Canada?", 10),
    ("What is your refund policy?", 8),
    ("Can I change my address?", 7),
    ("How long does delivery take?", 6),
    ("Is there a warranty?", 5),
    ("Do you have a store in Paris?", 4),
    ("How do I reset my password?", 3),
    ("b tie question", 2),  # ties on asks are ordered by question text
    ("a tie question", 2),
    ("Who are you?", 1),  # 12th distinct question: not in the top 10
]


@dataclass
class Expected:
    requests: dict[str, int] = field(default_factory=Counter)
    per_minute: dict[tuple[str, datetime], int] = field(default_factory=Counter)
    errors: dict[str, int] = field(default_factory=Counter)  # error + timeout
    ok_latencies: dict[str, list[float]] = field(default_factory=dict)
    ok_latencies_per_minute: dict[tuple[str, datetime], list[float]] = field(default_factory=dict)
    verdicts: dict[str, list[str]] = field(default_factory=dict)  # latest verdict per rated message
    top_questions: list[tuple[str, int]] = field(default_factory=list)
    bad_case_messages: set[str] = field(default_factory=set)  # in the last half hour
    old_bad_case_messages: set[str] = field(default_factory=set)  # two days back
    dead_letters: dict[tuple[str, str], int] = field(default_factory=Counter)


@dataclass
class Dataset:
    base: datetime  # start of the first minute of recent traffic
    events: list[Event]
    duplicates: list[Event]  # re-delivered copies (same event_id), inserted separately
    expected: Expected


def _latency(version: str, i: int) -> float:
    # Deterministic spread; v2 is about 30 ms faster on average.
    return (130.0 if version == V1 else 100.0) + (i * 37) % 90 + (i % 7) * 0.5


def build(now: datetime | None = None) -> Dataset:
    now = now or datetime.now(UTC)
    base = (now - timedelta(minutes=30)).replace(second=0, microsecond=0)
    events: list[Event] = []
    exp = Expected()
    questions = [text for text, n in QUESTIONS for _ in range(n)]

    def serve(version: str, minute: int, i: int, status: str, when: datetime | None = None) -> str:
        message_id = f"{version}-m{i}"
        at = when or base + timedelta(minutes=minute, seconds=(i % 59))
        question = questions[i % len(questions)] if version != V0 else "old question"
        events.append(
            ChatRequest(
                session_id=f"s{i % 40}",
                message_id=message_id,
                model_alias="support",
                messages=[
                    ChatMessage(role="system", content="Be helpful."),
                    ChatMessage(role="user", content="hello"),
                    ChatMessage(role="assistant", content="Hi!"),
                    ChatMessage(role="user", content=question),
                ],
                occurred_at=at - timedelta(milliseconds=200),
            )
        )
        latency = _latency(version, i) * (20 if status == "timeout" else 1)
        events.append(
            ChatResponse(
                session_id=f"s{i % 40}",
                message_id=message_id,
                model_alias="support",
                model_version=version,
                content=f"answer {i} of {version}",
                latency_ms=latency,
                ttft_ms=10.0,
                status=status,
                occurred_at=at,
            )
        )
        if when is None:
            exp.requests[version] += 1
            exp.per_minute[(version, base + timedelta(minutes=minute))] += 1
            if status == "ok":
                exp.ok_latencies.setdefault(version, []).append(latency)
                exp.ok_latencies_per_minute.setdefault((version, base + timedelta(minutes=minute)), []).append(latency)
            else:
                exp.errors[version] += 1
        return message_id

    def rate(message_id: str, version: str, verdict: str, at: datetime, **extra) -> None:
        events.append(Feedback(session_id="s", message_id=message_id, feedback=verdict, occurred_at=at, **extra))

    # support@v1: 200 responses over minutes 0-2 (80/70/50); 10 errors, 4 timeouts.
    # 100 rated: 40 thumbs-down, 60 thumbs-up.
    i = 0
    for minute, n in ((0, 80), (1, 70), (2, 50)):
        for _ in range(n):
            status = "error" if i % 20 == 3 else "timeout" if i % 50 == 7 else "ok"
            message_id = serve(V1, minute, i, status)
            if i < 100:
                verdict = "thumbs_down" if i % 5 < 2 else "thumbs_up"
                at = base + timedelta(minutes=minute, seconds=59)
                if verdict == "thumbs_down" and i % 10 == 0:
                    rate(message_id, V1, verdict, at, comment=f"wrong answer {i}")
                    exp.bad_case_messages.add(message_id)
                elif verdict == "thumbs_down" and i % 10 == 1:
                    rate(message_id, V1, verdict, at, correction=f"the right answer {i}")
                    exp.bad_case_messages.add(message_id)
                else:
                    rate(message_id, V1, verdict, at, comment="" if verdict == "thumbs_down" else None)
                exp.verdicts.setdefault(V1, []).append(verdict)
            i += 1

    # support@v2: 120 responses over minutes 1-2 (60/60); 2 errors.
    # 60 rated: 6 thumbs-down, 54 thumbs-up, plus one changed mind (down, then up: counts as up).
    for j in range(120):
        minute = 1 + j // 60
        message_id = serve(V2, minute, j, "error" if j in (5, 77) else "ok")
        if j < 60:
            verdict = "thumbs_down" if j % 10 == 0 else "thumbs_up"
            rate(
                message_id,
                V2,
                verdict,
                base + timedelta(minutes=minute, seconds=59),
                comment="too vague" if verdict == "thumbs_down" else None,
            )
            if verdict == "thumbs_down":
                exp.bad_case_messages.add(message_id)
            exp.verdicts.setdefault(V2, []).append(verdict)
        elif j == 60:
            rate(message_id, V2, "thumbs_down", base + timedelta(minutes=minute, seconds=50), comment="hmm")
            rate(message_id, V2, "thumbs_up", base + timedelta(minutes=minute, seconds=55))
            exp.bad_case_messages.add(message_id)  # the thumbs-down with a comment is still a reported case
            exp.verdicts[V2].append("thumbs_up")

    # An old version, two days back: outside any window of hours.
    for k in range(5):
        mid = serve(V0, 0, 1000 + k, "ok", when=now - timedelta(days=2, minutes=k))
        rate(mid, V0, "thumbs_down", now - timedelta(days=2), comment="old complaint")
        exp.old_bad_case_messages.add(mid)

    # Dead letters.
    for k, (topic, error_type) in enumerate([("chat.responses", "not_json")] * 3 + [("chat.feedback", "invalid")]):
        events.append(
            DeadLetter(
                source_topic=topic,
                offset=k,
                payload="{bad",
                error_type=error_type,
                error=f"{error_type} #{k}",
                occurred_at=base + timedelta(minutes=2),
            )
        )
        exp.dead_letters[(topic, error_type)] += 1

    # Request i of v1 and j of v2 ask questions[i % len(questions)]: count the normalized texts.
    counts = Counter(" ".join(questions[i % len(questions)].split()).lower() for i in range(200))
    counts.update(" ".join(questions[j % len(questions)].split()).lower() for j in range(120))
    exp.top_questions = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]

    duplicates = [e for e in events if isinstance(e, ChatResponse | Feedback)][::7]
    return Dataset(base, events, duplicates, exp)


def _table(event: Event) -> str:
    topic = BY_EVENT.get(type(event))
    return f"{DATABASE}.{topic.table if topic else DLQ_TABLE}"


def insert(client, events: list[Event]) -> None:
    """Insert events with one insert per table (as the sink batches them)."""
    by_table: dict[str, list[Event]] = {}
    for event in events:
        by_table.setdefault(_table(event), []).append(event)
    for table, batch in by_table.items():
        client.insert(table, [to_row(e) for e in batch], column_names=columns(type(batch[0])))


def load(client, dataset: Dataset) -> None:
    insert(client, dataset.events)
    insert(client, dataset.duplicates)  # a second delivery: separate parts, deduplicated only by FINAL
