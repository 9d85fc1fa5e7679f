"""Review sheets without a store: what a filled row says or why it is invalid, the events' ids, and the two file
kinds written and read back (deploy/review_sheets.py)."""

from __future__ import annotations

import pytest

from deploy.review_sheets import (
    MAX_CELL_CHARS,
    SHEET_COLUMNS,
    Answer,
    InvalidRow,
    ScoredRow,
    SheetError,
    check_row,
    check_rows,
    human_reviews,
    read_sheet,
    sheet_kind,
    write_sheet,
)

KNOWN = {"m1": "support@v1", "m2": "support@v2"}


def row(message_id="m1", accuracy=None, friendliness=None, completeness=None, notes=None) -> dict:
    return {
        "message_id": message_id,
        "accuracy": accuracy,
        "friendliness": friendliness,
        "completeness": completeness,
        "notes": notes,
    }


GOOD = [
    ("accuracy only", row(accuracy=1), (1, None, None, "")),
    ("every score", row(accuracy=0, friendliness=5, completeness=1, notes=" off by a day "), (0, 5, 1, "off by a day")),
    ("text cells (CSV)", row(accuracy="1", friendliness=" 3 ", completeness=""), (1, 3, None, "")),
    ("floats a spreadsheet writes", row(accuracy=1.0, friendliness="4.0"), (1, 4, None, "")),
    ("notes at the limit", row(accuracy=1, notes="x" * 4000), (1, None, None, "x" * 4000)),
]


@pytest.mark.parametrize("cells, wanted", [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_a_scored_row_says_what_it_scores(cells, wanted):
    checked = check_row(7, cells, KNOWN)
    assert checked == ScoredRow(7, "m1", "support@v1", *wanted)


BAD = [
    ("unknown message", row("m9", accuracy=1), "'m9' is not in chat_responses"),
    ("no message id", row("", accuracy=1), "message_id is empty"),
    ("accuracy 2", row(accuracy=2), "accuracy must be 0 or 1, not '2'"),
    ("accuracy as a word", row(accuracy="yes"), "accuracy must be 0 or 1, not 'yes'"),
    ("accuracy as a boolean", row(accuracy=True), "accuracy must be 0 or 1, not 'True'"),
    ("accuracy half", row(accuracy=0.5), "accuracy must be 0 or 1"),
    ("no accuracy, other scores", row(friendliness=3), "accuracy is empty"),
    ("a note without scores", row(notes="odd answer"), "accuracy is empty"),
    ("friendliness 0", row(accuracy=1, friendliness=0), "friendliness must be an integer 1-5 or empty, not '0'"),
    ("friendliness 6", row(accuracy=1, friendliness="6"), "friendliness must be an integer 1-5"),
    ("completeness 2.5", row(accuracy=1, completeness=2.5), "completeness must be an integer 1-5"),
    ("long notes", row(accuracy=1, notes="x" * 4001), "notes have 4001 characters, at most 4000"),
]


@pytest.mark.parametrize("cells, reason", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_an_invalid_row_says_why(cells, reason):
    checked = check_row(3, cells, KNOWN)
    assert isinstance(checked, InvalidRow) and checked.row == 3
    assert any(reason in r for r in checked.reasons), checked.reasons


def test_every_reason_of_a_row_is_given():
    checked = check_row(4, row("m9", accuracy=3, friendliness=9), KNOWN)
    assert isinstance(checked, InvalidRow) and len(checked.reasons) == 3


@pytest.mark.parametrize("cells", [row(), row(accuracy="", friendliness=" ", notes=""), row(message_id=None), {}])
def test_a_row_without_scores_or_notes_is_not_reviewed(cells):
    assert check_row(2, cells, KNOWN) is None


def test_a_sheet_is_checked_row_by_row_and_an_answer_counts_once():
    rows = [
        (2, row(accuracy=1)),
        (3, row()),
        (4, row("m2", accuracy=7)),
        (5, row("m2", accuracy=0)),
        (6, row(accuracy=0)),
    ]
    checked = check_rows(rows, KNOWN)
    assert [(s.row, s.message_id, s.accuracy) for s in checked.scored] == [(2, "m1", 1), (5, "m2", 0)]
    assert [(i.row, i.reasons) for i in checked.invalid] == [
        (4, ("accuracy must be 0 or 1, not '7'",)),
        (6, ("message_id already scored in row 2",)),
    ]
    assert checked.not_reviewed == 1


def test_a_review_is_named_by_what_it_says():
    scored = check_rows([(2, row(accuracy=1, friendliness=4)), (3, row("m2", accuracy=0))], KNOWN).scored
    first, again = human_reviews(scored, "alice"), human_reviews(scored, "alice")
    assert [e.event_id for e in first] == [e.event_id for e in again]  # a sheet imported twice: the same events
    assert first[0].model_version == "support@v1" and first[0].reviewer == "alice" and first[0].friendliness == 4
    corrected = check_rows([(2, row(accuracy=0, friendliness=4))], KNOWN).scored
    assert human_reviews(corrected, "alice")[0].event_id != first[0].event_id
    assert human_reviews(scored, "bob")[0].event_id != first[0].event_id
    noted = check_rows([(2, row(accuracy=1, friendliness=4, notes="fine"))], KNOWN).scored
    assert human_reviews(noted, "alice")[0].event_id != first[0].event_id


ANSWERS = [
    Answer("m1", "support@v1", "Where is my order?", '=HYPERLINK("http://x")', "down"),
    Answer("m2", "support@v2", "Kettles?\nAnd mugs?", "Kettles cost 39 euros.\x07", ""),
    Answer("m3", "support@v2", "Long?", "y" * (MAX_CELL_CHARS + 10), "up"),
]


@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_a_sheet_reads_back_what_was_written(tmp_path, suffix):
    path = tmp_path / f"review{suffix}"
    write_sheet(path, ANSWERS)
    rows = read_sheet(path)
    assert [number for number, _ in rows] == [2, 3, 4]
    assert [cells["message_id"] for _, cells in rows] == ["m1", "m2", "m3"]
    assert set(rows[0][1]) == set(SHEET_COLUMNS)
    assert rows[1][1]["question"] == "Kettles?\nAnd mugs?"
    assert rows[0][1]["thumbs"] == "down" and not rows[1][1]["thumbs"]
    assert rows[2][1]["answer"].endswith("[... 10 more characters]")  # within Excel's cell limit
    assert all(check_row(n, cells, KNOWN) is None for n, cells in rows)  # nothing scored yet


def test_an_xlsx_keeps_answers_as_text_with_rules_on_the_scores(tmp_path):
    from openpyxl import load_workbook

    path = tmp_path / "review.xlsx"
    write_sheet(path, ANSWERS)
    sheet = load_workbook(path).active
    assert [c.value for c in sheet[1]] == list(SHEET_COLUMNS)
    assert sheet["D2"].data_type == "s" and sheet["D2"].value.startswith("=HYPERLINK")  # not a formula
    assert sheet["D3"].value == "Kettles cost 39 euros."  # a control character would make the file invalid
    assert sheet["D2"].alignment.wrap_text and sheet.column_dimensions["D"].width > 40
    rules = {str(v.sqref): (v.type, v.formula1, v.formula2) for v in sheet.data_validations.dataValidation}
    assert rules == {
        "F2:F4": ("whole", "0", "1"),
        "G2:G4": ("whole", "1", "5"),
        "H2:H4": ("whole", "1", "5"),
        "I2:I4": ("textLength", "4000", None),
    }


def test_a_csv_keeps_formula_like_answers_from_running(tmp_path):
    path = tmp_path / "review.csv"
    write_sheet(path, ANSWERS)
    assert read_sheet(path)[0][1]["answer"] == '\'=HYPERLINK("http://x")'


def test_a_sheet_is_read_by_its_header_in_any_order(tmp_path):
    path = tmp_path / "filled.csv"
    path.write_text("Notes,Accuracy,message_id,friendliness,completeness\nok,1,m1,,\n", encoding="utf-8")
    assert read_sheet(path) == [
        (2, {"notes": "ok", "accuracy": "1", "message_id": "m1", "friendliness": "", "completeness": ""})
    ]


def test_a_sheet_without_score_columns_or_of_another_kind_is_refused(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("message_id,accuracy\nm1,1\n", encoding="utf-8")
    with pytest.raises(SheetError, match="no column friendliness, completeness, notes"):
        read_sheet(path)
    with pytest.raises(SheetError, match=r"\.xlsx or \.csv, not \.ods"):
        sheet_kind(tmp_path / "scores.ods")
