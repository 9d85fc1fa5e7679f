"""Code snippets for the code assistant's tests and demo: small Python functions, each cut around the code a good
completion writes (one line or a short block).

Reads `code.jsonl` beside this module: one JSON object per line, {"id", "prefix", "middle", "suffix"}; prefix +
middle + suffix is a valid Python module. An editor at the gap sends prefix and suffix to /code/complete; the middle
is the completion to accept (or the correction to send with a rejection).

Example:
    from retrain.demo.code import load_snippets
    snippet = load_snippets()[0]
    body = {"prefix": snippet.prefix, "suffix": snippet.suffix, "language": "python"}
    httpx.post(url + "/code/complete", json=body, headers={"Authorization": f"Bearer {key}"})
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CODE_FILE = Path(__file__).with_name("code.jsonl")


@dataclass(frozen=True)
class Snippet:
    id: str
    prefix: str  # the code before the gap
    middle: str  # what a good completion writes there
    suffix: str  # the code after it

    @property
    def source(self) -> str:
        return self.prefix + self.middle + self.suffix


def load_snippets(path: str | Path = CODE_FILE) -> list[Snippet]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [Snippet(**json.loads(line)) for line in lines if line.strip()]
