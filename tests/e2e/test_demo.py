"""`flywheel demo` (the support case) against a whole local stack: its report's per-version figures must agree
with `flywheel sql` over the same tables and window. Run: `pytest tests/e2e/test_demo.py -s` (about 5 minutes).
"""

from __future__ import annotations

import pytest

from deploy.sandbox import LocalLoop
from tests.e2e.demo_run import quick, run_demo, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]
pytest.importorskip("vllm")
pytest.importorskip("trl")


def test_demo_turns_the_loop_and_its_report_agrees_with_sql(tmp_path_factory, quick_config):
    out_dir = tmp_path_factory.mktemp("demo-report")
    with LocalLoop(tmp_path_factory.mktemp("demo-stack"), overrides=quick(quick_config)) as loop:
        report = run_demo(loop, out_dir)
        where = report["window"]["where"]
        # The same tables and window as the report, asked independently of the analyst summary's SELECT.
        counts = {
            r["model_version"]: r
            for r in sql(
                loop,
                f"""
            SELECT model_version, count() AS requests, countIf(status != 'ok') AS errors,
                   dateDiff('microsecond', min(occurred_at), max(occurred_at)) / 1e6 AS span_s
            FROM flywheel.chat_responses FINAL WHERE {where} GROUP BY model_version""",
            )
        }
        verdicts = {
            r["model_version"]: r
            for r in sql(
                loop,
                f"""
            SELECT model_version, countIf(verdict != '') AS rated, countIf(verdict = 'thumbs_down') AS down,
                   quantileIf(0.95)(latency_ms, status = 'ok') AS p95
            FROM flywheel.v_responses WHERE {where} GROUP BY model_version""",
            )
        }
        stages = sql(
            loop,
            f"SELECT job_id, adapter_version, stage FROM flywheel.v_loop_stages "
            f"WHERE job_id = '{report['outcome']['job_id']}'",
        )

    outcome = report["outcome"]
    assert outcome["outcome"] in ("promoted", "rolled_back"), outcome
    assert not outcome["timed_out"] and report["window"]["store_synced"]
    assert report["decision"]["action"] == outcome["outcome"] and report["decision"]["reason"]
    assert report["decision"]["version"] == outcome["version"]
    # The job was built from this run's pairs and its stage times are the view's row.
    assert report["stages"]["job_id"] == outcome["job_id"] and stages[0]["adapter_version"] == outcome["version"]
    assert stages[0]["stage"] == outcome["outcome"]

    # Per-version figures agree with SQL over the same window.
    versions = {v["model_version"]: v for v in report["versions"]}
    assert set(versions) == set(counts) and outcome["version"] in versions
    for name, v in versions.items():
        c, f = counts[name], verdicts[name]
        assert v["requests"] == int(c["requests"]), (name, v, c)
        assert v["error_rate"] == pytest.approx(int(c["errors"]) / int(c["requests"]))
        assert v["requests_per_s"] == pytest.approx(int(c["requests"]) / max(1.0, float(c["span_s"])), rel=1e-6)
        assert v["rated"] == int(f["rated"]) and v["thumbs_down"] == int(f["down"])
        assert v["thumbs_down_rate"] == pytest.approx(int(f["down"]) / int(f["rated"]) if int(f["rated"]) else None)
        assert v["latency_p95_ms"] == pytest.approx(float(f["p95"]), rel=1e-6)
    # Every answer the demo got is in the window, none of anyone else's.
    t = report["traffic"]
    asked_after = len(report["corrections"]) + report["unseen"]["asked"]
    assert sum(v["requests"] for v in versions.values()) == t["asked"] + asked_after
    assert sum(v["rated"] for v in versions.values()) == t["thumbs_up"] + t["thumbs_down"]

    # Corrections and the after-the-loop answers.
    assert t["corrections"] >= outcome["pairs"] >= 1
    assert report["corrections"] and all(
        r["before"] is not None and r["after_rouge_l"] is not None for r in report["corrections"]
    )
    assert report["unseen"]["asked"] > 0 and report["unseen"]["share"] is not None
    for name in ("report.md", "requests_per_s.png", "thumbs_down_rate.png", "canary_weight.png"):
        assert (out_dir / name).stat().st_size > 0, name
    assert outcome["version"] in report["weights"]
