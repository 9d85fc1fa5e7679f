"""Running `flywheel demo` as a user runs it against a whole local stack, and asking the store what it recorded.

The demo runs (the `flywheel` command, the stack's environment) until the adapter trained from its corrections is
promoted or rolled back. The stack serves the tiny random-weight model with the local loop's small settings: the
tests check the mechanics, not what the model learns.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from deploy.sandbox import LocalLoop

FLYWHEEL = str(Path(sys.executable).parent / "flywheel")
# A rollout that cannot conclude on the tiny model's noise ends (rolled back as inconclusive) within the test; the
# gate's learning check is off, as the tiny model learns nothing in one job (the gate is not under test here).
OVERRIDES = {"FLYWHEEL_CANARY_MAX_DURATION_S": "25", "FLYWHEEL_GATE_MIN_CORRECTED": "0"}


def quick(config: Path) -> dict[str, str]:
    """OVERRIDES, with jobs trained by `config` (a short supervised stage: the gate's learning check is off)."""
    return {**OVERRIDES, "FLYWHEEL_RETRAIN_CONFIG": str(config)}


def sql(loop: LocalLoop, query: str) -> list[dict]:
    out = subprocess.run(
        [FLYWHEEL, "sql", query, "--format", "json"], env=loop.child_env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def run_demo(loop: LocalLoop, out_dir: Path, *args: str) -> dict:
    """`flywheel demo` as a user runs it; its report."""
    # Temperature 1: at 0 the random-weight model answers only newlines, which make no pairs.
    demo = subprocess.run(
        [FLYWHEEL, "demo", "--users", "100", "--rate", "4", "--max-tokens", "12", "--temperature", "1"]
        + ["--timeout", "420", "--out", str(out_dir), *args],
        env=loop.child_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(demo.stdout[-6000:])
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    return json.loads((out_dir / "report.json").read_text())
