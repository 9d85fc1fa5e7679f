"""Docs that are generated from the code stay in step with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}  # the defaults, not the tests'
    out = subprocess.run(
        [str(Path(sys.executable).parent / "flywheel"), "config", "--markdown"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    stale = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") != out.stdout
    assert not stale, "docs/configuration.md is stale: flywheel config --markdown > docs/configuration.md"


def test_every_setting_the_docs_name_exists():
    import re

    from deploy.cli_config import rows

    known = {var for _, var, _, _ in rows()}
    # not settings: the e2e tests' own knobs, and patterns such as FLYWHEEL_<SERVICE>_METRICS_PORT
    named = {
        (path.name, var)
        for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
        for var in re.findall(r"\bFLYWHEEL_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8"))
        if not var.startswith("FLYWHEEL_E2E_")
    }
    assert not sorted((name, var) for name, var in named if var not in known)
