"""The faust worker (streams.app) against the real broker: windows, pairs, DLQ, trigger, restart.

One worker subprocess for the module (2 s and 4 s windows, 3 s pending timeout, threshold 4), a tiny
HTTP teacher stub, and chDB (in-process) to compute the reference aggregates with SQL.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from schemas.events import (
    DEAD_LETTER_NAMESPACE,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    DeadLetter,
    DPOPair,
    Feedback,
    MetricsWindow,
    RetrainJob,
)
from schemas.text import EMAIL_MASK, PHONE_MASK
from schemas.topics import CHAT_FEEDBACK, DPO_PAIRS, METRICS_WINDOWS, RETRAIN_JOBS
from streams.pairing import pair_id_for
from tests.integration.streams_worker import Collector, StreamWorker, produce

pytestmark = pytest.mark.integration

ACCURACY = 0.01  # the sketch's guarantee (streams/quantiles.py); +1e-9 for float rounding
TEACHER_ANSWER = "TEACHER: here is the right answer."


class TeacherStub(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "teach" not in body["messages"][-1]["content"]:
            self.send_response(500)
            self.end_headers()
            return
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": TEACHER_ANSWER}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def teacher_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), TeacherStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


@pytest.fixture(scope="module")
def worker(stack, tmp_path_factory, teacher_url):
    w = StreamWorker(stack, tmp_path_factory.mktemp("streams"), FLYWHEEL_STREAMS_TEACHER_URL=teacher_url)
    w.start()
    yield w
    w.stop()


def _chat(
    session: str,
    model_version: str,
    question: str,
    answer: str,
    *,
    status="ok",
    route="openai",
    latency_ms=10.0,
    ttft_ms=2.0,
    tokens=5,
    history=(),
) -> tuple[ChatRequest, ChatResponse]:
    mid = f"m-{uuid.uuid4().hex[:10]}"
    messages = [*history, ChatMessage(role="user", content=question)]
    req = ChatRequest(session_id=session, message_id=mid, model_alias="support", messages=messages, route=route)
    resp = ChatResponse(
        session_id=session,
        message_id=mid,
        model_alias="support",
        model_version=model_version,
        content=answer,
        status=status,
        route=route,
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        completion_tokens=tokens,
    )
    return req, resp


# -- metric windows -------------------------------------------------------------------------------------
def _sql_reference(responses: list[ChatResponse], feedback: list[tuple[Feedback, ChatResponse]], sizes, path):
    """count, errors, timeouts, quantileExact p50/p90/p99 of latency and ttft per window, by chDB SQL."""
    import chdb

    rows = [
        {
            "mv": r.model_version,
            "route": r.route,
            "ts": r.occurred_at.timestamp(),
            "status": r.status,
            "latency": r.latency_ms,
            "ttft": r.ttft_ms,
            "tokens": r.completion_tokens,
        }
        for r in responses
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    fb_rows = [
        {"mv": r.model_version, "route": r.route, "ts": f.occurred_at.timestamp(), "kind": f.feedback}
        for f, r in feedback
    ]
    fb_path = path.with_suffix(".fb.json")
    fb_path.write_text("\n".join(json.dumps(r) for r in fb_rows) or "")
    expected = {}
    for size in sizes:
        sql = f"""
            SELECT mv, route, toInt64(floor(ts / {size})) * {size} AS start, count(), countIf(status = 'error'),
                   countIf(status = 'timeout'), quantileExact(0.5)(latency), quantileExact(0.9)(latency),
                   quantileExact(0.99)(latency), quantileExact(0.5)(ttft), quantileExact(0.99)(ttft), sum(tokens)
            FROM file('{path}', JSONEachRow) GROUP BY mv, route, start FORMAT JSONCompact"""
        for row in json.loads(str(chdb.query(sql)))["data"]:
            mv, route, start, n, err, tmo, p50, p90, p99, t50, t99, tokens = row
            expected[(mv, route, size, int(start))] = {
                "requests": int(n),
                "errors": int(err),
                "timeouts": int(tmo),
                "latency_p50_ms": p50,
                "latency_p90_ms": p90,
                "latency_p99_ms": p99,
                "ttft_p50_ms": t50,
                "ttft_p99_ms": t99,
                "tokens_per_s": int(tokens) / size,
                "thumbs_up": 0,
                "thumbs_down": 0,
            }
        if fb_rows:
            sql = f"""SELECT mv, route, toInt64(floor(ts / {size})) * {size} AS start, countIf(kind = 'thumbs_up'),
                      countIf(kind = 'thumbs_down') FROM file('{fb_path}', JSONEachRow)
                      GROUP BY mv, route, start FORMAT JSONCompact"""
            for mv, route, start, up, down in json.loads(str(chdb.query(sql)))["data"]:
                entry = expected.setdefault((mv, route, size, int(start)), {"requests": 0})
                entry.update(thumbs_up=int(up), thumbs_down=int(down))
    return expected


def _assert_window(window: MetricsWindow, want: dict) -> None:
    for name, value in want.items():
        got = getattr(window, name)
        if name.endswith("_ms"):
            assert got == pytest.approx(value, rel=ACCURACY + 1e-9, abs=1e-9), (name, window)
        elif name == "tokens_per_s":
            assert got == pytest.approx(value), (name, window)
        else:
            assert got == value, (name, window)


def _traffic(model_version: str, n: int, seconds: float, bootstrap: str):
    """n responses over `seconds` of real time (two routes, some errors and timeouts), thumbs on a few."""
    import random

    rnd = random.Random(7)
    responses, feedback = [], []
    per_batch = max(1, n // 20)
    for i in range(0, n, per_batch):
        batch = []
        for j in range(i, min(n, i + per_batch)):
            status = "error" if j % 17 == 0 else "timeout" if j % 23 == 0 else "ok"
            req, resp = _chat(
                f"s-{j % 13}",
                model_version,
                f"question {j}",
                f"answer {j}",
                status=status,
                route="openai" if j % 3 else "session",
                latency_ms=rnd.lognormvariate(4, 1),
                ttft_ms=rnd.uniform(0, 50) if j % 5 else None,
                tokens=rnd.randint(0, 40),
            )
            batch += [req, resp]
            responses.append(resp)
            if j % 10 == 0:
                fb = Feedback(
                    session_id=resp.session_id,
                    message_id=resp.message_id,
                    feedback="thumbs_up" if j % 20 else "thumbs_down",
                )
                batch.append(fb)
                feedback.append((fb, resp))
        produce(bootstrap, batch)
        time.sleep(seconds / 20)
    return responses, feedback


def _collect_windows(bootstrap, model_version, expected_keys, timeout=60.0):
    collector = Collector(bootstrap, METRICS_WINDOWS.name)
    try:

        def done(events):
            got = {
                (w.model_version, w.route, w.window_seconds, int(w.window_start.timestamp()))
                for w in events
                if isinstance(w, MetricsWindow) and w.model_version == model_version
            }
            return expected_keys <= got

        events = collector.poll_until(done, timeout)
    finally:
        collector.close()
    return [w for w in events if isinstance(w, MetricsWindow) and w.model_version == model_version]


def test_windows_equal_sql_aggregates_over_raw_events(worker, stack, tmp_path):
    _check_windows(stack, tmp_path)


def test_windows_equal_sql_after_a_catch_up(stack, tmp_path, teacher_url):
    """A fresh worker (its own group) first catches up on a backlog: 8,000 conversations with feedback, and
    everything earlier tests sent. Its join reads feedback ahead of the answers it waits for, and joined
    feedback sits in the producer's buffer while the metric agent is busy: none of it may miss its window."""
    backlog = []
    for j in range(8000):
        req, resp = _chat(f"s-{j % 97}", f"old-{j % 5}", f"q {j}", f"a {j}")
        backlog += [req, resp]
        if j % 7 == 0:
            backlog.append(Feedback(session_id=resp.session_id, message_id=resp.message_id, feedback="thumbs_up"))
    produce(stack.kafka_bootstrap, backlog)
    (tmp_path / "fresh").mkdir()
    fresh = StreamWorker(stack, tmp_path / "fresh", FLYWHEEL_STREAMS_TEACHER_URL=teacher_url)
    fresh.start()
    try:
        _check_windows(stack, tmp_path, timeout=120.0)
    finally:
        fresh.stop()


def _check_windows(stack, tmp_path, timeout: float = 60.0) -> None:
    model_version = f"w-{uuid.uuid4().hex[:6]}"
    responses, feedback = _traffic(model_version, 600, 3.0, stack.kafka_bootstrap)
    expected = _sql_reference(responses, feedback, (2, 4), tmp_path / "raw.json")
    windows = _collect_windows(stack.kafka_bootstrap, model_version, set(expected), timeout)
    by_key = defaultdict(list)
    for w in windows:
        by_key[(w.model_version, w.route, w.window_seconds, int(w.window_start.timestamp()))].append(w)
    assert set(by_key) == set(expected)
    for key, copies in by_key.items():
        assert len({c.event_id for c in copies}) == 1, f"one event_id per window: {key}"
        _assert_window(copies[-1], expected[key])
    # A window may arrive twice (at-least-once; another worker of the module may emit it too): once per event_id.
    unique = {w.event_id: w for w in windows}.values()
    assert sum(w.requests for w in unique if w.window_seconds == 2) == len(responses)


# -- feedback -> pairs ----------------------------------------------------------------------------------
def test_pairs_from_each_chosen_source_with_masking(worker, stack):
    bootstrap = stack.kafka_bootstrap
    session = f"s-{uuid.uuid4().hex[:6]}"
    tag = uuid.uuid4().hex[:6]
    history = [
        ChatMessage(role="system", content="Be helpful."),
        ChatMessage(role="user", content="I am jane.doe@example.com, call me on +1 (555) 123-4567"),
    ]
    corr = _chat(session, "tiny", f"Where is order {tag}?", "No idea.", history=history)
    good = _chat(session, "tiny@v2", f"How do I return item {tag}?", "Use the returns form within 30 days.")
    bad = _chat(session, "tiny", f"how do i RETURN item {tag}!!", "Returns are impossible.")
    teach = _chat(session, "tiny", f"Please teach me about warranty {tag}", "No warranty.")
    nobody = _chat(session, "tiny", f"What is the meaning of {tag}?", "Forty-two, mail bob@example.org")
    produce(bootstrap, [*corr, *good, *bad, *teach, *nobody])
    fb = {
        "correction": Feedback(
            session_id=session,
            message_id=corr[0].message_id,
            feedback="thumbs_down",
            correction="It ships today; questions to help@shop.example or 020 7946 0958.",
        ),
        "thumbs_up_given": Feedback(session_id=session, message_id=good[0].message_id, feedback="thumbs_up"),
        "thumbs_up": Feedback(session_id=session, message_id=bad[0].message_id, feedback="thumbs_down"),
        "teacher": Feedback(session_id=session, message_id=teach[0].message_id, feedback="thumbs_down"),
        "needs_chosen": Feedback(session_id=session, message_id=nobody[0].message_id, feedback="thumbs_down"),
    }
    produce(bootstrap, [fb["correction"], fb["thumbs_up_given"]])
    time.sleep(1.0)  # the thumbs-up answer is indexed before the thumbs-down that needs it
    produce(bootstrap, [fb["thumbs_up"], fb["teacher"], fb["needs_chosen"]])

    wanted = {pair_id_for(fb[k].event_id): k for k in ("correction", "thumbs_up", "teacher", "needs_chosen")}
    collector = Collector(bootstrap, DPO_PAIRS.name)
    events = collector.poll_until(lambda ev: set(wanted) <= {p.pair_id for p in ev if isinstance(p, DPOPair)}, 60)
    collector.close()
    pairs = {wanted[p.pair_id]: p for p in events if isinstance(p, DPOPair) and p.pair_id in wanted}
    assert set(pairs) == set(wanted.values())

    p = pairs["correction"]
    assert (p.source, p.rejected, p.model_version) == ("correction", "No idea.", "tiny")
    assert p.chosen == f"It ships today; questions to {EMAIL_MASK} or {PHONE_MASK}."
    assert [m.content for m in p.prompt] == [
        "Be helpful.",
        f"I am {EMAIL_MASK}, call me on {PHONE_MASK}",
        f"Where is order {tag}?",
    ]
    assert p.base_model == "tiny" and p.feedback_event_id == fb["correction"].event_id
    p = pairs["thumbs_up"]
    assert (p.source, p.chosen, p.rejected) == (
        "thumbs_up",
        "Use the returns form within 30 days.",
        "Returns are impossible.",
    )
    assert p.chosen_message_id == good[0].message_id
    assert (pairs["teacher"].source, pairs["teacher"].chosen) == ("teacher", TEACHER_ANSWER)
    p = pairs["needs_chosen"]
    assert (p.source, p.chosen, p.rejected) == ("needs_chosen", None, f"Forty-two, mail {EMAIL_MASK}")


def _completion(session: str, prompt: str, completion: str) -> tuple[ChatRequest, ChatResponse]:
    """An editor's completion as the gateway records it: the exact prompt continued, as text."""
    mid = f"cmpl-{uuid.uuid4().hex}"
    messages = [ChatMessage(role="user", content=prompt)]
    req = ChatRequest(
        session_id=session, message_id=mid, model_alias="support", messages=messages, route="code", prompt_format="text"
    )
    resp = ChatResponse(
        session_id=session,
        message_id=mid,
        model_alias="support",
        model_version="tiny",
        content=completion,
        route="code",
        latency_ms=5.0,
    )
    return req, resp


def test_completion_feedback_makes_text_pairs(worker, stack):
    """A rejected completion with a correction, and one whose prompt had an accepted completion, become pairs that
    keep the prompt's text format."""
    bootstrap = stack.kafka_bootstrap
    session = f"s-{uuid.uuid4().hex[:6]}"
    tag = uuid.uuid4().hex[:6]
    prompt = (
        f"[code after the cursor]\n    return total\n\n[code before the cursor]\ndef total_{tag}(xs):\n    total = "
    )
    other = f"def inc_{tag}(x):\n    return "
    accepted = _completion(session, prompt, "sum(xs)\n")
    rejected = _completion(session, prompt, "0\n")
    corrected = _completion(session, other, "x - 1\n")
    produce(bootstrap, [*accepted, *rejected, *corrected])
    verdicts = {
        "accepted": Feedback(
            session_id=session, message_id=accepted[0].message_id, feedback="thumbs_up", kind="completion"
        ),
        "thumbs_up": Feedback(
            session_id=session, message_id=rejected[0].message_id, feedback="thumbs_down", kind="completion"
        ),
        "correction": Feedback(
            session_id=session,
            message_id=corrected[0].message_id,
            feedback="thumbs_down",
            kind="completion",
            correction="x + 1\n",
        ),
    }
    produce(bootstrap, [verdicts["accepted"], verdicts["correction"]])
    time.sleep(1.0)  # the accepted completion is indexed before the rejection that needs it
    produce(bootstrap, [verdicts["thumbs_up"]])

    wanted = {pair_id_for(verdicts[k].event_id): k for k in ("thumbs_up", "correction")}
    collector = Collector(bootstrap, DPO_PAIRS.name)
    events = collector.poll_until(lambda ev: set(wanted) <= {p.pair_id for p in ev if isinstance(p, DPOPair)}, 60)
    collector.close()
    pairs = {wanted[p.pair_id]: p for p in events if isinstance(p, DPOPair) and p.pair_id in wanted}
    assert set(pairs) == set(wanted.values())
    p = pairs["thumbs_up"]
    assert (p.prompt_format, p.source, p.chosen, p.rejected) == ("text", "thumbs_up", "sum(xs)\n", "0\n")
    assert p.chosen_message_id == accepted[0].message_id
    assert [(m.role, m.content) for m in p.prompt] == [("user", prompt)]
    p = pairs["correction"]
    assert (p.prompt_format, p.source, p.chosen, p.rejected) == ("text", "correction", "x + 1\n", "x - 1\n")
    assert [m.content for m in p.prompt] == [other]


def _dlq_case(case: str, bootstrap: str):
    """Produce the case; return (error type, predicate on the letter, session of the bad message)."""
    session = f"s-{uuid.uuid4().hex[:6]}"
    req, resp = _chat(session, "tiny", f"question {uuid.uuid4().hex[:6]}", "an answer")
    if case == "unknown message":
        fb = Feedback(session_id=session, message_id="m-does-not-exist", feedback="thumbs_down")
        produce(bootstrap, [fb])
        return "unmatched_feedback", lambda d: fb.message_id in d.payload and str(fb.event_id) in d.payload, session
    if case == "response arrives too late":
        fb = Feedback(session_id=session, message_id=resp.message_id, feedback="thumbs_down")
        produce(bootstrap, [fb])
        time.sleep(5.0)  # past the 3 s pending timeout
        produce(bootstrap, [req, resp])
        return "unmatched_feedback", lambda d: str(fb.event_id) in d.payload, session
    if case == "thumbs down on an error response":
        req, resp = _chat(session, "tiny", "q", "", status="error")
        fb = Feedback(session_id=session, message_id=resp.message_id, feedback="thumbs_down")
        produce(bootstrap, [req, resp, fb])
        return "no_answer", lambda d: resp.message_id in d.payload, session
    marker = uuid.uuid4().hex
    payload = {
        "not JSON": f"{{not json {marker}".encode(),
        "invalid field": json.dumps(
            {"event_type": "feedback", "session_id": session, "message_id": marker, "feedback": "meh"}
        ).encode(),
        "wrong event type": json.dumps({"event_type": "chat_request", "marker": marker}).encode(),
    }[case]
    produce(bootstrap, [], raw=[(CHAT_FEEDBACK.name, session.encode(), payload)])
    kind = {"not JSON": "not_json", "invalid field": "invalid_field", "wrong event type": "unknown_event_type"}[case]
    return kind, lambda d: marker in d.payload, session


PROCESSING_CASES = ["unknown message", "response arrives too late", "thumbs down on an error response"]
UNDECODABLE_CASES = ["not JSON", "invalid field", "wrong event type"]


@pytest.mark.parametrize("case", PROCESSING_CASES + UNDECODABLE_CASES)
def test_feedback_dead_letters(worker, stack, case):
    """What the streams cannot process: one letter from flywheel-streams. Undecodable bytes: one letter from
    the ClickHouse sink (it reads every topic, id = uuid5 of the position), none from the streams."""
    error_type, matches, session = _dlq_case(case, stack.kafka_bootstrap)
    producer = "flywheel-streams" if case in PROCESSING_CASES else "flywheel-sink"
    sentinel = None
    if case in UNDECODABLE_CASES:
        # A feedback for an unknown message right behind the bad bytes (same key, same partition): once the
        # streams dead-letter it, they have read past the bad bytes, so "no letter from the streams" is final.
        sentinel = Feedback(session_id=session, message_id=f"m-{uuid.uuid4().hex}", feedback="thumbs_down")
        produce(stack.kafka_bootstrap, [sentinel])

    def ours(d, who):
        return isinstance(d, DeadLetter) and d.producer == who

    def done(events):
        seen = any(ours(d, producer) and matches(d) for d in events)
        past = sentinel is None or any(ours(d, "flywheel-streams") and sentinel.message_id in d.payload for d in events)
        return seen and past

    collector = Collector(stack.kafka_bootstrap, CHAT_FEEDBACK.dlq)
    events = collector.poll_until(done, 60)
    collector.close()
    assert done(events), f"no dead letter from {producer} for {case} (or the sentinel's) within 60 s"
    found = [d for d in events if isinstance(d, DeadLetter) and matches(d)]
    assert {d.producer for d in found} == {producer}, "one writer per bad message"
    assert {d.error_type for d in found} == {error_type}
    assert all(d.source_topic == CHAT_FEEDBACK.name for d in found)
    assert len({d.event_id for d in found}) == 1
    [letter] = {d.event_id: d for d in found}.values()
    position = f"{CHAT_FEEDBACK.name}/{letter.partition}/{letter.offset}"
    assert letter.event_id == uuid.uuid5(DEAD_LETTER_NAMESPACE, position), "the sink's position-derived id"


# -- retrain trigger ------------------------------------------------------------------------------------
def _pair(base_model: str, source: str = "correction") -> DPOPair:
    return DPOPair(
        pair_id=str(uuid.uuid4()),
        base_model=base_model,
        model_version=base_model,
        prompt=[ChatMessage(role="user", content="q")],
        chosen=None if source == "needs_chosen" else "a",
        rejected="b",
        source=source,
        session_id="s",
        message_id="m",
        feedback_event_id=uuid.uuid4(),
        user_id=f"user-{uuid.uuid4().hex[:6]}",  # each from its own user: the trigger asks for several
    )


def test_trigger_fires_once_at_threshold_never_twice_for_the_same_pairs(worker, stack):
    bootstrap, base = stack.kafka_bootstrap, f"tb-{uuid.uuid4().hex[:6]}"
    jobs = Collector(bootstrap, RETRAIN_JOBS.name)

    def requested(events):
        return [j for j in events if isinstance(j, RetrainJob) and j.base_model == base and j.status == "requested"]

    first = [_pair(base) for _ in range(3)]
    produce(bootstrap, [*first, _pair(base, "needs_chosen")])  # 3 usable: below the threshold of 4
    assert requested(jobs.poll_until(lambda ev: False, 3)) == []
    first.append(_pair(base, "thumbs_up"))
    produce(bootstrap, [first[-1], first[0]])  # the 4th, and a replayed pair
    got = requested(jobs.poll_until(lambda ev: requested(ev), 30))
    assert len(got) == 1 and sorted(got[0].pair_ids) == sorted(p.pair_id for p in first)
    job = got[0]

    second = [_pair(base, "teacher") for _ in range(4)]
    produce(bootstrap, [*second, *first])  # threshold reached again while job 1 is in flight; old pairs replayed
    assert len(requested(jobs.poll_until(lambda ev: False, 3))) == 1
    produce(
        bootstrap,
        [
            RetrainJob(job_id=job.job_id, base_model=base, status="started"),
            RetrainJob(job_id=job.job_id, base_model=base, status="succeeded"),
        ],
    )
    got = requested(jobs.poll_until(lambda ev: len(requested(ev)) >= 2, 30))
    assert len(got) == 2 and sorted(got[1].pair_ids) == sorted(p.pair_id for p in second)
    ended_at = time.time()
    assert got[1].occurred_at.timestamp() >= ended_at - 30
    assert len(requested(jobs.poll_until(lambda ev: False, 4))) == 2  # never again for the same pairs
    jobs.close()


# -- restart --------------------------------------------------------------------------------------------
def test_restart_does_not_double_count_a_window(worker, stack, tmp_path):
    model_version = f"r-{uuid.uuid4().hex[:6]}"
    bootstrap = stack.kafka_bootstrap
    first, fb1 = _traffic(model_version, 300, 2.0, bootstrap)
    time.sleep(0.3)
    worker.kill()  # kill -9 mid-stream: windows of the first traffic may be open or emitted
    worker.start()
    second, fb2 = _traffic(model_version, 300, 2.0, bootstrap)
    expected = _sql_reference(first + second, fb1 + fb2, (2, 4), tmp_path / "raw.json")
    windows = _collect_windows(bootstrap, model_version, set(expected), timeout=90)
    by_id = defaultdict(list)
    for w in windows:
        by_id[w.event_id].append(w)
    keys = {
        (w[0].model_version, w[0].route, w[0].window_seconds, int(w[0].window_start.timestamp()))
        for w in by_id.values()
    }
    assert keys == set(expected)
    assert len(by_id) == len(expected)
    for copies in by_id.values():
        key = (
            copies[0].model_version,
            copies[0].route,
            copies[0].window_seconds,
            int(copies[0].window_start.timestamp()),
        )
        for copy in copies:  # a window re-emitted after the restart carries the same figures
            _assert_window(copy, expected[key])
