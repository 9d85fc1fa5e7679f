"""The adapter registry: immutable, never-reused versions `<alias>@vN` with their lineage.

Layout (root = FLYWHEEL_RETRAIN_REGISTRY_DIR, default <data_dir>/adapters):

    <root>/<alias>/v1/                 adapter_config.json, adapter_model.safetensors, ..., metadata.json
    <root>/<alias>/v2/ ...
    <root>/<alias>/production.json     {"version": "<alias>@v2", "history": ["<alias>@v1"], "updated_at": ...}
    <root>/<alias>/.lock               serializes version numbering and pointer updates (flock)
    <root>/<alias>/.tmp-<uuid>/        a version being written; never listed, removed by clean_temp()

`register` copies the adapter into a temporary directory beside the versions, writes metadata.json
(base model, parent version, pair ids, job id, eval results, created time, sha256 of every file),
fsyncs the files and the directory, then renames it to `vN`: a crash leaves either no version or a
whole one. N is the largest existing number + 1, rejected versions included, so a name never
points at two different sets of weights (vLLM caches adapters by name). A rejected version is kept,
marked `verdict: rejected`, and can never be promoted.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas.artifacts import METADATA, manifest_problem, sha256_file

POINTER = "production.json"
_VERSION_DIR = re.compile(r"^v(\d+)$")


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, rejected version, corrupt files)."""


@dataclass(frozen=True)
class AdapterVersion:
    alias: str
    number: int
    path: Path
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.alias}@v{self.number}"

    @property
    def rejected(self) -> bool:
        return self.metadata.get("verdict") == "rejected"


def parse_version(name: str) -> tuple[str, int]:
    """'support@v3' -> ('support', 3)."""
    alias, sep, tail = name.rpartition("@")
    match = _VERSION_DIR.match(tail)
    if not sep or not alias or not match:
        raise RegistryError(f"not a version name: {name!r} (expected <alias>@v<N>)")
    return alias, int(match.group(1))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: str) -> None:
    with open(path, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    # -- paths and locking -----------------------------------------------------------------------

    def alias_dir(self, alias: str) -> Path:
        if not alias or "/" in alias or "@" in alias or alias.startswith("."):
            raise RegistryError(f"bad alias {alias!r}")
        return self.root / alias

    @contextmanager
    def _locked(self, alias: str) -> Iterator[Path]:
        adir = self.alias_dir(alias)
        adir.mkdir(parents=True, exist_ok=True)
        with open(adir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield adir
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- reading -----------------------------------------------------------------------------------

    def _numbers(self, adir: Path) -> list[int]:
        if not adir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in adir.iterdir() if (m := _VERSION_DIR.match(p.name)) and p.is_dir())

    def list(self, alias: str) -> list[AdapterVersion]:
        adir = self.alias_dir(alias)
        return [self._load(alias, n) for n in self._numbers(adir)]

    def aliases(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _load(self, alias: str, number: int) -> AdapterVersion:
        path = self.alias_dir(alias) / f"v{number}"
        try:
            metadata = json.loads((path / METADATA).read_text())
        except FileNotFoundError:
            raise RegistryError(f"{alias}@v{number} does not exist") from None
        return AdapterVersion(alias, number, path, metadata)

    def show(self, name: str) -> AdapterVersion:
        alias, number = parse_version(name)
        return self._load(alias, number)

    def verify(self, name: str) -> None:
        """Raise RegistryError unless every file still has the sha256 recorded at registration."""
        problem = manifest_problem(self.show(name).path)
        if problem:
            raise RegistryError(f"{name}: {problem}")

    # -- writing -----------------------------------------------------------------------------------

    def register(self, alias: str, adapter_dir: str | Path, metadata: dict[str, Any]) -> AdapterVersion:
        """Copy `adapter_dir` in as the next version, atomically; return it."""
        src = Path(adapter_dir)
        if not (src / "adapter_config.json").is_file():
            raise RegistryError(f"{src} is not a PEFT adapter directory (no adapter_config.json)")
        with self._locked(alias) as adir:
            tmp = adir / f".tmp-{uuid.uuid4().hex}"
            try:
                shutil.copytree(src, tmp)
                files = {}
                for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
                    with open(path, "rb+") as f:
                        os.fsync(f.fileno())
                    files[str(path.relative_to(tmp))] = sha256_file(path)
                number = max(self._numbers(adir), default=0) + 1
                name = f"{alias}@v{number}"
                weights = files.get("adapter_model.safetensors") or files.get("adapter_model.bin")
                meta = {
                    **metadata,
                    "version": name,
                    "alias": alias,
                    "created_at": datetime.now(UTC).isoformat(),
                    "sha256": weights,
                    "files": files,
                }
                _write_durable(tmp / METADATA, json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
                _fsync_dir(tmp)
                final = adir / f"v{number}"
                os.rename(tmp, final)  # atomic; the lock makes `final` new (rename onto an empty dir would succeed)
                _fsync_dir(adir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return AdapterVersion(alias, number, final, meta)

    def clean_temp(self, alias: str) -> int:
        """Remove versions left half-written by a crash; return how many."""
        with self._locked(alias) as adir:
            stale = [p for p in adir.iterdir() if p.name.startswith(".tmp-")]
            for path in stale:
                shutil.rmtree(path, ignore_errors=True)
        return len(stale)

    # -- the production pointer ----------------------------------------------------------------------

    def pointer(self, alias: str) -> dict[str, Any]:
        path = self.alias_dir(alias) / POINTER
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {"version": None, "history": []}

    def current(self, alias: str) -> str | None:
        """The version in production, or None while the base model serves the alias."""
        return self.pointer(alias)["version"]

    def _write_pointer(self, adir: Path, version: str | None, history: list[str], reason: str) -> None:
        tmp = adir / f".{POINTER}.{uuid.uuid4().hex}"
        data = {"version": version, "history": history, "reason": reason, "updated_at": datetime.now(UTC).isoformat()}
        _write_durable(tmp, json.dumps(data, indent=2) + "\n")
        os.replace(tmp, adir / POINTER)
        _fsync_dir(adir)

    def promote(self, name: str, reason: str = "") -> dict[str, Any]:
        """Make `name` the production version; the one it replaces goes on the history stack."""
        version = self.show(name)
        if version.rejected:
            raise RegistryError(f"{name} was rejected by the evaluation gate and cannot be promoted")
        with self._locked(version.alias) as adir:
            ptr = self.pointer(version.alias)
            if ptr["version"] == name:
                return ptr
            history = [*ptr["history"], ptr["version"]] if ptr["version"] else list(ptr["history"])
            self._write_pointer(adir, name, history, reason or "promoted")
        return self.pointer(version.alias)

    def rollback(self, alias: str, reason: str = "") -> dict[str, Any]:
        """Production goes back to the previous version (or the base model when there is none)."""
        with self._locked(alias) as adir:
            ptr = self.pointer(alias)
            if ptr["version"] is None:
                raise RegistryError(f"{alias}: nothing to roll back (the base model is in production)")
            history = list(ptr["history"])
            previous = history.pop() if history else None
            self._write_pointer(adir, previous, history, reason or f"rolled back from {ptr['version']}")
        return self.pointer(alias)
