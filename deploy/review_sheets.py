"""Review sheets: a sample of served answers for people to score, and their scores back as HumanReview events.

`flywheel review export` (deploy/cli_review.py) samples answers from the store (`sample_answers`: status-ok
responses joined with their request's last user message and the message's latest thumbs, thumbs-down first,
then in a seeded random order) and writes them to a sheet (`write_sheet`: XLSX or CSV, by the file's extension)
with empty score columns. People fill them in; `flywheel review import` reads the sheet back (`read_sheet`),
checks each row against the answers the store knows (`check_rows`, pure) and publishes one HumanReview per valid
row (`human_reviews`); the sink stores them in `human_reviews` and `v_reviewed_accuracy` sums them up per version.

Reads: flywheel.chat_requests, chat_responses, v_feedback_verdicts. Writes: the sheet; events for reviews.human.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from schemas.events import MAX_REVIEW_NOTES, HumanReview, human_review_id
from schemas.views import DB, LAST_USER_MESSAGE_EXPR

PRODUCER = "flywheel-review"
SHOWN_COLUMNS = ("message_id", "model_version", "question", "answer", "thumbs")
FILLED_COLUMNS = ("accuracy", "friendliness", "completeness", "notes")  # empty until a person scores the answer
SHEET_COLUMNS = SHOWN_COLUMNS + FILLED_COLUMNS
SCORE_COLUMNS = ("accuracy", "friendliness", "completeness")
SUFFIXES = (".xlsx", ".csv")
# --thumbs: the message's latest verdict as the sheet writes it ("" for an answer nobody rated)
THUMBS = {"down": "down", "up": "up", "none": "", "any": None}
# Excel refuses a cell over 32,767 characters (an answer may hold 100,000): longer text is cut, and says so.
MAX_CELL_CHARS = 32_000

SAMPLE_SQL = f"""
SELECT
    r.message_id AS message_id,
    r.version AS model_version,
    q.question AS question,
    r.answer AS answer,
    multiIf(f.verdict = 'thumbs_down', 'down', f.verdict = 'thumbs_up', 'up', '') AS thumbs
FROM (
    SELECT message_id, any(model_version) AS version, any(content) AS answer
    FROM {DB}.chat_responses FINAL
    WHERE status = 'ok' AND {{versions}}
    GROUP BY message_id
) AS r
INNER JOIN (
    SELECT message_id, any({LAST_USER_MESSAGE_EXPR}) AS question
    FROM {DB}.chat_requests FINAL
    GROUP BY message_id
) AS q ON q.message_id = r.message_id
LEFT JOIN {DB}.v_feedback_verdicts AS f ON f.message_id = r.message_id
WHERE {{thumbs}}
ORDER BY thumbs = 'down' DESC, cityHash64(r.message_id, {{seed}})
LIMIT {{limit}}"""


class SheetError(ValueError):
    """A sheet that cannot be written or read as a whole (its kind, its header); bad rows are InvalidRow."""


@dataclass(frozen=True)
class Answer:
    """One sampled answer: a row of the sheet before anyone scores it."""

    message_id: str
    model_version: str
    question: str
    answer: str
    thumbs: str  # "down", "up" or ""


@dataclass(frozen=True)
class ScoredRow:
    """A valid, reviewed row of a filled sheet."""

    row: int  # as the spreadsheet numbers it: the header is row 1
    message_id: str
    model_version: str  # from the store, not the sheet: a person may have edited that cell
    accuracy: int
    friendliness: int | None
    completeness: int | None
    notes: str


@dataclass(frozen=True)
class InvalidRow:
    row: int
    message_id: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class CheckedSheet:
    scored: list[ScoredRow]
    invalid: list[InvalidRow]
    not_reviewed: int  # rows with no score and no note, skipped


# -- the sample -----------------------------------------------------------------------------------------------


def sample_answers(client, n: int, seed: int, versions: Iterable[str] = (), thumbs: str = "any") -> list[Answer]:
    """Up to `n` answers (status ok, with their request), thumbs-down first, then in the order `seed` gives.

    `versions`: only these model versions (all when empty); `thumbs`: a key of THUMBS."""
    versions = list(versions)
    verdict = THUMBS[thumbs]
    sql = SAMPLE_SQL.format(
        versions="model_version IN %(versions)s" if versions else "1",
        thumbs="thumbs = %(thumbs)s" if verdict is not None else "1",
        seed=int(seed),
        limit=int(n),
    )
    result = client.query(sql, parameters={"versions": versions, "thumbs": verdict})
    return [Answer(*row) for row in result.result_rows]


def known_messages(client, message_ids: Iterable[str], chunk: int = 1000) -> dict[str, str]:
    """message_id -> model_version for those of `message_ids` that chat_responses holds."""
    wanted = sorted(set(message_ids))
    known: dict[str, str] = {}
    for start in range(0, len(wanted), chunk):
        result = client.query(
            f"SELECT message_id, any(model_version) FROM {DB}.chat_responses "
            "WHERE message_id IN %(ids)s GROUP BY message_id",
            parameters={"ids": wanted[start : start + chunk]},
        )
        known.update((message_id, version) for message_id, version in result.result_rows)
    return known


# -- writing ----------------------------------------------------------------------------------------------------


def sheet_kind(path: Path) -> str:
    """The sheet's extension, .xlsx or .csv; raises SheetError for any other."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        got = f"not {suffix}" if suffix else "and this name has no extension"
        raise SheetError(f"{path.name}: a review sheet is .xlsx or .csv, {got}")
    return suffix


def _cell_text(text: str) -> str:
    if len(text) <= MAX_CELL_CHARS:
        return text
    return f"{text[:MAX_CELL_CHARS]} [... {len(text) - MAX_CELL_CHARS} more characters]"


def write_sheet(path: Path, answers: list[Answer]) -> None:
    """The sheet of `answers` with empty score columns, as XLSX or CSV by the extension of `path`."""
    if sheet_kind(path) == ".xlsx":
        _write_xlsx(path, answers)
    else:
        _write_csv(path, answers)


def _write_csv(path: Path, answers: list[Answer]) -> None:
    def guarded(text: str) -> str:
        # A spreadsheet opening the CSV runs a cell that starts like a formula; answers are model output shaped by
        # users' prompts, so such text is kept as text by a leading apostrophe (OWASP's advice for CSV).
        return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text

    # utf-8-sig: Excel reads a CSV without the byte-order mark as the local code page and garbles non-ASCII.
    with path.open("w", encoding="utf-8-sig", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(SHEET_COLUMNS)
        for a in answers:
            question, answer = guarded(_cell_text(a.question)), guarded(_cell_text(a.answer))
            writer.writerow([a.message_id, a.model_version, question, answer, a.thumbs, *("" for _ in FILLED_COLUMNS)])


# column -> width in characters (Excel's unit); question, answer and notes wrap within theirs
WIDTHS = {
    "message_id": 38,
    "model_version": 18,
    "question": 50,
    "answer": 80,
    "thumbs": 8,
    "accuracy": 10,
    "friendliness": 13,
    "completeness": 14,
    "notes": 50,
}
# column -> (validation type, operator, formula1, formula2, what the cell takes)
VALIDATIONS = {
    "accuracy": ("whole", "between", "0", "1", "1 right, 0 wrong"),
    "friendliness": ("whole", "between", "1", "5", "1 (poor) to 5 (great), or empty"),
    "completeness": ("whole", "between", "1", "5", "1 (poor) to 5 (great), or empty"),
    "notes": ("textLength", "lessThanOrEqual", str(MAX_REVIEW_NOTES), None, f"at most {MAX_REVIEW_NOTES} characters"),
}


def _write_xlsx(path: Path, answers: list[Answer]) -> None:
    from openpyxl import Workbook
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    from openpyxl.styles import Alignment, Font, PatternFill
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.datavalidation import DataValidation

    book = Workbook()
    sheet = book.active
    sheet.title = "review"
    sheet.append(SHEET_COLUMNS)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
        cell.fill = PatternFill("solid", fgColor="DDEBF7")
    alignments = [
        Alignment(vertical="top", wrap_text=name in ("question", "answer", "notes")) for name in SHEET_COLUMNS
    ]
    for a in answers:
        # control characters make an invalid XLSX (openpyxl refuses them): they are dropped
        texts = [ILLEGAL_CHARACTERS_RE.sub("", _cell_text(t)) for t in (a.question, a.answer)]
        sheet.append([a.message_id, a.model_version, *texts, a.thumbs, *(None for _ in FILLED_COLUMNS)])
        for cell, alignment in zip(sheet[sheet.max_row], alignments, strict=True):
            if cell.data_type == "f":  # an answer that starts with "=" is text, not a formula to run
                cell.data_type = "s"
            cell.alignment = alignment
    last = max(sheet.max_row, 2)
    for index, name in enumerate(SHEET_COLUMNS, start=1):
        letter = get_column_letter(index)
        sheet.column_dimensions[letter].width = WIDTHS[name]
        if name in VALIDATIONS:
            kind, operator, low, high, prompt = VALIDATIONS[name]
            rule = DataValidation(
                type=kind,
                operator=operator,
                formula1=low,
                formula2=high,
                allow_blank=True,
                showErrorMessage=True,
                showInputMessage=True,
                errorTitle=name,
                error=f"{name}: {prompt}",
                promptTitle=name,
                prompt=prompt,
            )
            rule.add(f"{letter}2:{letter}{last}")
            sheet.add_data_validation(rule)
    sheet.freeze_panes = "C2"  # the header and the ids stay in view while scrolling through long answers
    sheet.auto_filter.ref = f"A1:{get_column_letter(len(SHEET_COLUMNS))}{last}"
    book.save(path)


# -- reading ----------------------------------------------------------------------------------------------------


def read_sheet(path: Path) -> list[tuple[int, dict[str, object]]]:
    """(row number, {column: value}) of every row under the header, by the header's names (any order)."""
    try:
        rows = _xlsx_rows(path) if sheet_kind(path) == ".xlsx" else _csv_rows(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # what openpyxl and csv raise on a bad file
        raise SheetError(f"{path.name} cannot be read as a {path.suffix} sheet: {exc}") from None
    if not rows:
        raise SheetError(f"{path.name} is empty: no header row")
    header = [str(name or "").strip().lower() for name in rows[0]]
    missing = [name for name in ("message_id", *FILLED_COLUMNS) if name not in header]
    if missing:
        raise SheetError(
            f"{path.name} has no column {', '.join(missing)} (its header: {', '.join(filter(None, header))})"
        )
    return [
        (number, {name: value for name, value in zip(header, row, strict=False) if name})
        for number, row in enumerate(rows[1:], start=2)
    ]


def _xlsx_rows(path: Path) -> list[list]:
    from openpyxl import load_workbook

    book = load_workbook(path, read_only=True, data_only=True)
    try:
        return [list(row) for row in book.worksheets[0].iter_rows(values_only=True)]
    finally:
        book.close()


def _csv_rows(path: Path) -> list[list]:
    with path.open(encoding="utf-8-sig", newline="") as sheet:
        return list(csv.reader(sheet))


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _integer(value: object) -> int | None:
    """A cell's integer; None when empty. Raises ValueError for anything else (text, 2.5, TRUE)."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError(value)
    text = _text(value)
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        number = float(text)  # "1.0" as a spreadsheet may write it; "x" raises
        if number.is_integer():
            return int(number)
        raise


def _score(cells: Mapping[str, object], name: str, low: int, high: int, reasons: list[str]) -> int | None:
    """The score in column `name` (None when empty); a reason added to `reasons` when it is not low..high."""
    value = cells.get(name)
    try:
        score = _integer(value)
    except ValueError:
        score = None
    else:
        if score is None or low <= score <= high:
            return score
    allowed = "0 or 1" if (low, high) == (0, 1) else f"an integer {low}-{high} or empty"
    reasons.append(f"{name} must be {allowed}, not {_text(value)!r}")
    return None


def check_row(number: int, cells: Mapping[str, object], known: Mapping[str, str]) -> ScoredRow | InvalidRow | None:
    """What row `number` says, why it is invalid, or None when nobody reviewed it (no score, no note).

    `known`: message_id -> model_version of the answers in chat_responses. A note without an accuracy is invalid,
    not skipped: a reviewer's words are not dropped without a word."""
    message_id, notes = _text(cells.get("message_id")), _text(cells.get("notes"))
    if not notes and all(_text(cells.get(name)) == "" for name in SCORE_COLUMNS):
        return None
    reasons: list[str] = []
    if not message_id:
        reasons.append("message_id is empty")
    elif message_id not in known:
        reasons.append(f"message_id {message_id!r} is not in chat_responses")
    if _text(cells.get("accuracy")) == "":
        reasons.append("accuracy is empty: 1 right, 0 wrong")
    accuracy = _score(cells, "accuracy", 0, 1, reasons)
    friendliness = _score(cells, "friendliness", 1, 5, reasons)
    completeness = _score(cells, "completeness", 1, 5, reasons)
    if len(notes) > MAX_REVIEW_NOTES:
        reasons.append(f"notes have {len(notes)} characters, at most {MAX_REVIEW_NOTES}")
    if reasons:
        return InvalidRow(number, message_id, tuple(reasons))
    return ScoredRow(number, message_id, known[message_id], accuracy, friendliness, completeness, notes)


def check_rows(rows: Iterable[tuple[int, Mapping[str, object]]], known: Mapping[str, str]) -> CheckedSheet:
    """Every row checked. An answer scored twice in one sheet is invalid the second time: both reviews would carry
    the same time, and which one counts as the reviewer's latest would be chance."""
    scored: list[ScoredRow] = []
    invalid: list[InvalidRow] = []
    not_reviewed = 0
    first_row: dict[str, int] = {}
    for number, cells in rows:
        checked = check_row(number, cells, known)
        if checked is None:
            not_reviewed += 1
        elif isinstance(checked, InvalidRow):
            invalid.append(checked)
        elif checked.message_id in first_row:
            reason = f"message_id already scored in row {first_row[checked.message_id]}"
            invalid.append(InvalidRow(number, checked.message_id, (reason,)))
        else:
            first_row[checked.message_id] = number
            scored.append(checked)
    return CheckedSheet(scored, invalid, not_reviewed)


def human_reviews(scored: Iterable[ScoredRow], reviewer: str, now: datetime | None = None) -> list[HumanReview]:
    """The events of the scored rows; each id names what it says, so an import repeated publishes the same ids."""
    now = now or datetime.now(UTC)
    return [
        HumanReview(
            event_id=human_review_id(
                row.message_id, reviewer, row.accuracy, row.friendliness, row.completeness, row.notes
            ),
            occurred_at=now,
            producer=PRODUCER,
            message_id=row.message_id,
            model_version=row.model_version,
            reviewer=reviewer,
            accuracy=row.accuracy,
            friendliness=row.friendliness,
            completeness=row.completeness,
            notes=row.notes,
        )
        for row in scored
    ]
