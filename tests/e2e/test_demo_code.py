"""`flywheel demo --case code` against a whole local stack: an editor's rejected completions become text pairs."""

from __future__ import annotations

import pytest

from deploy.sandbox import LocalLoop
from tests.e2e.demo_run import quick, run_demo, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]
pytest.importorskip("vllm")
pytest.importorskip("trl")


def test_the_code_case_turns_editor_rejections_into_text_pairs(tmp_path_factory, quick_config):
    out_dir = tmp_path_factory.mktemp("code-report")
    with LocalLoop(tmp_path_factory.mktemp("code-stack"), overrides=quick(quick_config)) as loop:
        report = run_demo(loop, out_dir, "--case", "code")
        # Only this run made completions on this stack.
        (text_pairs,) = sql(loop, "SELECT count() AS n FROM flywheel.dpo_pairs FINAL WHERE prompt_format = 'text'")
        (acceptance,) = sql(loop, "SELECT sum(judged) AS judged FROM flywheel.v_code_acceptance")

    outcome = report["outcome"]
    assert outcome["outcome"] in ("promoted", "rolled_back"), outcome
    assert outcome["pairs"] >= 1 and report["decision"]["version"] == outcome["version"]
    assert report["case"] == "code" and report["retrieval"] is None
    assert report["traffic"]["corrections"] >= outcome["pairs"]
    assert int(text_pairs["n"]) >= outcome["pairs"]
    assert int(acceptance["judged"]) > 0 and report["unseen"]["asked"] > 0
    assert report["corrections"] and all(r["after_rouge_l"] is not None for r in report["corrections"])
    assert "Gaps without their docstring" in (out_dir / "report.md").read_text()
