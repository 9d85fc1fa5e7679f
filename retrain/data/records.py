"""JSON lines in and out, for every `flywheel data` command: one object per line, blank lines skipped, Chinese kept
readable (UTF-8, not \\u escapes), and a bad line named by its number as an editor counts it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO


class RecordError(ValueError):
    """A line of the input cannot be read, or lacks what the command needs."""

    def __init__(self, line: int, reason: str, name: str = ""):
        super().__init__(f"{name}:{line}: {reason}" if name else f"line {line}: {reason}")
        self.line = line


def numbered(lines: Iterable[str], name: str = "") -> Iterator[tuple[int, dict]]:
    """(line number from 1, record) for each non-blank line; RecordError for a line that is not a JSON object."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(number, f"not JSON ({exc.msg})", name) from None
        if not isinstance(record, dict):
            raise RecordError(number, f"a JSON {type(record).__name__}, not an object", name)
        yield number, record


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each record of the file at `path`."""
    with open(path, encoding="utf-8") as f:
        yield from numbered(f)


def read_records(stream: TextIO, name: str) -> list[dict]:
    """Every record of an open stream (a file or stdin), named `name` in errors."""
    return [record for _, record in numbered(stream, name)]


def write_records(stream: TextIO, records: Iterable[dict]) -> None:
    for record in records:
        stream.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """The records to the file at `path` (its folder made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        write_records(f, records)
    return path
