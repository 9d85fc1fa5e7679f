"""The manifest of a registered model version: `metadata.json` beside its files, with the sha256 of each.

The registry (retrain/registry.py) writes it when it registers a version; the hot-swap controller checks it
before it loads an adapter onto the workers (inference/adapters.py), so a file changed on disk, or a directory
that never went through the registry, is refused instead of served.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

METADATA = "metadata.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_problem(directory: str | Path) -> str | None:
    """Why `directory` is not an intact registered version (no manifest, a file missing or changed), or None."""
    directory = Path(directory)
    try:
        files = json.loads((directory / METADATA).read_text())["files"]
    except FileNotFoundError:
        return f"no {METADATA} in {directory}: not a registered version"
    except (ValueError, KeyError, TypeError):
        return f"{directory / METADATA} has no file list"
    for rel, digest in files.items():
        path = directory / rel
        if not path.is_file():
            return f"{rel} is missing from {directory}"
        if sha256_file(path) != digest:
            return f"{rel} in {directory} does not match its recorded sha256"
    return None
