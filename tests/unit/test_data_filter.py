"""`flywheel data filter`: each check decides on small English and Chinese records, the first failing check names
the reason, and the command writes the kept and dropped files and counts the reasons."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from retrain.data.filters import (
    CHECKS,
    FilterConfig,
    drop_reason,
    filter_command,
    find_sensitive,
    longest_run,
    most_repeated_line,
    reason_counts,
    special_share,
    split_records,
)
from retrain.data.records import read_records

SENSITIVE = ("Password123", "赌博")
CONFIG = FilterConfig(sensitive=SENSITIVE)


def qa(question: str, answer: str, **extra) -> dict:
    return {"question": question, "answer": answer, "source": "test", **extra}


KEEP = [
    qa("How do I reset my password?", "Open Settings, then Security, and choose Reset password."),
    qa("退货需要多长时间？", "收到退货后三个工作日内退款。"),  # no spaces: jieba finds the words
    qa("运费多少？", "满99元包邮，否则运费10元。"),
    qa("Is shipping free?", "Yes, on orders over $50 (see https://shop.example/terms#shipping)."),  # ASCII symbols
    qa("How are lines counted?", "Step one.\nStep one.\nStep one.\nDone."),  # three times is allowed
    qa("What about dots?", "Wait.......... there are ten dots."),  # a run of ten is allowed
    qa("   Padded?   ", "   Yes, it is padded.   "),
]

DROP = [
    (qa("", "An answer without a question."), "empty"),
    (qa("A question without an answer?", "   "), "empty"),
    ({"question": "No answer key at all?", "source": "test"}, "empty"),
    (qa("问题？", "不行。"), "too_short"),  # 6 characters: each Chinese character counts one
    (qa("Hi?", "Yes."), "too_short"),
    (qa("Why?", "x" * 10 + " because " + "long " * 400), "too_long"),
    (qa("What do you say?", "？？！！。。，，"), "few_words"),  # punctuation only: not one word
    (qa("Can I use password123?", "Please choose another one."), "sensitive:Password123"),  # any case
    (qa("可以在这里赌博吗？", "本平台禁止任何形式的赌博活动。"), "sensitive:赌博"),
    (qa("Rate us!", "★★★ ♥♥♥ ☆☆☆ →→→ great"), "special_chars"),
    (qa("乱码？", "锟斤拷 ��������"), "special_chars"),  # replacement characters of a broken decode
    (qa("Really?", "Yes!!!!!!!!!!!!!!!"), "repeated_chars"),
    (qa("真的吗？", "是的啊啊啊啊啊啊啊啊啊啊啊啊"), "repeated_chars"),
    (qa("What now?", "Click here.\nClick here.\nClick here.\nClick here.\nDone."), "repeated_lines"),
]


@pytest.mark.parametrize("record", KEEP, ids=lambda r: r["question"].strip())
def test_kept(record):
    assert drop_reason(record, CONFIG) is None


@pytest.mark.parametrize(("record", "reason"), DROP, ids=[reason for _, reason in DROP])
def test_dropped(record, reason):
    assert drop_reason(record, CONFIG) == reason


def test_every_reason_has_a_case():
    assert {reason.partition(":")[0] for _, reason in DROP} == set(CHECKS)


def test_first_failing_check_names_the_reason():
    """Sensitive and repeated at once (and too short with a higher minimum): the earlier check in CHECKS names it."""
    record = qa("赌博?", "好的!!!!!!!!!!!!")
    assert drop_reason(record, CONFIG) == "sensitive:赌博"
    assert drop_reason(record, FilterConfig(sensitive=SENSITIVE, min_chars=20)) == "too_short"
    assert drop_reason(record, FilterConfig()) == "repeated_chars"


def test_limits_come_from_the_config():
    record = qa("What is the return window?", "Thirty days from delivery.")
    assert drop_reason(record, FilterConfig(max_chars=30)) == "too_long"
    assert drop_reason(record, FilterConfig(min_words=5)) == "few_words"
    assert drop_reason(record, FilterConfig(min_words=4)) is None
    chinese = qa("退货期限是多久？", "收到商品后三十天内可以退货。")
    assert drop_reason(chinese, FilterConfig(min_words=3)) is None  # jieba's words, though no spaces
    assert drop_reason(chinese, FilterConfig(min_words=50)) == "few_words"


def test_special_share():
    assert special_share("") == 0.0
    assert special_share("Hello, world! 你好，世界。") == 0.0
    assert special_share("2024-01-01 12:30, ½") == 0.0  # digits (and other numbers) are ordinary
    assert special_share("コーヒー・紅茶") == 0.0  # the katakana middle dot is CJK punctuation
    assert special_share("ab★♥") == 0.5
    assert special_share("a ★") == 0.5  # spaces count neither way


def test_longest_run_ignores_spaces():
    assert longest_run("") == 0
    assert longest_run("abbbc") == 3
    assert longest_run("a" + " " * 30 + "b") == 1


def test_most_repeated_line_strips_and_skips_blank_lines():
    assert most_repeated_line("") == 0
    assert most_repeated_line("a\n  a  \n\n\n\nb") == 2


def test_sensitive_words_match_case_and_full_width_forms():
    assert find_sensitive("my ＰＡＳＳＷＯＲＤ１２３ leaked", SENSITIVE) == "Password123"
    assert find_sensitive("网络赌博平台", SENSITIVE) == "赌博"
    assert find_sensitive("a strong passphrase", SENSITIVE) is None


def test_split_records_keeps_other_keys_and_marks_the_dropped():
    kept, dropped = split_records([qa("Hi?", "Yes.", id=1), KEEP[0]], CONFIG)
    assert kept == [KEEP[0]]
    assert dropped == [{**qa("Hi?", "Yes.", id=1), "dropped": "too_short"}]


def test_reason_counts_follow_the_check_order():
    dropped = [{"dropped": r} for r in ["repeated_lines", "sensitive:b", "empty", "sensitive:a", "sensitive:a"]]
    assert reason_counts(dropped) == [("empty", 1), ("sensitive:a", 2), ("sensitive:b", 1), ("repeated_lines", 1)]


def test_read_records_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n\n[1, 2]\n', encoding="utf-8")
    with path.open(encoding="utf-8") as f, pytest.raises(ValueError, match=r"bad.jsonl:3: a JSON list"):
        read_records(f, str(path))


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_command_writes_kept_and_dropped_files_and_counts_reasons(tmp_path):
    records = KEEP + [record for record, _ in DROP]
    write_jsonl(tmp_path / "in.jsonl", records)
    (tmp_path / "words.txt").write_text("Password123\n\n  赌博  \n", encoding="utf-8")
    args = [str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "kept.jsonl")]
    args += ["--dropped", str(tmp_path / "dropped.jsonl"), "--sensitive", str(tmp_path / "words.txt")]

    result = CliRunner().invoke(filter_command, args)

    assert result.exit_code == 0, result.output
    assert read_jsonl(tmp_path / "kept.jsonl") == KEEP
    assert read_jsonl(tmp_path / "dropped.jsonl") == [{**record, "dropped": reason} for record, reason in DROP]
    cells = [line.split("│") for line in result.stderr.splitlines() if "│" in line]  # the table's body rows
    rows = {cell[1].strip(): cell[2].strip() for cell in cells}
    assert rows == {
        "kept": str(len(KEEP)),
        "empty": "3",
        "too_short": "2",
        "too_long": "1",
        "few_words": "1",
        "sensitive:Password123": "1",
        "sensitive:赌博": "1",
        "special_chars": "2",
        "repeated_chars": "2",
        "repeated_lines": "1",
        "total": str(len(records)),
    }
    assert result.stdout == ""  # the summary goes to stderr: stdout may carry the kept records


def test_command_reads_stdin_and_writes_stdout():
    result = CliRunner().invoke(filter_command, ["-", "--min-chars", "5"], input=json.dumps(qa("Hi?", "Yes.")) + "\n")
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [qa("Hi?", "Yes.")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-chars", "50", "--max-chars", "40"], "above --max-chars"),
        (["--max-special", "1.5"], "--max-special"),
        (["--sensitive", "missing.txt"], "missing.txt"),
    ],
)
def test_command_rejects_bad_options(tmp_path, args, message):
    write_jsonl(tmp_path / "in.jsonl", KEEP)
    result = CliRunner().invoke(filter_command, [str(tmp_path / "in.jsonl"), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_command_stops_on_a_line_that_is_not_json(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps(KEEP[0]) + "\n{not json\n", encoding="utf-8")
    result = CliRunner().invoke(filter_command, [str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "kept.jsonl")])
    assert result.exit_code == 1
    assert "in.jsonl:2: not JSON" in result.stderr
    assert (tmp_path / "kept.jsonl").read_text() == ""  # nothing written from a file that cannot be read whole
