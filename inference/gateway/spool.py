"""The gateway's disk spool: events the broker could not take (an outage, a failed delivery), kept in order until
the publisher replays them (inference/gateway/publisher.py).

`<spool_dir>/spool-<ns>-<seq>.jsonl`: append-only JSON lines {topic, key, value}; a writer thread writes and
fsyncs each batch; a segment is closed (rotated) before it is replayed and deleted once replayed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import orjson

log = logging.getLogger(__name__)


class Spool:
    """Append-only JSON-lines segments; a writer thread writes and fsyncs each batch.

    One record: {"topic": ..., "key": ..., "value": <the event's JSON>}.
    """

    def __init__(self, directory: Path, flush_s: float = 0.2):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flush_s = flush_s
        self._pending: list[bytes] = []
        self._lock = threading.Lock()  # guards _pending
        self._file_lock = threading.Lock()  # guards the current segment
        self._current: Path | None = None
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flywheel-spool", daemon=True)
        self.written = 0

    def start(self) -> None:
        self._thread.start()

    def append(self, topic: str, key: bytes | str | None, value: bytes) -> None:
        if isinstance(key, bytes):
            key = key.decode(errors="replace")
        try:
            line = orjson.dumps({"topic": topic, "key": key, "value": orjson.Fragment(value)})
        except orjson.JSONEncodeError:  # not JSON (cannot happen for events): keep it as a string
            line = orjson.dumps({"topic": topic, "key": key, "value": value.decode(errors="replace")})
        with self._lock:
            self._pending.append(line)

    def flush(self) -> int:
        """Write and fsync what is buffered; returns the number of records written."""
        with self._file_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            if self._current is None:
                self._seq += 1
                self._current = self.dir / f"spool-{time.time_ns()}-{self._seq}.jsonl"
            with open(self._current, "ab") as f:
                f.write(b"\n".join(batch) + b"\n")
                f.flush()
                os.fsync(f.fileno())
            self.written += len(batch)
            return len(batch)

    def rotate(self) -> list[Path]:
        """Close the current segment; return every closed segment, oldest first."""
        self.flush()
        with self._file_lock:
            self._current = None
            return self.segments()

    def segments(self) -> list[Path]:
        current = self._current
        return sorted(
            (p for p in self.dir.glob("spool-*.jsonl") if p != current),
            key=lambda p: tuple(int(x) for x in p.stem.split("-")[1:]),
        )

    def has_records(self) -> bool:
        """Anything not yet replayed: buffered, in the open segment, or in closed ones."""
        return bool(self._pending) or self._current is not None or bool(self.segments())

    def backlog(self) -> int:
        """Records buffered or on disk, not yet replayed (counts lines; for health and metrics)."""
        n = len(self._pending)
        for p in self.dir.glob("spool-*.jsonl"):
            try:
                with open(p, "rb") as f:
                    n += sum(1 for _ in f)
            except FileNotFoundError:
                pass
        return n

    @staticmethod
    def read(path: Path) -> list[tuple[str, str | None, bytes]]:
        records = []
        with open(path, "rb") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError:  # a torn last line after a crash
                    log.error("unreadable spool line skipped", extra={"segment": str(path)})
                    continue
                value = rec["value"]
                value = value.encode() if isinstance(value, str) else orjson.dumps(value)
                records.append((rec["topic"], rec.get("key"), value))
        return records

    @staticmethod
    def rewrite(path: Path, records: list[tuple[str, str | None, bytes]]) -> None:
        """Replace a segment by the records not yet replayed."""
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for topic, key, value in records:
                f.write(orjson.dumps({"topic": topic, "key": key, "value": orjson.Fragment(value)}) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
            except Exception:
                log.exception("spool write failed; will retry")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()
