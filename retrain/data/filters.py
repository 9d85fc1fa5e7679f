"""`flywheel data filter`: drop question-answer records that would teach the model something bad.

Reads a JSONL file of {question, answer, source, ...} records (or stdin with `-`); writes the kept records
unchanged to --out (default stdout) and, with --dropped, the dropped ones with a `"dropped": "<reason>"` key;
prints a table of records per reason on stderr (stdout may be the kept records).

    flywheel data crawl faq.html --question dt --answer dd | flywheel data filter - --out kept.jsonl
    flywheel data filter faq.jsonl --out kept.jsonl --dropped dropped.jsonl --sensitive words.txt --min-chars 20

The checks run in this order; the first that fails names the reason (a record breaking several is counted once):

    empty            question or answer missing or blank
    too_short        len(question) + len(answer) < --min-chars (characters, so a Chinese character counts one)
    too_long         len(question) + len(answer) > --max-chars
    few_words        the answer has fewer than --min-words words (jieba segments Chinese: no spaces needed)
    sensitive:<w>    question or answer contains a word of the --sensitive list (case-insensitive substring)
    special_chars    more than --max-special of the non-space characters are neither letters, digits, CJK
                     nor common punctuation (symbols, emoji, mojibake, box drawing)
    repeated_chars   a run of one non-space character longer than --max-repeat-chars
    repeated_lines   a line of the answer repeated more than --max-repeat-lines times

The checks are pure functions of one record: `drop_reason(record, config)` is what the command applies.
"""

from __future__ import annotations

import functools
import string
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import click
from rich.console import Console
from rich.table import Table

from retrain.data.records import RecordError, read_records, write_records
from retrain.data.text import has_cjk, normalize, words

CHECKS = (
    "empty",
    "too_short",
    "too_long",
    "few_words",
    "sensitive",
    "special_chars",
    "repeated_chars",
    "repeated_lines",
)
# ASCII punctuation stays common: answers quote code, URLs, prices and formulas. Full-width and CJK forms of
# the usual marks are listed so a Chinese answer's 。，「」 are not "special".
COMMON_PUNCTUATION = frozenset(string.punctuation + "，。、；：？！…—–·「」『』《》〈〉（）【】“”‘’～％＃＆＊＠")

errors = Console(stderr=True)


@dataclass(frozen=True)
class FilterConfig:
    min_chars: int = 10
    max_chars: int = 2000
    min_words: int = 1
    sensitive: tuple[str, ...] = ()  # matched after `text.normalize`, so case and full-width forms do not hide a word
    max_special: float = 0.3
    max_repeat_chars: int = 10
    max_repeat_lines: int = 3


def field_text(record: Mapping, key: str) -> str:
    """The record's `key` as a string ("" when missing or null)."""
    value = record.get(key)
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def special_share(text: str) -> float:
    """Share of the non-space characters that are not letters, digits, CJK or common punctuation."""
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return 0.0
    special = sum(1 for c in visible if not _is_ordinary(c))
    return special / len(visible)


def _is_ordinary(char: str) -> bool:
    return unicodedata.category(char)[0] in "LN" or char in COMMON_PUNCTUATION or has_cjk(char)


def longest_run(text: str) -> int:
    """Length of the longest run of one non-space character (runs of spaces are layout, not noise)."""
    longest = 0
    run = 0
    previous = ""
    for char in text:
        run = run + 1 if char == previous else 1
        previous = char
        if not char.isspace():
            longest = max(longest, run)
    return longest


def most_repeated_line(text: str) -> int:
    """How many times the most frequent non-blank line occurs (lines compared without surrounding spaces)."""
    counts = Counter(line.strip() for line in text.splitlines() if line.strip())
    return max(counts.values(), default=0)


def find_sensitive(text: str, sensitive: tuple[str, ...]) -> str | None:
    """The first listed word found in `text` as a substring, compared after `normalize` (case, full width)."""
    haystack = normalize(text)
    for word, needle in _normalized(sensitive):
        if needle in haystack:
            return word
    return None


@functools.lru_cache(maxsize=8)
def _normalized(sensitive: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    # once per list, not once per record: a list of a thousand words over 100k records is 10^8 calls otherwise
    return tuple((word, normalize(word)) for word in sensitive)


def drop_reason(record: Mapping, config: FilterConfig) -> str | None:
    """Why the record is dropped (the first failing check of CHECKS), or None to keep it."""
    question = field_text(record, "question").strip()
    answer = field_text(record, "answer").strip()
    if not question or not answer:
        return "empty"
    length = len(question) + len(answer)
    if length < config.min_chars:
        return "too_short"
    if length > config.max_chars:
        return "too_long"
    if len(words(answer)) < config.min_words:
        return "few_words"
    word = find_sensitive(question, config.sensitive) or find_sensitive(answer, config.sensitive)
    if word is not None:
        return f"sensitive:{word}"
    if special_share(question + answer) > config.max_special:
        return "special_chars"
    if max(longest_run(question), longest_run(answer)) > config.max_repeat_chars:
        return "repeated_chars"
    if most_repeated_line(answer) > config.max_repeat_lines:
        return "repeated_lines"
    return None


def split_records(records: Iterable[dict], config: FilterConfig) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): kept records as they are, dropped ones copied with a "dropped" reason key."""
    kept: list[dict] = []
    dropped: list[dict] = []
    for record in records:
        reason = drop_reason(record, config)
        if reason is None:
            kept.append(record)
        else:
            dropped.append({**record, "dropped": reason})
    return kept, dropped


def reason_counts(dropped: Iterable[Mapping]) -> list[tuple[str, int]]:
    """(reason, records) in CHECKS order; sensitive words each on their own row, the most frequent first."""
    counts = Counter(record["dropped"] for record in dropped)

    def order(item: tuple[str, int]) -> tuple[int, int]:
        reason, count = item
        return CHECKS.index(reason.partition(":")[0]), -count

    return sorted(counts.items(), key=order)


def read_sensitive(path: Path) -> tuple[str, ...]:
    """One word per line; blank lines ignored, surrounding spaces stripped, order kept."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: lists saved by Windows editors carry a BOM
    return tuple(dict.fromkeys(line.strip() for line in lines if line.strip()))


def summary_table(total: int, kept: int, counts: list[tuple[str, int]]) -> Table:
    table = Table(title="flywheel data filter")
    table.add_column("reason")
    table.add_column("records", justify="right")
    table.add_column("share", justify="right")
    for reason, count in [("kept", kept), *counts]:
        table.add_row(reason, str(count), f"{count / total:.1%}" if total else "-")
    table.add_row("total", str(total), "", style="bold")
    return table


@click.command("filter")
@click.argument("input_file", metavar="INPUT", type=click.File("r", encoding="utf-8"))
@click.option("--out", type=click.File("w", encoding="utf-8", lazy=False), default="-", help="kept records (JSONL)")
@click.option(
    "--dropped",
    "dropped_file",
    type=click.File("w", encoding="utf-8", lazy=False),
    help="dropped records, each with a 'dropped' reason key (JSONL); not written when absent",
)
@click.option(
    "--min-chars",
    type=click.IntRange(min=0),
    default=FilterConfig.min_chars,
    show_default=True,
    help="fewest chars in question+answer",
)
@click.option(
    "--max-chars",
    type=click.IntRange(min=1),
    default=FilterConfig.max_chars,
    show_default=True,
    help="most chars in question+answer",
)
@click.option(
    "--min-words",
    type=click.IntRange(min=0),
    default=FilterConfig.min_words,
    show_default=True,
    help="fewest answer words",
)
@click.option(
    "--sensitive",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="file of words, one per line; a record containing one is dropped",
)
@click.option(
    "--max-special",
    type=click.FloatRange(0, 1),
    default=FilterConfig.max_special,
    show_default=True,
    help="highest share of special characters",
)
@click.option(
    "--max-repeat-chars",
    type=click.IntRange(min=1),
    default=FilterConfig.max_repeat_chars,
    show_default=True,
    help="longest run of one character",
)
@click.option(
    "--max-repeat-lines",
    type=click.IntRange(min=1),
    default=FilterConfig.max_repeat_lines,
    show_default=True,
    help="most times one answer line may occur",
)
def filter_command(
    input_file: TextIO,
    out: TextIO,
    dropped_file: TextIO | None,
    min_chars: int,
    max_chars: int,
    min_words: int,
    sensitive: Path | None,
    max_special: float,
    max_repeat_chars: int,
    max_repeat_lines: int,
) -> None:
    """Keep the question-answer records of INPUT (JSONL, `-` for stdin) that pass every quality check."""
    if min_chars > max_chars:
        raise click.BadParameter(f"{min_chars} is above --max-chars {max_chars}", param_hint="--min-chars")
    config = FilterConfig(
        min_chars=min_chars,
        max_chars=max_chars,
        min_words=min_words,
        sensitive=read_sensitive(sensitive) if sensitive else (),
        max_special=max_special,
        max_repeat_chars=max_repeat_chars,
        max_repeat_lines=max_repeat_lines,
    )
    try:
        records = read_records(input_file, input_file.name)
    except RecordError as exc:
        errors.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    kept, dropped = split_records(records, config)
    write_records(out, kept)
    if dropped_file is not None:
        write_records(dropped_file, dropped)
    errors.print(summary_table(len(records), len(kept), reason_counts(dropped)))


def main() -> None:
    filter_command()


if __name__ == "__main__":
    main()
