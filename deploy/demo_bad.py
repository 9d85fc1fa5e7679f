"""The `flywheel demo --bad` adapter: the run's correction pairs with chosen and rejected swapped, trained with the
retrain job's own code (`flywheel train dpo --pairs`), then announced as if it had passed the gate, so that the
same traffic shows the canary rolling it back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path


def swapped_pairs(pairs: Sequence) -> list[dict]:
    """The run's correction pairs with chosen and rejected swapped: an adapter that prefers the wrong answers."""
    return [
        {
            "pair_id": f"swapped-{p.pair_id}",
            "prompt": [m.model_dump() for m in p.prompt],
            "chosen": p.rejected,
            "rejected": p.chosen,
            "prompt_format": p.prompt_format,
        }
        for p in pairs
        if p.chosen
    ]


def flywheel_executable() -> list[str]:
    """The `flywheel` command of this interpreter's environment."""
    beside = Path(sys.executable).parent / "flywheel"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("flywheel")
    return [found] if found else [sys.executable, "-c", "from deploy.cli import main; main()"]


def train_bad_adapter(pairs: Sequence, timeout: float) -> dict:
    """`flywheel train dpo --pairs` (the retrain job's code, continuing from the production adapter) on the swapped
    pairs; returns its JSON result (version, path, job_id, verdict, reasons)."""
    rows = swapped_pairs(pairs)
    if not rows:
        raise RuntimeError("no correction pairs of this run to swap")
    with tempfile.TemporaryDirectory(prefix="flywheel-demo-") as tmp:
        path = Path(tmp) / "swapped.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        done = subprocess.run(
            [*flywheel_executable(), "train", "dpo", "--pairs", str(path)],
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if done.returncode != 0:
        raise RuntimeError(f"flywheel train dpo failed: {(done.stderr or done.stdout)[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def announce_adapter(bootstrap: str, alias: str, result: dict, previous: str | None) -> None:
    """A Deployment adapter_ready for the bad adapter, as if it had passed the gate: the controller canaries it."""
    from producers.sdk import ChatEventProducer
    from producers.settings import ProducerSettings
    from schemas.events import Deployment

    producer = ChatEventProducer(ProducerSettings(kafka_bootstrap=bootstrap))
    try:
        producer.send(
            Deployment(
                alias=alias,
                action="adapter_ready",
                version=result["version"],
                previous_version=previous,
                adapter_path=result["path"],
                job_id=result["job_id"],
                producer="flywheel-demo",
                reason="demo --bad: trained on swapped pairs, announced regardless of the gate",
            )
        )
        if producer.flush(30).pending:
            raise RuntimeError("the adapter_ready event was not delivered")
    finally:
        producer.close(strict=False)
