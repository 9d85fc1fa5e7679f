"""`flywheel demo --case rag` against a whole local stack: the loop turns on the shop's questions answered with
sources, the pairs keep the passages, and the report's per-version figures agree with `flywheel sql` over the same
tables and window.

The rag case is the support case (`flywheel demo`'s default: the same questions, users, corrections, rollout and
report) with the alias marked rag, so this one run checks both. Run: `pytest tests/e2e/test_demo_rag.py -s`
(about 3 minutes).
"""

from __future__ import annotations

import time

import pytest

from deploy.sandbox import LocalLoop
from tests.e2e.demo_run import quick, run_demo, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]
pytest.importorskip("vllm")
pytest.importorskip("trl")


def test_the_rag_case_turns_the_loop_with_sources_and_its_report_agrees_with_sql(tmp_path_factory, quick_config):
    from inference.retrieval import KnowledgeBase
    from inference.retrieval.examples import SHOP_DIR

    index = tmp_path_factory.mktemp("kb") / "index"
    # Short passages, one per answer: the tiny model's context is 512 tokens of a tokenizer that knows little of
    # the shop's words (a Chinese passage of 150 characters is up to about 400 of them).
    KnowledgeBase.open(index).add([SHOP_DIR], chunk_size=150, overlap=20, root=SHOP_DIR)
    overrides = {
        **quick(quick_config),
        "FLYWHEEL_GATEWAY_RAG_ALIASES": "support",
        "FLYWHEEL_GATEWAY_RAG_TOP_K": "1",
        "FLYWHEEL_KB_DIR": str(index),
    }
    out_dir = tmp_path_factory.mktemp("rag-report")
    with LocalLoop(tmp_path_factory.mktemp("rag-stack"), overrides=overrides) as loop:
        report = run_demo(loop, out_dir, "--case", "rag")
        where = report["window"]["where"]
        stored_query = f"SELECT count() AS n FROM flywheel.retrievals WHERE {where}"
        deadline, wanted = time.monotonic() + 60, report["retrieval"]["with_sources"]
        while int(sql(loop, stored_query)[0]["n"]) < wanted and time.monotonic() < deadline:
            time.sleep(2)  # the sink lands retrieval events beside the answers, in its own batches
        stored = int(sql(loop, stored_query)[0]["n"])
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

    # Answers carry sources, mostly the page that answers the question, and the run's pairs keep the passages.
    r = report["retrieval"]
    assert r["answered"] > 0 and r["source_share"] > 0.9, r
    assert r["labelled"] > 0 and r["hit_rate"] > 0.5, r
    assert r["pairs"] == outcome["pairs"] >= 1 and r["pairs_with_passages"] >= 1, r
    assert stored >= r["with_sources"]  # every lookup is a Retrieval event in the store

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
    assert t["corrections"] >= outcome["pairs"]
    assert report["corrections"] and all(
        r["before"] is not None and r["after_rouge_l"] is not None for r in report["corrections"]
    )
    assert report["unseen"]["asked"] > 0 and report["unseen"]["share"] is not None
    assert "## Answers with sources (rag)" in (out_dir / "report.md").read_text()
    for name in ("report.md", "requests_per_s.png", "thumbs_down_rate.png", "canary_weight.png"):
        assert (out_dir / name).stat().st_size > 0, name
    assert outcome["version"] in report["weights"]
