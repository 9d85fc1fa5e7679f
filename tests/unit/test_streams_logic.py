"""Pure logic of the stream processors: quantile sketch, windows, normalization, masking, filters, trigger."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from schemas.events import ChatMessage, ChatRequest, ChatResponse, Feedback
from schemas.text import EMAIL_MASK, PHONE_MASK, mask_pii
from streams.pairing import (
    NearDuplicateFilter,
    normalize_question,
    pair_id_for,
    quality_problem,
)
from streams.pairs import FeedbackJoiner, PairBuilder
from streams.quantiles import LogSketch, exact_rank
from streams.trigger import TriggerState
from streams.windows import WindowBook, window_event_id


# -- quantiles ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dist", ["lognormal", "uniform", "with zeros", "constant", "one value"])
@pytest.mark.parametrize("accuracy", [0.01, 0.05])
def test_sketch_quantiles_within_relative_accuracy_of_quantile_exact(dist, accuracy):
    rnd = random.Random(1)
    n = 1 if dist == "one value" else 5000
    values = {
        "lognormal": lambda: rnd.lognormvariate(3, 1.5),
        "uniform": lambda: rnd.uniform(0.1, 1000),
        "with zeros": lambda: 0.0 if rnd.random() < 0.3 else rnd.uniform(1, 50),
        "constant": lambda: 42.0,
        "one value": lambda: 7.5,
    }[dist]
    data = [values() for _ in range(n)]
    halves = LogSketch(accuracy), LogSketch(accuracy)
    for i, v in enumerate(data):
        halves[i % 2].add(v)
    sketch = LogSketch.from_json(halves[0].to_json())
    sketch.merge(halves[1])
    ordered = sorted(data)
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        exact = ordered[exact_rank(q, n)]
        assert sketch.quantile(q) == pytest.approx(exact, rel=accuracy + 1e-9, abs=1e-12)


def test_empty_sketch_has_no_quantile():
    assert LogSketch().quantile(0.5) is None


# -- windows --------------------------------------------------------------------------------------------
def _book(**kw):
    return WindowBook([2, 4], grace_s=1.0, idle_s=5.0, accuracy=0.01, now=kw.pop("now", 0.0))


def _add(book, partition, offset, t, now, status="ok", latency=10.0, mv="tiny", topic="chat.responses"):
    return book.add_response(
        topic,
        partition,
        offset,
        now,
        model_version=mv,
        route="openai",
        event_time=t,
        status=status,
        latency_ms=latency,
        ttft_ms=1.0,
        completion_tokens=4,
    )


def test_window_merges_partitions_and_closes_on_event_time():
    book = _book(now=1000.0)
    _add(book, 0, 0, 100.5, 1000.0, status="error", latency=10)
    _add(book, 1, 0, 101.0, 1000.0, status="timeout", latency=30)
    _add(book, 0, 1, 101.9, 1000.0, latency=20)
    assert book.close(1000.0) == []  # watermark 101.0 (slowest partition): [100, 102) closes at 103
    _add(book, 0, 2, 103.5, 1000.1)
    _add(book, 1, 1, 103.2, 1000.1)
    [w2] = book.close(1000.1)
    assert (w2.window_seconds, w2.window_start.timestamp(), w2.requests, w2.errors, w2.timeouts) == (2, 100, 3, 1, 1)
    assert w2.latency_p50_ms == pytest.approx(20, rel=0.01) and w2.tokens_per_s == 6.0
    assert w2.event_id == window_event_id(("tiny", "openai", 2, 100))


def test_replayed_offsets_are_not_counted_twice_after_restore():
    book = _book(now=0.0)
    for offset in range(5):
        _add(book, 0, offset, 100.0, 0.0)
    saved = book.checkpoint(0, 0.0)
    _add(book, 0, 5, 100.0, 0.0)  # after the checkpoint: lost with the crash, replayed below
    restarted = _book(now=10.0)
    restarted.restore(0, saved)
    for offset in range(3, 7):  # replay starts before the checkpoint
        _add(restarted, 0, offset, 100.0, 10.0)
    assert restarted.replayed_events == 2
    windows = restarted.close(200.0)  # idle: the wall clock closes them
    assert {w.window_seconds: w.requests for w in windows} == {2: 7, 4: 7}


def test_windows_emitted_before_a_checkpoint_are_not_emitted_again():
    book = _book(now=0.0)
    _add(book, 0, 0, 100.0, 0.0)
    _add(book, 1, 0, 100.0, 0.0)
    stale = book.checkpoint(1, 0.0)  # partition 1 checkpointed before the emission
    assert len(book.close(200.0)) == 2
    fresh = book.checkpoint(0, 200.0)  # partition 0 after it: carries the horizon
    restarted = _book(now=300.0)
    restarted.restore(1, stale)
    restarted.restore(0, fresh)
    assert restarted.close(400.0) == []
    assert not _add(restarted, 1, 0, 100.0, 400.0)  # replayed, and late anyway


def test_late_events_are_counted_not_applied():
    book = _book(now=0.0)
    _add(book, 0, 0, 100.0, 0.0)
    book.close(500.0)
    _add(book, 0, 1, 100.0, 500.0)
    assert book.late_events == 2 and book.close(600.0) == []


def test_restored_partition_holds_emission_until_replay_begins():
    book = _book(now=0.0)
    _add(book, 0, 0, 100.0, 0.0)
    saved = book.checkpoint(0, 0.0)
    restarted = _book(now=1000.0)
    restarted.restore(0, saved)
    assert restarted.close(1001.0) == []  # no event yet since the restart: the replay may not have begun


def test_partition_with_a_backlog_holds_windows_however_long_it_waits():
    book = _book(now=0.0)
    _add(book, 0, 0, 100.0, 0.0)
    _add(book, 1, 0, 100.2, 0.0)
    _add(book, 0, 1, 110.0, 60.0)  # catch-up: partition 0 raced ahead; partition 1 waits its turn for 60 s
    assert book.close(60.0, {("chat.responses", 0): 0, ("chat.responses", 1): 5000}) == []
    _add(book, 1, 1, 101.5, 61.0)  # not late: its window was held open
    windows = book.close(200.0, {("chat.responses", 0): 0, ("chat.responses", 1): 0})
    assert {(w.window_seconds, w.window_start.timestamp()): w.requests for w in windows}[(2, 100)] == 3
    assert book.late_events == 0


def test_partition_caught_up_and_quiet_does_not_hold_windows():
    book = _book(now=0.0)
    _add(book, 0, 0, 100.0, 0.0)
    _add(book, 1, 0, 200.0, 10.0)
    assert book.close(10.0, {("chat.responses", 0): 0, ("chat.responses", 1): 0}) != []


def test_feedback_still_to_join_holds_windows_until_joined():
    book = _book(now=0.0)
    _add(book, 0, 0, 100.0, 0.0)
    book.observe("chat.feedback", 2, 7, 100.5, 0.0)  # the join agent saw feedback 7 of partition 2 ...
    _add(book, 0, 1, 120.0, 30.0)  # ... and is still behind on that partition 30 s later
    assert book.close(30.0, {("chat.feedback", 2): 40, ("chat.responses", 0): 0}) == []
    book.add_feedback(
        "streams.feedback-joined",
        1,
        0,
        31.0,
        model_version="tiny",
        route="openai",
        event_time=100.6,
        feedback="thumbs_up",
        feedback_id="f-1",
    )
    book.observe("chat.feedback", 2, 47, 115.0, 31.0)  # caught up
    assert book.close(31.0, {("chat.feedback", 2): 0, ("chat.responses", 0): 0}) == []  # the joined one is recent
    windows = book.close(500.0, {("chat.feedback", 2): 0, ("chat.responses", 0): 0})  # all quiet: wall clock
    by_key = {(w.window_seconds, w.window_start.timestamp()): w for w in windows}
    assert by_key[(2, 100)].thumbs_up == 1 and book.late_events == 0
    assert book.applied_offset("chat.feedback", 2) == 47 and book.applied_offset("chat.responses", 0) == 1


# -- normalization, masking, filters --------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, normalized",
    [
        ("Where is my ORDER?", "where is my order"),
        ("  where   is my order ?! ", "where is my order"),
        ("Où est ma commande ?", "où est ma commande"),
        ("订单在哪里？", "订单在哪里"),
        ("Return-policy: 30 days.", "return policy 30 days"),
    ],
)
def test_normalize_question(text, normalized):
    assert normalize_question(text) == normalized


@pytest.mark.parametrize(
    "text, masked",
    [
        ("write to john.doe@example.com today", f"write to {EMAIL_MASK} today"),
        ("a+b_c@mail.co.uk", EMAIL_MASK),
        ("two: a@b.io, c@d.org", f"two: {EMAIL_MASK}, {EMAIL_MASK}"),
        ("call +1 (555) 123-4567 now", f"call {PHONE_MASK} now"),
        ("555-123-4567", PHONE_MASK),
        ("020 7946 0958.", f"{PHONE_MASK}."),
        ("+4915112345678", PHONE_MASK),
        ("0612345678", PHONE_MASK),
        ("555.123.4567", PHONE_MASK),
        ("order 12345 ships", "order 12345 ships"),  # order numbers stay
        ("on 2024-01-15", "on 2024-01-15"),  # dates stay
        ("on 15/01/2024", "on 15/01/2024"),
        ("price 1,234.56 USD", "price 1,234.56 USD"),
        ("version 3.14", "version 3.14"),
        ("no pii here", "no pii here"),
        ("user@localhost", "user@localhost"),  # no TLD: not an address we mask
    ],
)
def test_mask_pii(text, masked):
    assert mask_pii(text) == masked


@pytest.mark.parametrize(
    "chosen, rejected, problem",
    [
        ("Good answer.", "Bad answer.", None),
        (None, "Bad answer.", None),
        ("", "Bad answer.", "chosen answer empty or too short"),
        ("   ", "Bad answer.", "chosen answer empty or too short"),
        ("Good.", "", "rejected answer empty or too short"),
        ("Same answer!", "same answer", "chosen equals rejected"),
        ("x" * 101, "Bad.", "chosen answer too long"),
        ("Good.", "y" * 101, "rejected answer too long"),
    ],
)
def test_quality_filter(chosen, rejected, problem):
    assert quality_problem(chosen, rejected, 1, 100) == problem


def test_near_duplicate_filter():
    dedup = NearDuplicateFilter(threshold=0.8, recent=2)
    text = "where is my order \u241e it ships tomorrow morning from the warehouse \u241e it shipped yesterday"
    assert dedup.check_and_add("p1", text) is None
    assert dedup.check_and_add("p1", text) is None  # a replay of the same pair is not its own duplicate
    assert dedup.check_and_add("p2", text + "!") == "p1"
    assert dedup.check_and_add("p3", "a completely different question \u241e and answer") is None
    assert dedup.check_and_add("p4", "yet another unrelated conversation \u241e about refunds") is None
    assert dedup.check_and_add("p5", text) is None  # p1 fell out of the recent window


def test_pair_ids_are_deterministic():
    fid = uuid.uuid4()
    assert pair_id_for(fid) == pair_id_for(str(fid)) != pair_id_for(uuid.uuid4())


# -- joiner and builder with dict tables ----------------------------------------------------------------
def _conversation(question="Where is my order?", answer="Nowhere."):
    req = ChatRequest(
        session_id="s",
        message_id=f"m-{uuid.uuid4().hex[:6]}",
        model_alias="a",
        messages=[ChatMessage(role="user", content=question)],
    )
    resp = ChatResponse(
        session_id="s", message_id=req.message_id, model_alias="a", model_version="tiny", content=answer, latency_ms=5
    )
    return req, resp


def test_feedback_before_response_waits_then_joins_or_dead_letters():
    joiner = FeedbackJoiner({}, {}, context_ttl_s=100, pending_timeout_s=10)
    req, resp = _conversation()
    fb = Feedback(session_id="s", message_id=req.message_id, feedback="thumbs_down")
    assert joiner.on_feedback(fb, 0, 7, now=0).joined == []
    joiner.on_request(req, 0, now=1)
    [joined] = joiner.on_response(resp, 0, now=2).joined
    assert (joined.answer, joined.question, joined.offset) == ("Nowhere.", "where is my order", 7)
    lost = Feedback(session_id="s", message_id="m-unknown", feedback="thumbs_up")
    joiner.on_feedback(lost, 1, 9, now=3)
    assert joiner.sweep(1, now=12).dead == []
    [dead] = joiner.sweep(1, now=13).dead
    assert (dead.error_type, dead.partition, dead.offset) == ("unmatched_feedback", 1, 9)
    assert joiner.pending == {}


def test_feedback_waits_longer_while_the_join_reads_behind():
    joiner = FeedbackJoiner({}, {}, context_ttl_s=100, pending_timeout_s=10, catch_up_s=50)
    req, resp = _conversation()
    joiner.on_feedback(Feedback(session_id="s", message_id=req.message_id, feedback="thumbs_up"), 0, 7, now=0)
    assert joiner.sweep(0, now=30, behind=True).dead == []  # past its deadline, but answers are still to read
    joiner.on_request(req, 0, now=31)
    [joined] = joiner.on_response(resp, 0, now=32).joined
    assert joined.offset == 7
    lost = Feedback(session_id="s", message_id="m-unknown", feedback="thumbs_down")
    joiner.on_feedback(lost, 0, 9, now=40)
    assert joiner.sweep(0, now=99, behind=True).dead == []  # deadline 50, + 50 while behind
    out = joiner.sweep(0, now=100, behind=True)
    assert [d.offset for d in out.dead] == [9] and out.expired == [str(lost.event_id)]


def test_context_expires_after_ttl():
    joiner = FeedbackJoiner({}, {}, context_ttl_s=5, pending_timeout_s=1)
    req, resp = _conversation()
    joiner.on_request(req, 0, now=0)
    joiner.on_response(resp, 0, now=0)
    joiner.sweep(0, now=6)
    assert joiner.context == {}


def _joined_feedback():
    """A function joining one question, its answer and a feedback through a fresh FeedbackJoiner."""
    joiner = FeedbackJoiner({}, {}, 100, 10)

    def joined(question, answer, feedback, correction=None):
        req, resp = _conversation(question, answer)
        joiner.on_request(req, 0, 0)
        joiner.on_response(resp, 0, 0)
        fb = Feedback(session_id="s", message_id=req.message_id, feedback=feedback, correction=correction)
        return joiner.on_feedback(fb, 0, 0, 0).joined[0]

    return joined


def test_builder_chooses_correction_then_thumbs_up_then_teacher_then_needs_chosen():
    async def teacher(messages):
        return "Teacher says." if "teach" in messages[-1]["content"] else None

    builder = PairBuilder({}, "tiny", NearDuplicateFilter(0.9, 100), 1, 1000, teacher=teacher)
    joined = _joined_feedback()

    run = asyncio.run
    p = run(builder.on_joined(joined("Q1?", "bad", "thumbs_down", correction="mail me: a@b.com"))).pair
    assert (p.source, p.chosen) == ("correction", f"mail me: {EMAIL_MASK}")
    assert run(builder.on_joined(joined("How to return?", "Use the form.", "thumbs_up"))).pair is None
    p = run(builder.on_joined(joined("how to RETURN", "Impossible.", "thumbs_down"))).pair
    assert (p.source, p.chosen, p.rejected) == ("thumbs_up", "Use the form.", "Impossible.")
    assert run(builder.on_joined(joined("teach me", "No.", "thumbs_down"))).pair.source == "teacher"
    p = run(builder.on_joined(joined("Other?", "No.", "thumbs_down"))).pair
    assert (p.source, p.chosen) == ("needs_chosen", None)
    again = run(builder.on_joined(joined("Other?", "No.", "thumbs_down")))
    assert again.pair is None and again.dropped.startswith("near-duplicate")
    assert p.review == "none"


def test_with_reviews_on_only_a_users_correction_waits_and_trains_once_approved():
    from streams.agents.trigger import usable

    builder = PairBuilder({}, "tiny", NearDuplicateFilter(0.9, 100), 1, 1000, review_corrections=True)
    joined = _joined_feedback()

    run = asyncio.run
    corrected = run(builder.on_joined(joined("Kettles?", "No idea.", "thumbs_down", correction="39 euros."))).pair
    assert (corrected.source, corrected.review) == ("correction", "pending") and not usable(corrected)
    assert usable(corrected.model_copy(update={"review": "approved"}))
    assert not usable(corrected.model_copy(update={"review": "rejected"}))
    run(builder.on_joined(joined("How to return?", "Use the form.", "thumbs_up")))
    from_thumbs_up = run(builder.on_joined(joined("how to return", "Impossible.", "thumbs_down"))).pair
    assert (from_thumbs_up.source, from_thumbs_up.review) == ("thumbs_up", "none") and usable(from_thumbs_up)


# -- trigger state machine ------------------------------------------------------------------------------
def test_trigger_state_machine():
    covered: dict[str, str] = {}
    state = TriggerState("tiny")
    for i in range(3):
        assert state.on_pair(f"p{i}", True, covered)
    assert not state.on_pair("p0", True, covered)  # counted once
    assert not state.on_pair("x", False, covered)  # needs_chosen is not usable
    assert state.decide(0, 4, covered) is None
    state.on_pair("p3", True, covered)
    job = state.decide(0, 4, covered)
    assert job.status == "requested" and job.pair_ids == ["p0", "p1", "p2", "p3"]
    for i in range(4, 8):
        state.on_pair(f"p{i}", True, covered)
    assert not state.on_pair("p1", True, covered)  # covered by job 1
    assert state.decide(1, 4, covered) is None  # job 1 in flight
    state.on_job(job.job_id, "started", [], 2, 10, covered)
    state.on_job(job.job_id, "succeeded", [], 3, 10, covered)
    assert state.in_flight is None
    assert state.decide(12, 4, covered) is None  # cool-down until 13
    job2 = state.decide(13, 4, covered)
    assert job2.pair_ids == ["p4", "p5", "p6", "p7"] and job2.job_id != job.job_id
    state.on_job(job2.job_id, "failed", [], 14, 0, covered)
    state.on_job(job2.job_id, "started", [], 15, 0, covered)  # late echo of an ended job: ignored
    assert state.in_flight is None
    restored = TriggerState.from_json(state.to_json())
    assert restored == state


def test_a_job_waits_for_pairs_of_enough_distinct_users():
    covered: dict[str, str] = {}
    state = TriggerState("tiny")
    for i in range(6):
        state.on_pair(f"p{i}", True, covered, user_id="mallory")
    state.on_pair("p6", True, covered, user_id="alice")
    assert state.distinct_users() == 2
    assert state.decide(0, 4, covered, min_users=3) is None  # 7 pairs, but from 2 users
    state.on_pair("p7", True, covered)  # a pair without a user counts as one more user, "anonymous"
    job = state.decide(0, 4, covered, min_users=3)
    assert job.pair_ids == [f"p{i}" for i in range(8)]
    assert state.users == {} and state.pending == []
    assert TriggerState.from_json({"base_model": "tiny", "pending": ["old"]}).distinct_users() == 1


def test_jobs_requested_elsewhere_cover_their_pairs():
    covered: dict[str, str] = {}
    state = TriggerState("tiny")
    for i in range(4):
        state.on_pair(f"p{i}", True, covered)
    state.on_job("other", "requested", ["p0", "p1"], 0, 0, covered)
    assert state.in_flight == "other" and state.pending == ["p2", "p3"]


# -- dead-letter ids and agent selection ------------------------------------------------------------------
def test_dead_letter_id_is_the_sinks_for_the_same_position():
    """One position, one dead-letter id, whoever writes it (the sink owns undecodable input)."""
    from consumers.routes import dead_letter as sink_dead_letter
    from schemas.errors import NotJSON
    from streams.pairs import dead_letter

    ours = dead_letter("chat.feedback", 2, 41, "s", b"{}", "unmatched_feedback", "no response")
    theirs = sink_dead_letter("chat.feedback", 2, 41, b"s", b"{", NotJSON("x"))
    assert ours.event_id == theirs.event_id
    assert (ours.producer, theirs.producer) == ("flywheel-streams", "flywheel-sink")
    assert ours.event_id != dead_letter("chat.feedback", 2, 42, "s", b"{}", "unmatched_feedback", "x").event_id


@pytest.mark.parametrize(
    ("agents", "app_id"),
    [
        ("metrics,pairs,trigger", "flywheel-streams"),
        ("trigger, pairs ,metrics", "flywheel-streams"),
        ("metrics", "flywheel-streams-metrics"),
        ("trigger,pairs", "flywheel-streams-pairs-trigger"),
    ],
)
def test_agent_selection_names_its_own_app(agents, app_id):
    from streams.settings import StreamSettings

    assert StreamSettings(streams_app_id="flywheel-streams", streams_agents=agents).app_id == app_id


@pytest.mark.parametrize("agents", ["", "metrics,windows", " , "])
def test_agent_selection_rejects_unknown_groups(agents):
    from pydantic import ValidationError

    from streams.settings import StreamSettings

    with pytest.raises(ValidationError):
        StreamSettings(streams_agents=agents)


def test_table_state_is_kept_for_the_same_broker_log_only(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_DATA_DIR", str(tmp_path))
    from streams.app import _state_for_epoch

    state = tmp_path / "app"
    _state_for_epoch(state, "epoch-1")
    (state / "table.db").write_text("rows")
    _state_for_epoch(state, "epoch-1")
    assert (state / "table.db").exists()
    _state_for_epoch(state, "epoch-2")
    assert not (state / "table.db").exists() and (state / "broker-epoch").read_text() == "epoch-2"


def test_feedback_waiting_for_its_response_holds_windows_until_released_or_expired():
    book = _book(now=0.0)
    _add(book, 0, 0, 100.0, 0.0)
    book.observe("chat.feedback", 0, 3, 100.4, 0.0)
    book.hold("f-1", 100.4, until=50.0)  # the join agent waits for the answer of feedback f-1
    _add(book, 0, 1, 130.0, 20.0)
    assert book.close(20.0, {("chat.responses", 0): 0, ("chat.feedback", 0): 0}) == []  # held at 100.4
    book.add_feedback(
        "streams.feedback-joined",
        2,
        0,
        21.5,
        model_version="tiny",
        route="openai",
        event_time=100.4,
        feedback="thumbs_up",
        feedback_id="f-1",
    )
    book.release("f-1")
    windows = book.close(500.0, {("chat.responses", 0): 0, ("chat.feedback", 0): 0})
    assert {(w.window_seconds, w.window_start.timestamp()): w.thumbs_up for w in windows}[(2, 100)] == 1
    book.hold("f-2", 140.0, until=600.0)  # never joined: dead-lettered upstream, the hold expires
    assert book.close(599.0) == [] and book.holds
    book.close(601.0)
    assert not book.holds


def test_joined_feedback_holds_windows_until_the_metric_agent_applies_it():
    # A catch-up: the join agent joined f-1 (event time 100.4) and read on to 160 s; f-1 is still in the
    # producer's buffer, so no backlog shows on the joined topic and the feedback source is recent.
    book = _book(now=0.0)
    _add(book, 0, 0, 100.0, 0.0)
    book.hold("f-1", 100.4, until=60.0)
    book.observe("chat.feedback", 0, 9, 160.0, 1.0)
    _add(book, 0, 1, 160.0, 1.0)
    caught_up = {("chat.responses", 0): 0, ("chat.feedback", 0): 0, ("streams.feedback-joined", 2): 0}
    assert book.close(2.0, caught_up) == []  # held at 100.4: the [100, 102) windows wait for f-1
    book.add_feedback(
        "streams.feedback-joined",
        2,
        0,
        3.0,
        model_version="tiny",
        route="openai",
        event_time=100.4,
        feedback="thumbs_down",
        feedback_id="f-1",
    )
    book.release("f-1")
    windows = {(w.window_seconds, w.window_start.timestamp()): w for w in book.close(500.0, caught_up)}
    assert windows[(2, 100)].thumbs_down == 1 and windows[(4, 100)].thumbs_down == 1
    assert book.late_events == 0


def test_a_source_with_events_but_none_applied_since_the_start_holds_only_the_start_up_wait():
    book = _book(now=0.0)  # idle_s 5: the start-up wait is 25 s
    _add(book, 0, 0, 100.0, 1.0)
    _add(book, 0, 1, 130.0, 10.0)
    unknown = {("chat.responses", 0): 0, ("chat.feedback", 1): None}  # the join agent has not read it yet
    assert book.close(12.0, unknown) == []
    assert book.close(200.0, unknown) != []  # old events only, it seems: the wait is over
