"""`flywheel review`: people check what the model does, on the same bus and store.

Corrections: with FLYWHEEL_STREAMS_REVIEW_CORRECTIONS=true the stream processors publish each correction's DPO
pair as "pending": the retrain trigger does not count it. `list` shows the pending pairs from the store; `approve`
and `reject` publish the same pair again on dpo.pairs with the decision (an event id of its own, so the store keeps
both rows and the sink dedups a repeat); an approved pair then counts toward the next job like any other.

Spot checks of answers (deploy/review_sheets.py): `export` samples answers from the store into a sheet (XLSX or
CSV) with empty score columns; `import` reads the filled sheet back and publishes a HumanReview per scored row on
reviews.human, which the sink stores in human_reviews (per version: the view v_reviewed_accuracy).

Example:
    flywheel review export --out review.xlsx --n 50 --thumbs down --seed 7
    flywheel review import review.xlsx --reviewer alice
"""

from __future__ import annotations

import getpass
import json
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from deploy import review_sheets
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
    """People's review: corrections waiting for a decision, and sheets of answers to score."""


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


def _publish(settings: CommonSettings, events: list) -> None:
    """Send `events` and wait until the broker has them all; a ClickException otherwise."""
    from producers.sdk import ChatEventProducer
    from producers.settings import ProducerSettings

    producer = ChatEventProducer(ProducerSettings(kafka_bootstrap=settings.kafka_bootstrap))
    try:
        for event in events:
            producer.send(event)
        if producer.flush(30).pending:
            raise click.ClickException("the events were not all delivered to the broker; run the command again")
    finally:
        producer.close(strict=False)


def _decide(settings: CommonSettings, pair_ids: tuple[str, ...], decision: str) -> None:
    wanted = list(dict.fromkeys(pair_ids))
    rows = pending_pairs(_client(settings), wanted, limit=len(wanted))
    found = {row["pair_id"] for row in rows}
    unknown = [p for p in wanted if p not in found]
    if unknown:
        raise click.ClickException(f"not waiting for review (unknown or decided already): {', '.join(unknown)}")
    _publish(settings, [decided_pair(row, decision) for row in rows])
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


def _sheet_path(ctx: click.Context, param: click.Parameter, path: Path) -> Path:
    try:
        review_sheets.sheet_kind(path)
    except review_sheets.SheetError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return path


@review_group.command("export")
@click.option(
    "--out",
    "path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    required=True,
    callback=_sheet_path,
    help="The sheet to write: FILE.xlsx or FILE.csv.",
)
@click.option("--n", "n", type=click.IntRange(min=1), default=100, show_default=True, help="Answers to sample.")
@click.option("--version", "versions", multiple=True, help="Only answers of this model version (repeatable).")
@click.option(
    "--thumbs",
    type=click.Choice(list(review_sheets.THUMBS)),
    default="any",
    show_default=True,
    help="Only answers whose latest thumbs is down, up, or none (unrated).",
)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=None, help="Sample the same answers again [random].")
@click.pass_obj
def export_command(
    settings: CommonSettings, path: Path, n: int, versions: tuple[str, ...], thumbs: str, seed: int | None
) -> None:
    """Sample answers into a sheet for people to score: thumbs-down first, then the rest in a seeded order."""
    seed = random.randrange(2**32) if seed is None else seed
    answers = review_sheets.sample_answers(_client(settings), n, seed, versions, thumbs)
    review_sheets.write_sheet(path, answers)
    down = sum(a.thumbs == "down" for a in answers)
    click.echo(f"wrote {len(answers)} answer(s) to {path} ({down} thumbs-down first; --seed {seed} samples them again)")
    click.echo("fill in accuracy (1 right, 0 wrong), friendliness and completeness (1-5) and notes, then import it")


@review_group.command("import")
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--reviewer", default=None, help="Who scored the sheet [the OS user].")
@click.pass_obj
def import_command(settings: CommonSettings, path: Path, reviewer: str | None) -> None:
    """Publish the scores of a filled sheet (FILE.xlsx or FILE.csv); exit 1 if a row was invalid.

    A row without any score or note is skipped as not reviewed; the valid rows are imported even when others
    are invalid. Importing the same sheet again adds nothing; a corrected score replaces the reviewer's own."""
    reviewer = (reviewer or _os_user()).strip()
    if not 1 <= len(reviewer) <= 200:
        raise click.BadParameter("a reviewer name has 1 to 200 characters", param_hint="--reviewer")
    try:
        rows = review_sheets.read_sheet(path)
    except review_sheets.SheetError as exc:
        raise click.ClickException(str(exc)) from None
    ids = [str(cells.get("message_id") or "").strip() for _, cells in rows]
    known = review_sheets.known_messages(_client(settings), filter(None, ids))
    checked = review_sheets.check_rows(rows, known)
    if checked.invalid:
        table = Table(title=f"{len(checked.invalid)} invalid row(s) in {path.name}", title_justify="left")
        table.add_column("row", justify="right", no_wrap=True)
        table.add_column("message_id", overflow="fold")
        table.add_column("why", overflow="fold")
        for bad in checked.invalid:
            # Text, not markup: a cell such as "[red]" is what the reviewer typed, shown as it is
            table.add_row(str(bad.row), Text(bad.message_id or "-"), Text("; ".join(bad.reasons)))
        console.print(table)
    events = review_sheets.human_reviews(checked.scored, reviewer)
    if events:
        _publish(settings, events)
    click.echo(
        f"imported {len(events)} review(s) by {reviewer} from {path.name}; "
        f"{checked.not_reviewed} row(s) not reviewed, skipped"
    )
    if checked.invalid:
        click.echo(
            f"{len(checked.invalid)} invalid row(s) not imported (the valid rows were); fix them and import again"
        )
        raise SystemExit(1)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (a bare container)
        raise click.BadParameter("no OS user name here: give one", param_hint="--reviewer") from None
