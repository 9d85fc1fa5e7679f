"""`flywheel review list|approve|reject`: a person reads users' corrections before they train anything.

With FLYWHEEL_STREAMS_REVIEW_CORRECTIONS=true the stream processors publish each correction's DPO pair as
"pending": the retrain trigger does not count it. `list` shows the pending pairs from the store; `approve` and
`reject` publish the same pair again on dpo.pairs with the decision (an event id of its own, so the store keeps
both rows and the sink dedups a repeat); an approved pair then counts toward the next job like any other.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from schemas import store
from schemas.settings import CommonSettings

console = Console()
PRODUCER = "flywheel-review"
DECISIONS = ("approved", "rejected")
FIELDS = (
    "pair_id",
    "base_model",
    "model_version",
    "prompt",
    "chosen",
    "rejected",
    "source",
    "session_id",
    "message_id",
    "feedback_event_id",
    "chosen_message_id",
    "user_id",
)
# A pair's latest review state: pending until a decision row exists.
PENDING_SQL = f"""
SELECT {", ".join(f"any({f})" for f in FIELDS)}, min(occurred_at) AS asked_at
FROM flywheel.dpo_pairs FINAL
WHERE {{where}}
GROUP BY pair_id
HAVING countIf(review = 'pending') > 0 AND countIf(review IN ('approved', 'rejected')) = 0
ORDER BY asked_at
LIMIT {{limit}}
"""


def pending_pairs(client, pair_ids: list[str] | None = None, limit: int = 1000) -> list[dict]:
    """Pending pairs (all, or those of `pair_ids`), oldest first, as dicts of FIELDS plus asked_at."""
    where, parameters = ("pair_id IN %(ids)s", {"ids": pair_ids}) if pair_ids else ("1", {})
    result = client.query(PENDING_SQL.format(where=where, limit=int(limit)), parameters=parameters)
    return [dict(zip((*FIELDS, "asked_at"), row, strict=True)) for row in result.result_rows]


def decided_pair(row: dict, decision: str, now: datetime | None = None):
    """The DPOPair event of a pending pair `row` with the reviewer's decision."""
    from schemas.events import DPOPair
    from streams.pairing import PAIR_NAMESPACE

    return DPOPair(
        event_id=uuid.uuid5(PAIR_NAMESPACE, f"{row['pair_id']}|{decision}"),
        occurred_at=now or datetime.now(UTC),
        producer=PRODUCER,
        review=decision,
        **{**{f: row[f] for f in FIELDS}, "prompt": json.loads(row["prompt"])},
    )


def _client(settings: CommonSettings):
    return store.connect(settings.query_url)


@click.group("review")
def review_group() -> None:
    """Users' corrections waiting for a person's review (FLYWHEEL_STREAMS_REVIEW_CORRECTIONS)."""


@review_group.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pair (for scripts).")
@click.pass_obj
def list_command(settings: CommonSettings, limit: int, as_json: bool) -> None:
    """The pending pairs, oldest first: the question, the answer users disliked and their correction."""
    rows = pending_pairs(_client(settings), limit=limit)
    if as_json:
        for row in rows:
            click.echo(json.dumps({**row, "prompt": json.loads(row["prompt"])}, default=str, ensure_ascii=False))
        return
    table = Table(title=f"{len(rows)} correction(s) waiting for review")
    for column in ("pair id", "user", "question", "answer", "correction"):
        table.add_column(column, no_wrap=column == "pair id", overflow="fold")
    for row in rows:
        question = next((m["content"] for m in reversed(json.loads(row["prompt"])) if m["role"] == "user"), "")
        table.add_row(row["pair_id"], row["user_id"] or "-", question, row["rejected"], row["chosen"] or "")
    console.print(table)


def _decide(settings: CommonSettings, pair_ids: tuple[str, ...], decision: str) -> None:
    from producers.sdk import ChatEventProducer
    from producers.settings import ProducerSettings

    wanted = list(dict.fromkeys(pair_ids))
    rows = pending_pairs(_client(settings), wanted, limit=len(wanted))
    found = {row["pair_id"] for row in rows}
    unknown = [p for p in wanted if p not in found]
    if unknown:
        raise click.ClickException(f"not waiting for review (unknown or decided already): {', '.join(unknown)}")
    producer = ChatEventProducer(ProducerSettings(kafka_bootstrap=settings.kafka_bootstrap))
    try:
        for row in rows:
            producer.send(decided_pair(row, decision))
        if producer.flush(30).pending:
            raise click.ClickException("the decisions were not delivered to the broker; run the command again")
    finally:
        producer.close(strict=False)
    click.echo(f"{decision} {len(rows)} pair(s)")


@review_group.command("approve")
@click.argument("pair_ids", nargs=-1, required=True)
@click.pass_obj
def approve_command(settings: CommonSettings, pair_ids: tuple[str, ...]) -> None:
    """Let the pairs PAIR_IDS train (they count toward the next retrain job)."""
    _decide(settings, pair_ids, "approved")


@review_group.command("reject")
@click.argument("pair_ids", nargs=-1, required=True)
@click.pass_obj
def reject_command(settings: CommonSettings, pair_ids: tuple[str, ...]) -> None:
    """Keep the pairs PAIR_IDS out of training for good."""
    _decide(settings, pair_ids, "rejected")
