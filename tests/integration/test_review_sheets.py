"""`flywheel review export|import` on the stack: answers of two versions are sampled into sheets (thumbs-down
first, filtered by version and thumbs), scored in the XLSX, imported through the broker into human_reviews, and
summed up per version by v_reviewed_accuracy; a sheet imported again adds nothing, a corrected score adds a row."""

from __future__ import annotations

import csv
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from openpyxl import load_workbook

from deploy.cli import main
from deploy.review_sheets import SHEET_COLUMNS
from schemas import store
from schemas.events import ChatMessage, ChatRequest, ChatResponse, Feedback
from tests.conftest import settings_env
from tests.integration.streams_worker import produce

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]
V1, V2 = f"sheets-{RUN}@v1", f"sheets-{RUN}@v2"
T0 = datetime.now(UTC) - timedelta(minutes=5)


def conversation(name: str, version: str, status: str = "ok") -> list:
    """A request whose last user message is `Question <name>?`, and its answer by `version`."""
    message_id = f"{name}-{RUN}"
    messages = [
        ChatMessage(role="user", content="Hello"),
        ChatMessage(role="assistant", content="Hi, how can I help?"),
        ChatMessage(role="user", content=f"Question {name}?"),
    ]
    common = {"session_id": f"s-{RUN}", "message_id": message_id, "model_alias": "support", "occurred_at": T0}
    return [
        ChatRequest(**common, messages=messages),
        ChatResponse(**common, model_version=version, content=f"Answer {name}.", latency_ms=12.0, status=status),
    ]


def thumbs(name: str, verdict: str, minute: int) -> Feedback:
    return Feedback(
        session_id=f"s-{RUN}",
        message_id=f"{name}-{RUN}",
        feedback=verdict,
        occurred_at=T0 + timedelta(minutes=minute),
    )


def rows(stack, sql: str) -> list[tuple]:
    return store.connect(stack.query_url).query(sql).result_rows


def wait_for(stack, sql: str, wanted, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while (got := rows(stack, sql)) != wanted:
        assert time.monotonic() < deadline, f"{sql} answers {got}, wanted {wanted}"
        time.sleep(0.5)


def review(args: list[str], env: dict):
    return CliRunner().invoke(main, ["review", *args], env=env)


def sheet_rows(path) -> list[dict]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def answers(stack):
    """Five served answers (a and b by V1 and c too; d and e by V2), one failed, and the users' thumbs."""
    events = [
        *conversation("a", V1),
        *conversation("b", V1),
        *conversation("c", V1),
        *conversation("d", V2),
        *conversation("e", V2),
        *conversation("f", V2, status="error"),
        thumbs("a", "thumbs_down", 1),
        thumbs("b", "thumbs_up", 1),
        thumbs("d", "thumbs_up", 1),
        thumbs("d", "thumbs_down", 2),  # a user changed their mind: the latest counts
    ]
    produce(stack.kafka_bootstrap, events)
    ids = ", ".join(f"'{name}-{RUN}'" for name in "abcdef")
    wait_for(stack, f"SELECT count() FROM flywheel.chat_responses WHERE message_id IN ({ids})", [(6,)])
    wait_for(stack, f"SELECT count() FROM flywheel.chat_requests WHERE message_id IN ({ids})", [(6,)])
    wait_for(stack, f"SELECT count() FROM flywheel.feedback WHERE message_id IN ({ids})", [(4,)])
    return {name: f"{name}-{RUN}" for name in "abcdef"}


def test_export_samples_bad_cases_first_into_either_kind_of_sheet(stack, answers, tmp_path):
    env = settings_env(stack)
    xlsx = tmp_path / "all.xlsx"
    done = review(["export", "--out", str(xlsx), "--version", V1, "--version", V2, "--seed", "7"], env)
    assert done.exit_code == 0 and "wrote 5 answer(s)" in done.stdout, done.output
    sheet = load_workbook(xlsx).active
    assert [c.value for c in sheet[1]] == list(SHEET_COLUMNS)
    got = [dict(zip(SHEET_COLUMNS, (c.value for c in r), strict=True)) for r in sheet.iter_rows(min_row=2)]
    assert {r["message_id"] for r in got[:2]} == {answers["a"], answers["d"]}  # thumbs-down first
    assert [r["thumbs"] for r in got[:2]] == ["down", "down"]
    assert {r["message_id"] for r in got} == {answers[n] for n in "abcde"}  # the failed answer is not reviewed
    a = next(r for r in got if r["message_id"] == answers["a"])
    assert (a["model_version"], a["question"], a["answer"]) == (V1, "Question a?", "Answer a.")
    assert all(r[name] is None for r in got for name in ("accuracy", "friendliness", "completeness", "notes"))

    csv_path = tmp_path / "all.csv"
    again = review(["export", "--out", str(csv_path), "--version", V1, "--version", V2, "--seed", "7"], env)
    assert again.exit_code == 0, again.output
    assert [r["message_id"] for r in sheet_rows(csv_path)] == [r["message_id"] for r in got]  # the seed's order

    v1 = tmp_path / "v1.csv"
    assert review(["export", "--out", str(v1), "--version", V1, "--n", "2"], env).exit_code == 0
    assert [r["message_id"] for r in sheet_rows(v1)][0] == answers["a"] and len(sheet_rows(v1)) == 2
    assert {r["model_version"] for r in sheet_rows(v1)} == {V1}
    unrated = tmp_path / "unrated.csv"
    assert review(["export", "--out", str(unrated), "--version", V2, "--thumbs", "none"], env).exit_code == 0
    assert [(r["message_id"], r["thumbs"]) for r in sheet_rows(unrated)] == [(answers["e"], "")]

    refused = review(["export", "--out", str(tmp_path / "all.ods")], env)
    assert refused.exit_code == 2 and ".xlsx or .csv" in refused.output


VIEW = (
    "SELECT model_version, reviewed_answers, reviews, accuracy, friendliness, completeness, accurate_share "
    f"FROM flywheel.v_reviewed_accuracy WHERE model_version IN ('{V1}', '{V2}') ORDER BY model_version"
)


def test_a_filled_sheet_is_imported_once_and_summed_up_per_version(stack, answers, tmp_path):
    env = settings_env(stack)
    path = tmp_path / "review.xlsx"
    assert review(["export", "--out", str(path), "--version", V1, "--version", V2, "--seed", "3"], env).exit_code == 0
    book = load_workbook(path)
    sheet = book.active
    by_id = {sheet.cell(row=r, column=1).value: r for r in range(2, sheet.max_row + 1)}
    scores = {  # accuracy, friendliness, completeness, notes; c is left empty (not reviewed)
        "a": (0, 2, 1, "It says the order shipped; it did not."),
        "b": (1, 5, 4, None),
        "d": (1, 4, None, None),
        "e": (3, None, None, None),  # invalid: accuracy is 0 or 1
    }
    for name, values in scores.items():
        for column, value in enumerate(values, start=6):
            sheet.cell(row=by_id[answers[name]], column=column, value=value)
    book.save(path)

    imported = review(["import", str(path), "--reviewer", "alice"], env)
    assert imported.exit_code == 1, imported.output
    assert "1 invalid row(s) in review.xlsx" in imported.output
    assert re.search(rf"\D{by_id[answers['e']]}\D+{answers['e']}", imported.output), imported.output
    assert "accuracy must be 0 or 1, not '3'" in imported.output
    assert "imported 3 review(s) by alice" in imported.output and "1 row(s) not reviewed" in imported.output
    assert "the valid rows were" in imported.output
    wait_for(stack, VIEW, [(V1, 2, 2, 0.5, 3.5, 2.5, 0.5), (V2, 1, 1, 1.0, 4.0, None, 1.0)])

    again = review(["import", str(path), "--reviewer", "alice"], env)
    assert again.exit_code == 1 and "imported 3 review(s)" in again.output, again.output
    corrected = tmp_path / "corrected.csv"  # alice changes her mind about b; sent after the repeat, stored after it
    corrected.write_text(
        f"message_id,accuracy,friendliness,completeness,notes\n{answers['b']},0,5,4,wrong kettle price\n",
        encoding="utf-8",
    )
    fixed = review(["import", str(corrected), "--reviewer", "alice"], env)
    assert fixed.exit_code == 0 and "imported 1 review(s)" in fixed.output, fixed.output
    wait_for(stack, VIEW, [(V1, 2, 2, 0.0, 3.5, 2.5, 0.0), (V2, 1, 1, 1.0, 4.0, None, 1.0)])
    ids = ", ".join(f"'{answers[n]}'" for n in "abde")
    stored = rows(stack, f"SELECT count() FROM flywheel.human_reviews FINAL WHERE message_id IN ({ids})")
    assert stored == [(4,)]  # the repeated sheet added nothing; the correction added one row
