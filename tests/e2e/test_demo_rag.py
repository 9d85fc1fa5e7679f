"""`flywheel demo --case rag` against a whole local stack: answers cite the shop's pages, and the pairs keep them."""

from __future__ import annotations

import time

import pytest

from deploy.sandbox import LocalLoop
from tests.e2e.demo_run import quick, run_demo, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]
pytest.importorskip("vllm")
pytest.importorskip("trl")


def test_the_rag_case_answers_with_sources_and_its_pairs_keep_the_passages(tmp_path_factory, quick_config):
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
        stored_query = f"SELECT count() AS n FROM flywheel.retrievals WHERE {report['window']['where']}"
        deadline, wanted = time.monotonic() + 60, report["retrieval"]["with_sources"]
        while int(sql(loop, stored_query)[0]["n"]) < wanted and time.monotonic() < deadline:
            time.sleep(2)  # the sink lands retrieval events beside the answers, in its own batches
        stored = int(sql(loop, stored_query)[0]["n"])

    outcome = report["outcome"]
    assert outcome["outcome"] in ("promoted", "rolled_back"), outcome
    assert outcome["pairs"] >= 1 and report["decision"]["version"] == outcome["version"]
    # Answers carry sources, mostly the page that answers the question, and the run's pairs keep the passages.
    r = report["retrieval"]
    assert r["answered"] > 0 and r["source_share"] > 0.9, r
    assert r["labelled"] > 0 and r["hit_rate"] > 0.5, r
    assert r["pairs"] == outcome["pairs"] and r["pairs_with_passages"] >= 1, r
    assert stored >= r["with_sources"]  # every lookup is a Retrieval event in the store
    assert "## Answers with sources (rag)" in (out_dir / "report.md").read_text()
