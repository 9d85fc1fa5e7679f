"""The gateway against the real stack: Tansu broker, Redis, and one real vLLM CPU worker serving the tiny model.

As in production, the worker is the readiness wrapper (`python -m inference.worker.wrapper`, which starts the vLLM
OpenAI server as its child; this folder's, see worker.py) and the gateway (`python -m inference.gateway.app`) finds
it through its readiness record in Redis and routes the alias `support` to the base model's served name through
`flywheel:routes:support`. Both use a Redis database of their own (the worker reads every routing table of its
database) and the gateway a data directory of its own (its dev key and spool).

The tiny model has random weights: answers are noise, so the tests check their shape (non-empty, token counts,
ids, versions), never their words. Answers are kept to a few tokens.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from inference.gateway.fim import PLAIN, resolve_template
from inference.keys import routes_key
from retrain.demo.code import load_snippets
from schemas.events import ChatRequest, ChatResponse, Feedback, InferenceLatency
from schemas.topics import CHAT_FEEDBACK, CHAT_REQUESTS, CHAT_RESPONSES, INFERENCE_LATENCY
from tests.conftest import settings_env
from tests.integration.gateway_helpers import consume, consume_topics, create_keys, oai, run_gateway

from .worker import SERVED, TOKEN, Worker, log_tail

pytestmark = [pytest.mark.integration, pytest.mark.vllm, pytest.mark.timeout(600)]

pytest.importorskip("vllm")

ALIAS = "support"
VERSION = SERVED  # the base model's served name: what the gateway must report as the version served
MAX_TOKENS = 8
SYSTEM_PROMPT = "You are a test assistant."


# -- fixtures: the folder's vLLM worker (conftest.py) and one gateway for the module -----------------------------


@pytest.fixture(scope="module")
def model_dir(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def db_url(worker_db) -> str:
    r = redis.Redis.from_url(worker_db)
    # The alias's routing table as the controller writes it for the base model alone.
    r.hset(routes_key(ALIAS), VERSION, 100)
    r.close()
    yield worker_db
    r = redis.Redis.from_url(worker_db)
    r.delete(routes_key(ALIAS))
    r.close()


@pytest.fixture(scope="module")
def gateway(stack, db_url, worker: Worker, model_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("gateway-data")
    env = {
        **os.environ,
        **settings_env(stack),
        "FLYWHEEL_DATA_DIR": str(data_dir),
        "FLYWHEEL_BASE_MODEL": str(model_dir),  # its tokenizer files: the fill-in-the-middle template ("auto")
        "FLYWHEEL_REDIS_URL": db_url,
        "FLYWHEEL_WORKER_API_KEY": TOKEN,
        "FLYWHEEL_MODEL_ALIAS": ALIAS,
        "FLYWHEEL_SERVED_MODEL_NAME": VERSION,
        "FLYWHEEL_GATEWAY_UPSTREAMS": "",
        "FLYWHEEL_GATEWAY_DISCOVER_WORKERS": "true",
        "FLYWHEEL_GATEWAY_REFRESH_S": "0.5",
        "FLYWHEEL_GATEWAY_SYSTEM_PROMPT": SYSTEM_PROMPT,
        "FLYWHEEL_LOG_LEVEL": "WARNING",
    }
    with run_gateway(env, data_dir / "gateway.log") as gw:
        # Ready once it has discovered the worker and read the routing table.
        deadline = time.monotonic() + 30
        while True:
            h = httpx.get(gw["url"] + "/health", headers={"Authorization": f"Bearer {gw['key']}"}, timeout=5.0)
            if h.status_code == 200 and h.json()["checks"]["workers"]["ready"] >= 1:
                break
            assert time.monotonic() < deadline, f"gateway never saw the worker: {h.text}\n{log_tail(gw['log'])}"
            time.sleep(0.2)
        yield {**gw, "worker": worker.url}


@pytest.fixture(scope="module")
def keys(db_url, gateway):
    """Extra keys in the gateway's database; `limited` (1 request/min) is spent on one real answer here."""
    made = create_keys(db_url, limited_rate=1)
    r = httpx.post(
        gateway["url"] + "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {made['limited']}"},
        timeout=60.0,
    )
    assert r.status_code == 200, r.text
    return {**made, "dev": gateway["key"]}


@pytest.fixture
def client(gateway):
    with httpx.Client(
        base_url=gateway["url"], headers={"Authorization": f"Bearer {gateway['key']}"}, timeout=60.0
    ) as c:
        yield c


def sse_chunks(response: httpx.Response) -> tuple[list[dict], str]:
    """The JSON chunks of an SSE answer and its last data line (which must be [DONE])."""
    lines = [ln for ln in response.iter_lines() if ln.startswith("data:")]
    return [orjson.loads(ln[5:]) for ln in lines[:-1]], lines[-1]


def sse_text(chunks: list[dict]) -> str:
    return "".join((ch["choices"][0]["delta"].get("content") or "") for ch in chunks if ch.get("choices"))


CHAT = {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS, "temperature": 0}


# -- OpenAI compatibility ---------------------------------------------------------------------------------


def test_models(gateway):
    models = oai(gateway).models.list()
    ids = [m.id for m in models.data]
    assert ids == [ALIAS, VERSION]
    alias = models.data[0].model_dump()
    assert alias["versions"] == [{"version": VERSION, "weight": 100}]
    assert models.data[1].model_dump()["parent"] == ALIAS


def test_openai_client_non_stream(gateway):
    c = oai(gateway, **{"X-Session-Id": "oai-session-1"})
    raw = c.chat.completions.with_raw_response.create(
        model=ALIAS,
        messages=[{"role": "user", "content": "Where is my order?"}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        user="alice",
    )
    completion = raw.parse()
    assert raw.headers["x-session-id"] == "oai-session-1"
    assert raw.headers["x-model-version"] == VERSION
    assert completion.id.startswith("chatcmpl-") and len(completion.id) == len("chatcmpl-") + 32
    assert completion.model == VERSION  # what vLLM served
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert 0 < completion.usage.completion_tokens <= MAX_TOKENS and completion.usage.prompt_tokens > 0


def test_openai_client_stream(gateway):
    c = oai(gateway)
    messages = [{"role": "user", "content": "hello there"}]
    chunks = list(
        c.chat.completions.create(
            model=ALIAS,
            messages=messages,
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    ids = {ch.id for ch in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert {ch.model for ch in chunks} == {VERSION}
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices  # the usage-only chunk, last
    assert 0 < usage.completion_tokens <= MAX_TOKENS
    assert all(ch.usage is None for ch in chunks[:-1])
    # Greedy decoding: the same prompt unstreamed gives the same text, relayed whole.
    same = c.chat.completions.create(model=ALIAS, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    assert same.choices[0].message.content == text
    assert same.usage.completion_tokens == usage.completion_tokens


def test_stream_without_usage_hides_usage_chunk(client):
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks, last = sse_chunks(r)
    assert last == "data: [DONE]"
    assert chunks and all(ch["choices"] and "usage" not in ch for ch in chunks)
    assert len({ch["id"] for ch in chunks}) == 1


def test_version_by_name(client):
    """The served version may be asked for by name, not only through the alias."""
    r = client.post("/v1/chat/completions", json={**CHAT, "model": VERSION})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == VERSION and r.headers["x-model-version"] == VERSION


# -- sessions ------------------------------------------------------------------------------------------------


def test_session_history_across_turns(client, consumer_config):
    turn = {"max_tokens": MAX_TOKENS, "temperature": 0}
    r1 = client.post("/chat", json={"message": "first question", **turn})
    assert r1.status_code == 200, r1.text
    first = r1.json()
    sid = first["session_id"]
    assert r1.headers["x-session-id"] == sid
    assert first["model"] == VERSION and first["content"] and 0 < first["usage"]["completion_tokens"] <= MAX_TOKENS
    r2 = client.post("/chat", json={"session_id": sid, "message": "second question", **turn})
    assert r2.status_code == 200, r2.text
    second = r2.json()
    assert second["session_id"] == sid and second["message_id"] != first["message_id"]
    with client.stream("POST", "/chat/stream", json={"session_id": sid, "message": "third question", **turn}) as r:
        assert r.status_code == 200
        chunks, last = sse_chunks(r)
    assert last == "data: [DONE]"
    third_id = chunks[0]["id"]
    third_text = sse_text(chunks)
    assert third_text

    ids = [first["message_id"], second["message_id"], third_id]
    found = consume(consumer_config, CHAT_REQUESTS.name, set(ids))
    assert set(found) == set(ids)
    requests = [found[i] for i in ids]
    assert all(isinstance(e, ChatRequest) and e.session_id == sid and e.route == "session" for e in requests)
    history = [(m.role, m.content) for m in requests[2].messages]
    assert history == [
        ("system", SYSTEM_PROMPT),
        ("user", "first question"),
        ("assistant", first["content"]),
        ("user", "second question"),
        ("assistant", second["content"]),
        ("user", "third question"),
    ]
    assert [(m.role, m.content) for m in requests[1].messages] == history[:4]
    assert len(requests[0].messages) == 2
    assert requests[2].stream and not requests[1].stream

    # The streamed turn was recorded too; a deleted session starts over.
    r4 = client.post("/chat", json={"session_id": sid, "message": "fourth", **turn})
    assert r4.status_code == 200, r4.text
    assert client.delete(f"/session/{sid}").status_code == 200
    r5 = client.post("/chat", json={"session_id": sid, "message": "again", **turn})
    assert r5.status_code == 200, r5.text
    ids45 = {r4.json()["message_id"], r5.json()["message_id"]}
    later = consume(consumer_config | {"group.id": consumer_config["group.id"] + "b"}, CHAT_REQUESTS.name, ids45)
    assert [m.content for m in later[r4.json()["message_id"]].messages][-3:] == ["third question", third_text, "fourth"]
    assert [m.role for m in later[r5.json()["message_id"]].messages] == ["system", "user"]


# -- feedback ---------------------------------------------------------------------------------------------


def test_feedback_accepted_404_403(client, consumer_config):
    r = client.post("/chat", json={"message": "rate me", "max_tokens": MAX_TOKENS}, headers={"X-User-Id": "alice"})
    assert r.status_code == 200, r.text
    sid, mid = r.json()["session_id"], r.json()["message_id"]
    body = {
        "session_id": sid,
        "message_id": mid,
        "feedback": "thumbs_down",
        "comment": "wrong",
        "correction": "The right answer.",
    }
    other = client.post("/feedback", json=body, headers={"X-User-Id": "mallory"})
    assert other.status_code == 403 and other.json()["error"]["code"] == "not_message_owner"
    unknown = client.post(
        "/feedback", json={**body, "message_id": "chatcmpl-" + "0" * 32}, headers={"X-User-Id": "alice"}
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "message_not_found"
    elsewhere = client.post("/feedback", json={**body, "session_id": "another-session"}, headers={"X-User-Id": "alice"})
    assert elsewhere.status_code == 404 and elsewhere.json()["error"]["code"] == "message_not_found"
    ok = client.post("/feedback", json=body, headers={"X-User-Id": "alice"})
    assert ok.status_code == 202, ok.text
    assert ok.json()["message_id"] == mid and ok.json()["status"] == "accepted"
    fb = consume(consumer_config, CHAT_FEEDBACK.name, {mid}).get(mid)
    assert isinstance(fb, Feedback)
    assert str(fb.event_id) == ok.json()["event_id"] and fb.session_id == sid and fb.user_id == "alice"
    assert fb.feedback == "thumbs_down" and fb.comment == "wrong" and fb.correction == "The right answer."


def test_openai_id_is_the_message_id(gateway, client):
    c = oai(gateway, **{"X-Session-Id": "oai-fb"})
    completion = c.chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": "q"}], max_tokens=MAX_TOKENS, user="bob"
    )
    fb = {"session_id": "oai-fb", "message_id": completion.id, "feedback": "thumbs_up"}
    assert client.post("/feedback", json=fb, headers={"X-User-Id": "carol"}).status_code == 403
    r = client.post("/feedback", json=fb, headers={"X-User-Id": "bob"})
    assert r.status_code == 202, r.text


# -- errors -------------------------------------------------------------------------------------------------

FEEDBACK = {"session_id": "s", "message_id": "chatcmpl-" + "f" * 32, "feedback": "thumbs_up"}


@pytest.mark.parametrize(
    "key, method, path, body, status, code",
    [
        (None, "POST", "/v1/chat/completions", CHAT, 401, "missing_api_key"),
        ("bad", "POST", "/v1/chat/completions", CHAT, 401, "invalid_api_key"),
        ("fw-" + "x" * 40, "POST", "/chat", {"message": "hi"}, 401, "invalid_api_key"),
        (None, "GET", "/v1/models", None, 401, "missing_api_key"),
        ("admin_only", "POST", "/v1/chat/completions", CHAT, 403, "insufficient_scope"),
        ("chat_only", "GET", "/admin/workers", None, 403, "insufficient_scope"),
        ("dev", "POST", "/feedback", FEEDBACK, 404, "message_not_found"),
        ("dev", "GET", "/no/such/route", None, 404, None),
        ("dev", "POST", "/v1/chat/completions", {**CHAT, "model": "gpt-9"}, 404, "model_not_found"),
        ("dev", "POST", "/v1/chat/completions", {**CHAT, "model": "support@v9"}, 404, "model_not_found"),
        ("dev", "DELETE", "/session/nosuchsession", None, 404, "session_not_found"),
        ("dev", "POST", "/v1/chat/completions", {"model": ALIAS}, 422, "invalid_request"),
        ("dev", "POST", "/v1/chat/completions", {**CHAT, "temperature": "hot"}, 422, "invalid_request"),
        ("dev", "POST", "/v1/chat/completions", {**CHAT, "max_tokens": 0}, 422, "invalid_request"),
        ("dev", "POST", "/feedback", {**FEEDBACK, "feedback": "meh"}, 422, "invalid_request"),
        ("dev", "POST", "/chat", {"message": "hi", "session_id": "bad id!"}, 422, "invalid_session_id"),
        ("dev", "POST", "/chat", {"message": "hi", "stream": True}, 422, "invalid_request"),
        ("limited", "POST", "/v1/chat/completions", CHAT, 429, "rate_limit_exceeded"),
        ("limited", "POST", "/chat", {"message": "hi"}, 429, "rate_limit_exceeded"),
    ],
)
def test_error_table(gateway, keys, key, method, path, body, status, code):
    token = keys.get(key, key) if key else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.request(method, gateway["url"] + path, json=body, headers=headers, timeout=60.0)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["message"] and error["type"]
    if code:
        assert error["code"] == code
    if status == 422:
        fields = ("messages", "temperature", "max_tokens", "feedback", "session_id", "stream")
        assert any(f in error["message"] for f in fields), error
    if status == 429:
        assert int(r.headers["retry-after"]) >= 1 and error["type"] == "rate_limit_error"


def test_vllm_rejection_is_passed_on(client):
    """A request the gateway accepts but vLLM refuses (longer than the context): vLLM's 400, as JSON."""
    r = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 100_000})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "upstream_error" and error["type"] == "invalid_request_error"
    assert "context" in error["message"] or "max_tokens" in error["message"], error


# -- events -----------------------------------------------------------------------------------------------


def test_events_on_each_topic(gateway, client, consumer_config):
    c = oai(gateway, **{"X-Session-Id": "events-1"})
    a = c.chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": "one"}], user="eve", max_tokens=MAX_TOKENS, temperature=0
    )
    chunks = list(
        c.chat.completions.create(
            model=ALIAS,
            messages=[{"role": "user", "content": "two"}],
            user="eve",
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
        )
    )
    b = chunks[0].id
    b_text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    fb = client.post(
        "/feedback",
        json={"session_id": "events-1", "message_id": a.id, "feedback": "thumbs_up"},
        headers={"X-User-Id": "eve"},
    )
    assert fb.status_code == 202, fb.text
    ids = {a.id, b}
    found = consume_topics(
        consumer_config,
        {CHAT_REQUESTS.name: ids, CHAT_RESPONSES.name: ids, INFERENCE_LATENCY.name: ids, CHAT_FEEDBACK.name: {a.id}},
    )
    requests, responses = found[CHAT_REQUESTS.name], found[CHAT_RESPONSES.name]
    latency, feedback = found[INFERENCE_LATENCY.name], found[CHAT_FEEDBACK.name]
    assert set(requests) == set(responses) == set(latency) == ids and set(feedback) == {a.id}

    for mid in ids:
        req, resp, lat = requests[mid], responses[mid], latency[mid]
        assert isinstance(req, ChatRequest) and isinstance(resp, ChatResponse) and isinstance(lat, InferenceLatency)
        assert req.session_id == resp.session_id == lat.session_id == "events-1"
        assert req.user_id == resp.user_id == "eve" and req.model_alias == resp.model_alias == ALIAS
        assert req.max_tokens == MAX_TOKENS and req.temperature == 0 and req.route == "openai"
        assert resp.status == lat.status == "ok" and resp.error is None
        assert resp.model_version == lat.model_version == VERSION
        assert resp.worker == lat.worker == gateway["worker"]
        assert 0 < resp.completion_tokens <= MAX_TOKENS and resp.prompt_tokens > 0
        assert (lat.completion_tokens, lat.prompt_tokens) == (resp.completion_tokens, resp.prompt_tokens)
        assert resp.latency_ms > 0 and lat.latency_ms == resp.latency_ms and lat.tokens_per_s > 0
        assert resp.finish_reason in ("stop", "length")
    assert requests[b].stream and not requests[a.id].stream
    assert [(m.role, m.content) for m in requests[a.id].messages] == [("user", "one")]
    assert responses[a.id].content == a.choices[0].message.content
    assert responses[a.id].completion_tokens == a.usage.completion_tokens
    assert responses[b].content == b_text
    assert responses[b].ttft_ms is not None and 0 < responses[b].ttft_ms <= responses[b].latency_ms
    assert responses[a.id].ttft_ms is None
    assert isinstance(feedback[a.id], Feedback) and feedback[a.id].user_id == "eve"
    assert feedback[a.id].session_id == "events-1" and feedback[a.id].feedback == "thumbs_up"


def test_health_and_worker_state(client, gateway):
    h = client.get("/health")
    assert h.status_code == 200, h.text
    checks = h.json()["checks"]
    assert checks["workers"]["ready"] == 1 and checks["redis"]["ok"] and checks["kafka"]["ok"]
    state = client.get("/admin/workers").json()
    assert [w["url"] for w in state["workers"]] == [gateway["worker"]]
    assert state["workers"][0]["requests"] > 0 and not state["workers"][0]["static"]
    assert state["routes"] == {ALIAS: [{"version": VERSION, "weight": 100}]}
    m = client.get("/metrics").text
    assert f'flywheel_gateway_completion_tokens_total{{model_version="{VERSION}"}}' in m
    assert 'flywheel_gateway_events_total{outcome="published"}' in m


# -- code completions: /v1/completions and /code/complete (inference/gateway/completions.py) ------------------


def test_tiny_model_gets_the_plain_template(model_dir):
    assert resolve_template("auto", model_dir) == PLAIN  # its tokenizer has no FIM tokens


def test_completions_fill_in_the_middle_with_accept_and_reject(gateway, client, consumer_config):
    snippet = load_snippets()[0]
    c = oai(gateway, **{"X-Session-Id": "code-1"})
    raw = c.completions.with_raw_response.create(
        model=ALIAS, prompt=snippet.prefix, suffix=snippet.suffix, max_tokens=MAX_TOKENS, temperature=0, user="dana"
    )
    done = raw.parse()
    assert raw.headers["x-session-id"] == "code-1" and raw.headers["x-model-version"] == VERSION
    assert done.id.startswith("cmpl-") and done.model == VERSION
    text = done.choices[0].text
    assert text and done.choices[0].finish_reason in ("stop", "length")
    assert 0 < done.usage.completion_tokens <= MAX_TOKENS and done.usage.prompt_tokens > 0
    chunks = list(
        c.completions.create(
            model=ALIAS,
            prompt=snippet.prefix,
            suffix=snippet.suffix,
            max_tokens=MAX_TOKENS,
            temperature=0,
            user="dana",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({ch.id for ch in chunks}) == 1 and chunks[0].id.startswith("cmpl-") and chunks[0].id != done.id
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == text  # greedy: the same middle
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == done.usage.completion_tokens

    body = {"prefix": snippet.prefix, "suffix": snippet.suffix, "language": "python", "temperature": 0}
    r = client.post("/code/complete", json={**body, "max_tokens": MAX_TOKENS}, headers={"X-User-Id": "dana"})
    assert r.status_code == 200, r.text
    code = r.json()
    assert set(code) == {"message_id", "session_id", "model", "completion", "finish_reason", "usage"}
    assert code["message_id"].startswith("cmpl-") and code["model"] == VERSION and code["completion"]
    assert 0 < code["usage"]["completion_tokens"] <= MAX_TOKENS and r.headers["x-session-id"] == code["session_id"]

    def feedback(mid, session, verdict, user="dana", **extra):
        payload = {"session_id": session, "message_id": mid, "feedback": verdict, **extra}
        return client.post("/feedback", json=payload, headers={"X-User-Id": user})

    assert feedback(done.id, "code-1", "accepted", user="mallory").status_code == 403
    assert feedback(done.id, "code-1", "accepted").status_code == 202
    rejected = feedback(code["message_id"], code["session_id"], "rejected", correction=snippet.middle)
    assert rejected.status_code == 202, rejected.text
    chat = client.post("/v1/chat/completions", json=CHAT, headers={"X-Session-Id": "code-chat", "X-User-Id": "dana"})
    assert chat.status_code == 200, chat.text
    refused = feedback(chat.json()["id"], "code-chat", "accepted")  # an editor's verdict on a chat answer
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_feedback", refused.text

    ids = {done.id, chunks[0].id, code["message_id"]}
    found = consume_topics(
        consumer_config,
        {
            CHAT_REQUESTS.name: ids,
            CHAT_RESPONSES.name: ids,
            INFERENCE_LATENCY.name: ids,
            CHAT_FEEDBACK.name: {done.id, code["message_id"]},
        },
    )
    requests, responses = found[CHAT_REQUESTS.name], found[CHAT_RESPONSES.name]
    assert set(requests) == set(responses) == set(found[INFERENCE_LATENCY.name]) == ids
    fim = PLAIN.prompt(snippet.prefix, snippet.suffix)
    for mid, route, prompt, answer in [
        (done.id, "completion", fim, text),
        (chunks[0].id, "completion", fim, text),
        (code["message_id"], "code", PLAIN.prompt(snippet.prefix, snippet.suffix, "python"), code["completion"]),
    ]:
        req, resp = requests[mid], responses[mid]
        assert (req.route, req.prompt_format, resp.route) == (route, "text", route)
        assert [(m.role, m.content) for m in req.messages] == [("user", prompt)]
        assert (req.user_id, resp.model_version, resp.status, resp.content) == ("dana", VERSION, "ok", answer)
    assert requests[chunks[0].id].stream and requests[code["message_id"]].max_tokens == MAX_TOKENS
    verdicts = found[CHAT_FEEDBACK.name]
    assert (verdicts[done.id].feedback, verdicts[done.id].kind) == ("thumbs_up", "completion")
    got = verdicts[code["message_id"]]
    assert (got.feedback, got.kind, got.correction) == ("thumbs_down", "completion", snippet.middle)


def test_the_demo_editor_completes_a_gap_and_rejects_it(gateway):
    import asyncio

    from deploy.demo_cases import case_questions
    from deploy.demo_traffic import Gateway

    demo_client = Gateway(gateway["url"], gateway["key"], ALIAS, max_tokens=MAX_TOKENS)
    gap = case_questions("code").asked[0]
    (done,) = demo_client.ask_all("demo-user-1", [gap], "loop")
    assert (done.route, done.status) == ("code", 200), done.error
    assert done.message_id.startswith("cmpl-") and done.session_id and done.version == VERSION and done.answer

    async def reject() -> bool:
        async with demo_client.client() as http:
            return await demo_client.feedback(http, done, "thumbs_down", gap.answer)

    assert asyncio.run(reject())  # sent as "rejected" with the snippet's code as the correction: 202


@pytest.mark.parametrize(
    "path, body, status, code, words",
    [
        ("/v1/completions", {"model": ALIAS, "prompt": [1, 2, 3]}, 422, "invalid_request", "token ids"),
        ("/v1/completions", {"model": ALIAS, "prompt": "x", "best_of": 2}, 422, "unknown_field", "best_of"),
        ("/v1/completions", {"model": ALIAS, "prompt": "x", "echo": True}, 422, "invalid_request", "echo"),
        ("/v1/completions", {"model": ALIAS, "prompt": ""}, 422, "invalid_request", "prompt"),
        ("/v1/completions", {"model": "gpt-9", "prompt": "x"}, 404, "model_not_found", "gpt-9"),
        ("/code/complete", {"prefix": "", "suffix": ""}, 422, "invalid_request", "prefix and suffix"),
        ("/code/complete", {"prefix": "x", "cursor": 1}, 422, "invalid_request", "cursor"),
        ("/code/complete", {"prefix": "x", "session_id": "bad id!"}, 422, "invalid_session_id", "session_id"),
        ("/code/complete", {"prefix": "x", "max_tokens": 100_000}, 422, "invalid_request", "max_tokens"),
    ],
)
def test_completion_errors(client, path, body, status, code, words):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == code and words in error["message"], error
