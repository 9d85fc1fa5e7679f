"""Retrieval-augmented answers through the gateway, on the real stack (Tansu broker, Redis, chDB store) with the
bundled shop knowledge base indexed for real (MiniLM embeddings, FAISS, BM25) and bench/upstream_stub.py as the
model (it echoes how many messages it was given).

The alias `support` is marked rag: its answers carry sources that exist in the index, the prompt the model got
(and the ChatRequest event, so the pairs made from it) holds the passages, retrieval events land in ClickHouse,
feedback names the passages, and a document updated by `flywheel kb update` is cited in its new version by the
next answer without restarting anything.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid

import httpx
import pytest
from click.testing import CliRunner

from deploy.cli import main
from inference.retrieval import KnowledgeBase
from inference.retrieval.examples import EXAMPLES_DIR
from retrain.dataset import fetch_pairs, to_dataset
from schemas import store
from schemas.events import ChatRequest, ChatResponse, Feedback, Retrieval
from schemas.text import mask_pii
from tests.conftest import settings_env
from tests.integration.gateway_helpers import consume_topics, oai, run_gateway
from tests.integration.streams_worker import StreamWorker
from tests.integration.test_gateway import stub_url  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

RETURNS = "How long is the return window?"


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    """The bundled shop policies copied to a folder of their own (a test edits one) and indexed."""
    root = tmp_path_factory.mktemp("kb")
    docs = root / "docs"
    shutil.copytree(EXAMPLES_DIR / "shop", docs)
    index = root / "index"
    KnowledgeBase.open(index).add([docs], root=docs)
    return {"docs": docs, "index": index}


@pytest.fixture(scope="module")
def gateway(stack, stub_url, kb, tmp_path_factory):  # noqa: F811
    env = {
        **os.environ,
        **settings_env(stack),
        "FLYWHEEL_GATEWAY_UPSTREAMS": stub_url,
        "FLYWHEEL_GATEWAY_DISCOVER_WORKERS": "false",
        "FLYWHEEL_GATEWAY_RAG_ALIASES": "support",
        "FLYWHEEL_KB_DIR": str(kb["index"]),
        # shorter than loading the model at start (5 s or more), far longer than a lookup (tens of ms): the
        # gateway must wait for the load at start, not give the first questions a lookup timeout
        "FLYWHEEL_GATEWAY_RAG_TIMEOUT_S": "2",
        "FLYWHEEL_LOG_LEVEL": "WARNING",
    }
    with run_gateway(env, tmp_path_factory.mktemp("gateway-rag") / "gateway.log") as gw:
        yield {**gw, "env": env}


@pytest.fixture(scope="module")
def streams(stack, tmp_path_factory):
    # no retrain jobs from here: the broker is shared, and a later module's retrain worker would take them up
    worker = StreamWorker(stack, tmp_path_factory.mktemp("streams-rag"), FLYWHEEL_STREAMS_RETRAIN_THRESHOLD="1000000")
    worker.start()
    yield worker
    worker.stop()


def ask(gateway, question: str, **kwargs):
    return oai(gateway).chat.completions.create(
        model="support", messages=[{"role": "user", "content": question}], max_tokens=16, **kwargs
    )


def passages_in(index) -> set[str]:
    kb = KnowledgeBase.open(index)
    return {p for d in kb.documents() for p in d.passages}


def test_answers_cite_passages_of_the_index_and_the_model_reads_them(gateway, kb, consumer_config):
    answer = ask(gateway, RETURNS)
    sources = answer.model_extra["sources"]
    assert sources, "a rag answer has sources"
    assert {s["passage"] for s in sources} <= passages_in(kb["index"])
    assert sources[0]["document"] == "en/returns.md"
    assert all(s["version"] == 1 and s["title"] for s in sources)
    assert answer.choices[0].message.content.startswith("echo model=tiny messages=2 ")  # the passages + the question

    stream = ask(gateway, RETURNS, stream=True)
    chunks = list(stream)
    assert chunks[0].model_extra["sources"] == sources
    assert all("sources" not in c.model_extra for c in chunks[1:])

    found = consume_topics(
        consumer_config,
        {"chat.requests": {answer.id}, "chat.responses": {answer.id}, "retrieval.queries": {answer.id}},
    )
    request, response, lookup = (found[t][answer.id] for t in ("chat.requests", "chat.responses", "retrieval.queries"))
    assert isinstance(request, ChatRequest) and isinstance(response, ChatResponse) and isinstance(lookup, Retrieval)
    system, user = request.messages
    assert system.role == "system" and "[1]" in system.content and user.content == RETURNS
    top = KnowledgeBase.open(kb["index"]).search(RETURNS, k=1)[0]
    assert top.text[:200] in system.content  # the passage text itself, not only its id
    assert [s.model_dump() for s in response.sources] == sources
    assert lookup.query == RETURNS and lookup.status == "ok" and lookup.latency_ms > 0
    assert [s.passage for s in lookup.sources] == [s["passage"] for s in sources]


def test_the_session_api_answers_with_sources_too(gateway):
    with httpx.Client(base_url=gateway["url"], headers={"Authorization": f"Bearer {gateway['key']}"}) as c:
        out = c.post("/chat", json={"message": "退货需要多长时间？"}).json()
    assert out["sources"] and out["sources"][0]["document"].startswith("zh/")
    assert "messages=2 " in out["content"]  # the session API's system prompt, now with the passages, + the question


def test_feedback_names_the_passages_of_the_answer(gateway, consumer_config):
    with httpx.Client(base_url=gateway["url"], headers={"Authorization": f"Bearer {gateway['key']}"}) as c:
        question = {"model": "support", "messages": [{"role": "user", "content": "Do your pans work on induction?"}]}
        reply = c.post("/v1/chat/completions", json=question)
        answer = reply.json()
        body = {"session_id": reply.headers["X-Session-Id"], "message_id": answer["id"], "feedback": "thumbs_down"}
        assert c.post("/feedback", json=body).status_code == 202
    feedback = consume_topics(consumer_config, {"chat.feedback": {answer["id"]}})["chat.feedback"][answer["id"]]
    assert isinstance(feedback, Feedback)
    assert feedback.passage_ids == [s["passage"] for s in answer["sources"]] != []


def test_retrievals_land_in_clickhouse_with_the_views(gateway, stack):
    answer = ask(gateway, "How long does a refund take?")
    sql = f"SELECT count(), any(status), any(k) FROM flywheel.retrievals WHERE message_id = '{answer.id}'"
    deadline = time.monotonic() + 60
    while (got := store.connect(stack.query_url).query(sql).result_rows) != [(1, "ok", 3)]:
        assert time.monotonic() < deadline, got
        time.sleep(0.5)
    view = store.connect(stack.query_url).query(
        "SELECT retrievals, hit_rate, answers, with_source FROM flywheel.v_retrieval WHERE model_version = 'tiny'"
    )
    retrievals, hit_rate, answers, with_source = view.result_rows[0]
    assert retrievals >= 1 and hit_rate == 1.0 and answers >= 1 and with_source == 1.0


def test_an_updated_document_is_cited_in_its_new_version(gateway, kb):
    marker = f"gift-{uuid.uuid4().hex[:6]}"
    doc = kb["docs"] / "en" / "returns.md"
    doc.write_text(
        doc.read_text(encoding="utf-8") + f"\n\n## Returning a gift\n\nGifts come back with receipt code {marker}.\n",
        encoding="utf-8",
    )
    env = {**gateway["env"], "FLYWHEEL_KB_DIR": str(kb["index"])}
    result = CliRunner().invoke(main, ["kb", "update", str(doc), "--root", str(kb["docs"])], env=env)
    assert result.exit_code == 0, result.output
    answer = ask(gateway, f"What receipt code do returned gifts need ({marker})?")
    cited = {(s["document"], s["version"]) for s in answer.model_extra["sources"]}
    assert ("en/returns.md", 2) in cited
    assert not any(d == "en/returns.md" and v == 1 for d, v in cited)


def test_a_rag_jobs_pairs_hold_the_passages(gateway, streams, stack, kb):
    """A thumbs-down with a correction on a rag answer becomes a pair whose prompt is the one the model read:
    the passages, then the question; the retrain job reads it from the store with them (retrain.dataset)."""
    question = "Is there a restocking fee for used items?"
    correction = f"Yes, used items in good condition carry a restocking fee (ref {uuid.uuid4().hex[:8]})."
    with httpx.Client(base_url=gateway["url"], headers={"Authorization": f"Bearer {gateway['key']}"}) as c:
        reply = c.post(
            "/v1/chat/completions", json={"model": "support", "messages": [{"role": "user", "content": question}]}
        )
        answer = reply.json()
        body = {
            "session_id": reply.headers["X-Session-Id"],
            "message_id": answer["id"],
            "feedback": "thumbs_down",
            "correction": correction,
        }
        assert c.post("/feedback", json=body).status_code == 202
    client = store.connect(stack.query_url)
    sql = "SELECT pair_id FROM flywheel.dpo_pairs FINAL WHERE chosen = %(c)s"
    deadline = time.monotonic() + 90
    while not (rows := client.query(sql, parameters={"c": correction}).result_rows):
        assert time.monotonic() < deadline, "no pair from the correction"
        time.sleep(0.5)
    (pair,) = fetch_pairs(client, [rows[0][0]])
    (row,) = to_dataset([pair]).to_list()
    system, user = row["prompt"]
    assert user == {"role": "user", "content": question}
    assert system["role"] == "system" and "[1]" in system["content"]
    index = KnowledgeBase.open(kb["index"])
    passages = {p.passage: p.text for p in index.search(question, k=10)}
    cited = [passages[s["passage"]] for s in answer["sources"]]
    assert cited and all(mask_pii(text)[:200] in system["content"] for text in cited)  # pairs mask PII
    assert row["chosen"] == [{"role": "assistant", "content": correction}]


def test_the_demo_users_get_answers_with_sources(gateway, kb):
    from deploy.demo import check_rag
    from deploy.demo_cases import case_questions
    from deploy.demo_traffic import Gateway

    demo_client = Gateway(gateway["url"], gateway["key"], "support", max_tokens=8)
    qa = case_questions("rag").other[0]
    check_rag(demo_client, qa)  # the alias is marked rag: no error
    (ex,) = demo_client.ask_all("demo-user-1", [qa], "other")
    documents = {d.document for d in KnowledgeBase.open(kb["index"]).documents()}
    assert ex.status == 200 and ex.sources and set(ex.sources) <= documents
