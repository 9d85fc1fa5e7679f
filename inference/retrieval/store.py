"""The knowledge base on disk: one directory per generation, and a pointer to the current one.

    <kb dir>/CURRENT                  "12": the generation readers load
    <kb dir>/gen-000012/manifest.json  documents (version, hash, source, passage ids, times), removed ids' last versions
    <kb dir>/gen-000012/passages.jsonl {"id", "document", "text", "tokens"} per passage
    <kb dir>/gen-000012/vectors.npy    float32, one normalized row per passage, in the order of passages.jsonl
    <kb dir>/.lock                     flock of the one writer

A writer (holding the lock) writes the next generation into a hidden temporary directory, renames it, then replaces
CURRENT (write a temporary file, fsync, rename): a reader sees the old generation or the new one, never half of
one, and a writer that dies leaves only a temporary directory that the next writer removes. The generation before
the current one is kept, so that a reader that read CURRENT just before a switch still finds its files; older ones
are removed. A reader checks for a change by reading CURRENT alone (a few bytes).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from inference.retrieval.errors import KnowledgeBaseError
from inference.retrieval.index import Passage

FORMAT = 1
CURRENT = "CURRENT"
LOCK = ".lock"
_GENERATION_DIR = re.compile(r"gen-(\d+)$")
READ_TRIES = 5  # a reader outrun by two writers in a row reads CURRENT again


@dataclass(frozen=True)
class DocumentInfo:
    document: str  # id: path relative to the root it was added from
    version: int  # 1 when first added; +1 each time its content changes
    title: str
    source: str  # the file it was read from, absolute
    sha256: str  # of its title and text
    passages: tuple[str, ...]  # passage ids, "<document>#<n>"
    added: str  # ISO 8601, UTC
    updated: str  # when its content or its splitting last changed
    chunk_size: int
    overlap: int


@dataclass(frozen=True)
class Generation:
    number: int  # 0: nothing written yet
    documents: Mapping[str, DocumentInfo] = field(default_factory=dict)
    removed: Mapping[str, int] = field(default_factory=dict)  # id -> last version: a re-added document goes on
    passages: tuple[Passage, ...] = ()
    vectors: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))
    embedding_model: str = ""


def current_generation(kb_dir: Path) -> int:
    try:
        return int((kb_dir / CURRENT).read_text())
    except FileNotFoundError:
        return 0
    except ValueError:
        raise KnowledgeBaseError(f"{kb_dir / CURRENT} does not hold a generation number") from None


def read(kb_dir: Path) -> Generation:
    """The current generation (number 0 and nothing in it when the directory is missing or empty)."""
    for _ in range(READ_TRIES):
        number = current_generation(kb_dir)
        if number == 0:
            return Generation(0)
        try:
            return _read_generation(kb_dir / _dir_name(number), number)
        except FileNotFoundError:
            continue  # removed while being read: CURRENT has moved on
    raise KnowledgeBaseError(f"{kb_dir} kept changing while being read ({READ_TRIES} tries)")


def _read_generation(path: Path, number: int) -> Generation:
    manifest = orjson.loads((path / "manifest.json").read_bytes())
    if manifest.get("format") != FORMAT:
        raise KnowledgeBaseError(f"{path}: manifest format {manifest.get('format')!r}, this code reads {FORMAT}")
    documents = {}
    for entry in manifest["documents"]:
        info = DocumentInfo(**{**entry, "passages": tuple(entry["passages"])})
        documents[info.document] = info
    passages = tuple(
        Passage(row["id"], row["document"], row["text"], tuple(row["tokens"]))
        for row in map(orjson.loads, (path / "passages.jsonl").read_bytes().splitlines())
    )
    vectors = np.load(path / "vectors.npy")
    if len(vectors) != len(passages):
        raise KnowledgeBaseError(f"{path}: {len(passages)} passages but {len(vectors)} vectors")
    return Generation(number, documents, dict(manifest["removed"]), passages, vectors, manifest["embedding_model"])


def write(kb_dir: Path, generation: Generation) -> None:
    """Write `generation` and make it the current one. The caller holds `write_lock(kb_dir)`."""
    final = kb_dir / _dir_name(generation.number)
    temporary = kb_dir / f".tmp-{final.name}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    manifest = {
        "format": FORMAT,
        "generation": generation.number,
        "embedding_model": generation.embedding_model,
        "dimension": int(generation.vectors.shape[1]),
        "documents": [dataclasses.asdict(info) for info in generation.documents.values()],
        "removed": dict(generation.removed),
    }
    rows = (
        orjson.dumps({"id": p.id, "document": p.document, "text": p.text, "tokens": p.tokens}) + b"\n"
        for p in generation.passages
    )
    _write_file(temporary / "passages.jsonl", b"".join(rows))
    with open(temporary / "vectors.npy", "wb") as f:
        np.save(f, np.ascontiguousarray(generation.vectors, dtype=np.float32))
        f.flush()
        os.fsync(f.fileno())
    _write_file(temporary / "manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    _fsync_dir(temporary)
    shutil.rmtree(final, ignore_errors=True)  # left by a writer that died before switching CURRENT
    os.rename(temporary, final)
    pointer = kb_dir / f".tmp-{CURRENT}"
    _write_file(pointer, f"{generation.number}\n".encode())
    os.replace(pointer, kb_dir / CURRENT)
    _fsync_dir(kb_dir)
    _prune(kb_dir, generation.number)


@contextmanager
def write_lock(kb_dir: Path) -> Iterator[None]:
    """One writer at a time across processes (flock: released by the kernel if the writer dies)."""
    kb_dir.mkdir(parents=True, exist_ok=True)
    with open(kb_dir / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prune(kb_dir: Path, current: int) -> None:
    for path in kb_dir.iterdir():
        match = _GENERATION_DIR.match(path.name)
        stale = (match and int(match.group(1)) < current - 1) or path.name.startswith(".tmp-")
        if stale and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def _dir_name(number: int) -> str:
    return f"gen-{number:06d}"


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
