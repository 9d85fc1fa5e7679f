"""Docs that are generated from the code stay in step with it."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current(monkeypatch):
    from click.testing import CliRunner

    from deploy.cli import main

    monkeypatch.chdir(ROOT)
    for name in [k for k in os.environ if k.startswith("FLYWHEEL_")]:  # the defaults, not the tests'
        monkeypatch.delenv(name)
    out = CliRunner().invoke(main, ["config", "--markdown"])
    assert out.exit_code == 0, out.output
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
