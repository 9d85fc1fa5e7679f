"""The gateway against the real local stack (Tansu broker, Redis) and bench/upstream_stub.py as upstream.

The gateway runs as its own process (`python -m inference.gateway.app`), as in production; its upstreams are a
dead port (to exercise retry and ejection) and the stub. test_gateway_vllm.py runs the same kinds of checks
against a real vLLM worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import httpx
import orjson
import pytest

from deploy.ports import free_ports
from schemas.events import ChatRequest, ChatResponse, Feedback, InferenceLatency
from tests.conftest import settings_env
from tests.integration.gateway_helpers import ROOT, consume, create_keys, oai, run_gateway
from tests.integration.gateway_helpers import stop as _stop  # also imported by test_gateway_outage.py
from tests.integration.gateway_helpers import wait_http as _wait_http  # also imported by test_gateway_outage.py

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stub_url():
    (port,) = free_ports(1)
    proc = subprocess.Popen([sys.executable, "-m", "bench.upstream_stub", "--port", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health", proc)
        yield url
    finally:
        _stop(proc)


ISSUER = "https://id.shop.example"


@pytest.fixture(scope="module")
def user_signer(tmp_path_factory) -> dict:
    """The shop's identity provider: an RSA key pair; the gateway gets the public half as a PEM file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path_factory.mktemp("idp") / "public.pem"
    public.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return {"private": private, "public": public}


def user_token(signer: dict, sub: str, **claims) -> str:
    import jwt

    key = claims.pop("key", signer["private"])
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": "flywheel", "sub": sub, "iat": now, "exp": now + 600, **claims}
    return jwt.encode(payload, key, algorithm="RS256")


@pytest.fixture(scope="module")
def gateway(stack, stub_url, user_signer, tmp_path_factory):
    port, dead = free_ports(2)
    env = {
        **os.environ,
        **settings_env(stack),
        "FLYWHEEL_GATEWAY_UPSTREAMS": f"http://127.0.0.1:{dead},{stub_url}",
        "FLYWHEEL_GATEWAY_EXTRA_FIELDS": "stub_delay_ms",  # the stub upstream's own field (timeouts)
        "FLYWHEEL_GATEWAY_FEEDBACK_PER_USER_MINUTE": "10",
        "FLYWHEEL_GATEWAY_READ_TIMEOUT_S": "1.5",
        "FLYWHEEL_GATEWAY_EJECT_COOLDOWN_S": "0.5",
        "FLYWHEEL_GATEWAY_DISCOVER_WORKERS": "false",
        "FLYWHEEL_GATEWAY_JWT_ISSUER": ISSUER,
        "FLYWHEEL_GATEWAY_JWT_KEY_FILE": str(user_signer["public"]),
        "FLYWHEEL_LOG_LEVEL": "WARNING",
    }
    with run_gateway(env, tmp_path_factory.mktemp("gateway") / "gateway.log", port) as gw:
        yield {**gw, "dead": f"http://127.0.0.1:{dead}"}


@pytest.fixture(scope="module")
def keys(stack):
    """Extra API keys: chat-only rate 2/min, admin-only."""
    return create_keys(stack.redis_dsn)


@pytest.fixture
def client(gateway):
    with httpx.Client(
        base_url=gateway["url"], headers={"Authorization": f"Bearer {gateway['key']}"}, timeout=10.0
    ) as c:
        yield c


# -- OpenAI compatibility ------------------------------------------------------------------------------


def test_openai_client_non_stream(gateway):
    c = oai(gateway, **{"X-Session-Id": "oai-session-1"})
    raw = c.chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": "Where is my order?"}], max_tokens=16, user="alice"
    )
    completion = raw.parse()
    assert raw.headers["x-session-id"] == "oai-session-1"
    assert completion.id.startswith("chatcmpl-") and "stub" not in completion.id
    assert completion.choices[0].message.content == "echo model=tiny messages=1 last=Where is my order?"
    assert completion.usage.completion_tokens > 0
    assert completion.model == "tiny"  # the version actually served


def test_openai_client_stream(gateway):
    c = oai(gateway)
    stream = c.chat.completions.create(
        model="support",
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    ids = {ch.id for ch in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "echo model=tiny messages=1 last=hello there"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(text.split(" "))


def test_stream_without_usage_hides_usage_chunk(client):
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "support", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(ln[5:]) for ln in lines[:-1]]
    assert all(ch["choices"] and "usage" not in ch for ch in chunks)


def test_models(gateway):
    models = oai(gateway).models.list()
    ids = [m.id for m in models.data]
    assert ids[0] == "support" and "tiny" in ids


# -- sessions ------------------------------------------------------------------------------------------------


def test_session_history_across_turns(client):
    r1 = client.post("/chat", json={"message": "first", "max_tokens": 16})
    assert r1.status_code == 200, r1.text
    sid = r1.json()["session_id"]
    assert r1.headers["x-session-id"] == sid
    # system prompt + the user message
    assert r1.json()["content"] == "echo model=tiny messages=2 last=first"
    r2 = client.post("/chat", json={"session_id": sid, "message": "second"})
    assert r2.json()["content"] == "echo model=tiny messages=4 last=second"
    # streamed turns see and extend the same history
    with client.stream("POST", "/chat/stream", json={"session_id": sid, "message": "third"}) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data:")]
    text = "".join((orjson.loads(ln[5:])["choices"][0]["delta"].get("content") or "") for ln in lines[:-1])
    assert text == "echo model=tiny messages=6 last=third"
    r4 = client.post("/chat", json={"session_id": sid, "message": "fourth"})
    assert r4.json()["content"] == "echo model=tiny messages=8 last=fourth"
    assert client.delete(f"/session/{sid}").status_code == 200
    assert client.delete(f"/session/{sid}").status_code == 404
    r5 = client.post("/chat", json={"session_id": sid, "message": "again"})
    assert r5.json()["content"] == "echo model=tiny messages=2 last=again"


def test_history_keeps_last_ten_turns(client):
    sid = f"s{uuid.uuid4().hex}"
    for i in range(12):
        r = client.post("/chat", json={"session_id": sid, "message": f"m{i}"})
        assert r.status_code == 200
    # system + 10 turns (20 messages) + the new message
    assert r.json()["content"].startswith("echo model=tiny messages=22 ")


def test_session_of_another_user_is_refused(client):
    r = client.post("/chat", json={"message": "mine"}, headers={"X-User-Id": "alice"})
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    for method, path, body in (
        ("POST", "/chat", {"session_id": sid, "message": "let me in"}),
        ("POST", "/chat/stream", {"session_id": sid, "message": "let me in"}),
        ("DELETE", f"/session/{sid}", None),
    ):
        other = client.request(method, path, json=body, headers={"X-User-Id": "mallory"})
        assert other.status_code == 403, other.text
        assert other.json()["error"]["code"] == "not_session_owner"
    # the OpenAI-compatible route checks the session named in X-Session-Id too
    openai = client.post("/v1/chat/completions", json=CHAT, headers={"X-User-Id": "mallory", "X-Session-Id": sid})
    assert openai.status_code == 403 and openai.json()["error"]["code"] == "not_session_owner", openai.text
    mine = client.post("/v1/chat/completions", json=CHAT, headers={"X-User-Id": "alice", "X-Session-Id": sid})
    assert mine.status_code == 200 and mine.headers["x-session-id"] == sid, mine.text
    again = client.post("/chat", json={"session_id": sid, "message": "still mine"}, headers={"X-User-Id": "alice"})
    assert again.json()["content"] == "echo model=tiny messages=4 last=still mine"  # mallory wrote nothing
    assert client.delete(f"/session/{sid}", headers={"X-User-Id": "alice"}).status_code == 200


def test_a_session_named_first_on_the_openai_route_is_its_users(client):
    sid = f"s{uuid.uuid4().hex}"
    first = client.post("/v1/chat/completions", json=CHAT, headers={"X-User-Id": "alice", "X-Session-Id": sid})
    assert first.status_code == 200, first.text
    for path, body in (("/v1/chat/completions", CHAT), ("/chat", {"session_id": sid, "message": "let me in"})):
        other = client.post(path, json=body, headers={"X-User-Id": "mallory", "X-Session-Id": sid})
        assert other.status_code == 403 and other.json()["error"]["code"] == "not_session_owner", other.text


# -- feedback ---------------------------------------------------------------------------------------------


def test_feedback_accepted_404_403(client, consumer_config):
    r = client.post("/chat", json={"message": "rate me"}, headers={"X-User-Id": "alice"})
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
    ok = client.post("/feedback", json=body, headers={"X-User-Id": "alice"})
    assert ok.status_code == 202, ok.text
    event_id = ok.json()["event_id"]
    found = consume(consumer_config, "chat.feedback", {mid})
    fb = found[mid]
    assert isinstance(fb, Feedback)
    assert str(fb.event_id) == event_id and fb.feedback == "thumbs_down" and fb.user_id == "alice"
    assert fb.correction == "The right answer."


def test_openai_message_feedback(gateway, client):
    c = oai(gateway, **{"X-Session-Id": "oai-fb"})
    completion = c.chat.completions.create(model="support", messages=[{"role": "user", "content": "q"}], user="bob")
    r = client.post(
        "/feedback",
        json={"session_id": "oai-fb", "message_id": completion.id, "feedback": "thumbs_up"},
        headers={"X-User-Id": "bob"},
    )
    assert r.status_code == 202, r.text


# -- errors -------------------------------------------------------------------------------------------------

CHAT = {"model": "support", "messages": [{"role": "user", "content": "hi"}]}
FEEDBACK = {"session_id": "s", "message_id": "chatcmpl-" + "f" * 32, "feedback": "thumbs_up"}


@pytest.mark.parametrize(
    "key, method, path, body, status, code",
    [
        (None, "POST", "/v1/chat/completions", CHAT, 401, "missing_api_key"),
        ("bad", "POST", "/v1/chat/completions", CHAT, 401, "invalid_api_key"),
        ("fw-" + "x" * 40, "POST", "/chat", {"message": "hi"}, 401, "invalid_api_key"),
        ("admin_only", "POST", "/v1/chat/completions", CHAT, 403, "insufficient_scope"),
        ("chat_only", "GET", "/admin/workers", None, 403, "insufficient_scope"),
        ("dev", "POST", "/feedback", FEEDBACK, 404, "message_not_found"),
        ("dev", "GET", "/no/such/route", None, 404, None),
        ("dev", "POST", "/v1/chat/completions", {**CHAT, "model": "gpt-9"}, 404, "model_not_found"),
        ("dev", "DELETE", "/session/nosuchsession", None, 404, "session_not_found"),
        ("dev", "POST", "/v1/chat/completions", {"model": "support"}, 422, "invalid_request"),
        ("dev", "POST", "/v1/chat/completions", {**CHAT, "temperature": "hot"}, 422, "invalid_request"),
        ("dev", "POST", "/feedback", {**FEEDBACK, "feedback": "meh"}, 422, "invalid_request"),
        ("dev", "POST", "/chat", {"message": "hi", "session_id": "bad id!"}, 422, "invalid_session_id"),
    ],
)
def test_error_table(gateway, keys, key, method, path, body, status, code):
    token = {"dev": gateway["key"], None: None}.get(key, keys.get(key, key))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.request(method, gateway["url"] + path, json=body, headers=headers, timeout=10.0)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"]
    if code:
        assert error["code"] == code
    if status == 422:
        field = {"messages": "messages", "hot": "temperature", "meh": "feedback", "bad id!": "session_id"}
        assert any(f in error["message"] for f in field.values())


def test_rate_limit_429(gateway, keys):
    headers = {"Authorization": f"Bearer {keys['limited']}"}
    codes = [
        httpx.post(gateway["url"] + "/v1/chat/completions", json=CHAT, headers=headers).status_code for _ in range(3)
    ]
    assert codes[:2] == [200, 200]
    r = httpx.post(gateway["url"] + "/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error"


def test_token_limit_counts_the_answers_tokens_then_429(gateway, keys):
    headers = {"Authorization": f"Bearer {keys['tokens']}"}
    spent, answers = 0, []
    for _ in range(20):
        stream = len(answers) % 2 == 1  # streamed answers are charged too (the gateway asks vLLM for usage)
        body = {**CHAT, "stream": stream}
        r = httpx.post(gateway["url"] + "/v1/chat/completions", json=body, headers=headers)
        if r.status_code == 429:
            break
        assert r.status_code == 200, r.text
        answers.append(r)
        if not stream:
            usage = r.json()["usage"]
            spent += usage["prompt_tokens"] + usage["completion_tokens"]
        time.sleep(0.2)  # the charge lands after the answer
    assert r.status_code == 429, f"{len(answers)} answers, {spent} tokens (non-streamed) and no 429"
    assert r.json()["error"]["code"] == "token_limit_exceeded" and int(r.headers["retry-after"]) >= 1
    assert len(answers) >= 2  # admitted until the bucket of 60 was overdrawn, not at the first answer
    assert any(a.headers["content-type"].startswith("text/event-stream") for a in answers)


def test_upstream_timeout_504(client):
    r = client.post("/v1/chat/completions", json={**CHAT, "stub_delay_ms": 4000})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "upstream_timeout"


def test_retry_on_dead_worker(gateway, client):
    time.sleep(0.6)  # past the dead worker's cool-down: it is tried again
    for _ in range(6):
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
        time.sleep(0.3)
    workers = {w["url"]: w for w in client.get("/admin/workers").json()["workers"]}
    assert workers[gateway["dead"]]["requests"] >= 2  # tried (and retried elsewhere) more than once
    metrics = client.get("/metrics").text
    failures = f'flywheel_gateway_upstream_failures_total{{worker="{gateway["dead"]}"}} '
    counted = [line for line in metrics.splitlines() if line.startswith(failures)]
    assert counted and float(counted[0].split()[-1]) >= 2, counted


# -- events, health, metrics -------------------------------------------------------------------------------


def test_events_on_each_topic(gateway, consumer_config):
    c = oai(gateway, **{"X-Session-Id": "events-1"})
    a = c.chat.completions.create(model="support", messages=[{"role": "user", "content": "one"}], user="eve").id
    stream = c.chat.completions.create(
        model="support", messages=[{"role": "user", "content": "two"}], user="eve", stream=True
    )
    b = [ch.id for ch in stream][0]
    ids = {a, b}
    requests = consume(consumer_config, "chat.requests", ids)
    responses = consume({**consumer_config, "group.id": consumer_config["group.id"] + "r"}, "chat.responses", ids)
    latency = consume({**consumer_config, "group.id": consumer_config["group.id"] + "l"}, "inference.latency", ids)
    assert set(requests) == set(responses) == set(latency) == ids
    assert all(
        isinstance(e, ChatRequest) and e.session_id == "events-1" and e.user_id == "eve" for e in requests.values()
    )
    assert requests[b].stream and not requests[a].stream
    for mid, resp in responses.items():
        assert isinstance(resp, ChatResponse)
        assert resp.status == "ok" and resp.model_version == "tiny" and resp.worker
        assert resp.completion_tokens > 0 and resp.prompt_tokens > 0 and resp.latency_ms > 0
        assert isinstance(latency[mid], InferenceLatency)
    assert responses[b].ttft_ms is not None
    assert responses[a].content.startswith("echo model=tiny")


def test_metrics_and_health_details_are_for_operators(gateway, keys):
    url = gateway["url"]
    assert httpx.get(url + "/metrics").status_code == 401
    assert httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {keys['chat_only']}"}).status_code == 403
    ops = {"Authorization": f"Bearer {keys['admin_only']}"}
    assert "flywheel_gateway_requests_total" in httpx.get(url + "/metrics", headers=ops).text
    public = httpx.get(url + "/health").json()
    assert public["status"] == "ok" and public["checks"]["workers"] == {"ok": True}, public
    assert httpx.get(url + "/health", headers=ops).json()["checks"]["workers"]["ready"] >= 1


def test_health_and_metrics(client):
    h = client.get("/health")
    assert h.status_code == 200, h.text
    checks = h.json()["checks"]
    assert checks["workers"]["ready"] >= 1 and checks["redis"]["ok"] and checks["kafka"]["ok"]
    m = client.get("/metrics").text
    for name in (
        "flywheel_gateway_requests_total",
        "flywheel_gateway_request_latency_seconds_bucket",
        "flywheel_gateway_ttft_seconds_bucket",
        "flywheel_gateway_tokens_per_second_bucket",
        "flywheel_gateway_completion_tokens_total",
        "flywheel_gateway_in_flight",
        "flywheel_gateway_active_sessions",
        'flywheel_gateway_events_total{outcome="published"}',
    ):
        assert name in m, name


# -- bounds -------------------------------------------------------------------------------------------


def test_oversized_body_refused_before_it_is_read(gateway, client):
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * 2_000_000 + b'"}]}'
    for headers in ({}, {"Authorization": ""}):  # with a key, and before the key is checked
        r = client.post("/v1/chat/completions", content=big, headers={"Content-Type": "application/json", **headers})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text[:200]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"x" * 65_536

    r = client.post("/chat", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text[:200]
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200  # and the gateway goes on


def test_oversized_headers_refused(client):
    r = client.post("/v1/chat/completions", json=CHAT, headers={"X-Padding": "p" * 100_000})
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large", r.text[:200]


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"n": 2}, "n"), ({"best_of": 4}, "best_of"), ({"tools": [{"type": "function"}]}, "tools")],
)
def test_fields_outside_the_allowlist_are_refused(client, extra, param):
    r = client.post("/v1/chat/completions", json={**CHAT, **extra})
    assert r.status_code == 422 and r.json()["error"]["param"] == param, r.text


# -- identity -----------------------------------------------------------------------------------------


def test_only_keys_with_act_as_may_name_the_user(gateway, keys):
    app = {"Authorization": f"Bearer {keys['chat_only']}"}
    for headers, body in (({"X-User-Id": "alice"}, CHAT), ({}, {**CHAT, "user": "alice"})):
        r = httpx.post(gateway["url"] + "/v1/chat/completions", json=body, headers={**app, **headers})
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", r.text
    for path, body in (("/chat", {"message": "hi"}), ("/feedback", FEEDBACK)):
        r = httpx.post(gateway["url"] + path, json=body, headers={**app, "X-User-Id": "alice"})
        assert r.status_code == 403 and "act_as" in r.json()["error"]["message"], r.text
    # without naming anyone, the key is its own user: its session is its own, not another key's
    mine = httpx.post(gateway["url"] + "/chat", json={"message": "hi"}, headers=app)
    assert mine.status_code == 200, mine.text
    sid = mine.json()["session_id"]
    dev = {"Authorization": f"Bearer {gateway['key']}", "X-User-Id": "alice"}  # the dev key has act_as
    other = httpx.post(gateway["url"] + "/chat", json={"session_id": sid, "message": "in?"}, headers=dev)
    assert other.status_code == 403 and other.json()["error"]["code"] == "not_session_owner", other.text


def test_signed_in_users_are_their_tokens_subject_on_every_route(gateway, user_signer):
    url = gateway["url"]
    alice = {"Authorization": f"Bearer {user_token(user_signer, 'alice@shop')}"}
    bob = {"Authorization": f"Bearer {user_token(user_signer, 'bob@shop')}"}
    mine = httpx.post(url + "/chat", json={"message": "where is my order?"}, headers=alice)
    assert mine.status_code == 200, mine.text
    sid, mid = mine.json()["session_id"], mine.json()["message_id"]
    # Bob cannot use, delete or rate Alice's session, even naming her: a user token has no act_as
    for method, path, body in (
        ("POST", "/chat", {"session_id": sid, "message": "in?"}),
        ("DELETE", f"/session/{sid}", None),
        ("POST", "/feedback", {"session_id": sid, "message_id": mid, "feedback": "thumbs_down"}),
    ):
        r = httpx.request(method, url + path, json=body, headers=bob)
        assert r.status_code == 403, (path, r.text)
    posing = httpx.post(url + "/chat", json={"message": "hi"}, headers={**bob, "X-User-Id": "alice@shop"})
    assert posing.status_code == 403 and posing.json()["error"]["code"] == "insufficient_scope", posing.text
    body_user = httpx.post(url + "/v1/chat/completions", json={**CHAT, "user": "alice@shop"}, headers=bob)
    assert body_user.status_code == 403, body_user.text
    openai = httpx.post(url + "/v1/chat/completions", json=CHAT, headers={**bob, "X-Session-Id": sid})
    assert openai.status_code == 403 and openai.json()["error"]["code"] == "not_session_owner", openai.text
    # Alice can; her feedback is stored as hers
    rated = {"session_id": sid, "message_id": mid, "feedback": "thumbs_up"}
    assert httpx.post(url + "/feedback", json=rated, headers=alice).status_code == 202
    assert httpx.delete(url + f"/session/{sid}", headers=alice).status_code == 200
    # a user is a chat user: no admin routes
    assert httpx.get(url + "/admin/workers", headers=alice).status_code == 403


def test_user_tokens_that_do_not_verify_are_401(gateway, user_signer):
    from cryptography.hazmat.primitives.asymmetric import rsa

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    bad = {
        "expired": user_token(user_signer, "alice", exp=now - 120),
        "another issuer": user_token(user_signer, "alice", iss="https://evil.example"),
        "another audience": user_token(user_signer, "alice", aud="someone-else"),
        "another key": user_token(user_signer, "alice", key=stranger),
        "no subject": user_token(user_signer, ""),
        "garbage": "not.a.jwt",
    }
    import jwt

    bad["alg none"] = jwt.encode({"iss": ISSUER, "aud": "flywheel", "sub": "alice", "exp": now + 60}, None, "none")
    for what, token in bad.items():
        r = httpx.post(gateway["url"] + "/chat", json={"message": "hi"}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_user_token", (what, r.text)


def test_docs_and_schema_are_off_by_default(client):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 404, path


def test_personal_data_is_masked_in_the_events(gateway, consumer_config):
    c = oai(gateway)
    text = "I am jane.doe@example.com, call +1 415 555 0134 about order 2024-05-01"
    mid = c.chat.completions.create(model="support", messages=[{"role": "user", "content": text}]).id
    requests = consume(consumer_config, "chat.requests", {mid})
    responses = consume({**consumer_config, "group.id": consumer_config["group.id"] + "r"}, "chat.responses", {mid})
    masked = "I am [EMAIL], call [PHONE] about order 2024-05-01"
    assert requests[mid].messages[-1].content == masked
    assert "jane.doe" not in responses[mid].content and "[EMAIL]" in responses[mid].content  # the stub echoes


def test_each_user_has_a_feedback_quota(client):
    user = f"u-{uuid.uuid4().hex[:8]}"
    r = client.post("/chat", json={"message": "rate me"}, headers={"X-User-Id": user})
    body = {**FEEDBACK, "session_id": r.json()["session_id"], "message_id": r.json()["message_id"]}
    codes = [client.post("/feedback", json=body, headers={"X-User-Id": user}).status_code for _ in range(10)]
    assert codes == [202] * 10
    over = client.post("/feedback", json=body, headers={"X-User-Id": user})
    assert over.status_code == 429 and over.json()["error"]["code"] == "feedback_quota_exceeded", over.text
    assert int(over.headers["retry-after"]) >= 1
    other = client.post("/chat", json={"message": "me too"}, headers={"X-User-Id": "another-" + user})
    mine = {**FEEDBACK, "session_id": other.json()["session_id"], "message_id": other.json()["message_id"]}
    assert client.post("/feedback", json=mine, headers={"X-User-Id": "another-" + user}).status_code == 202


def test_the_rag_demo_refuses_an_alias_not_marked_rag(gateway):
    from deploy.demo import DemoError, check_rag
    from deploy.demo_cases import case_questions
    from deploy.demo_traffic import Gateway

    demo_client = Gateway(gateway["url"], gateway["key"], "support", max_tokens=8)
    with pytest.raises(DemoError, match="FLYWHEEL_GATEWAY_RAG_ALIASES=support flywheel up"):
        check_rag(demo_client, case_questions("rag").other[0])
