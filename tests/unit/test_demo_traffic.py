"""`flywheel demo`'s pure parts: the traffic plan, the users' judgement, the loop tracker, the report's arithmetic."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from deploy.analytics import VersionSummary
from deploy.demo import DemoConfig, DemoRun, LoopTracker, nothing_to_correct
from deploy.demo_bad import swapped_pairs
from deploy.demo_render import markdown, tables
from deploy.demo_report import (
    before_after,
    decision,
    time_series,
    unseen_summary,
    version_rows,
    weight_series,
)
from deploy.demo_traffic import CORRECT_AT, Ask, Exchange, TrafficPlan, judge, select_corrected
from retrain.demo import QA, load_domain, loop_sets, sft_splits
from schemas.events import ChatMessage, Deployment, DPOPair, RetrainJob

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
LOOP = [QA(f"loop question {i}?", f"loop answer number {i} is this one", f"loop.i{i // 2}", "en") for i in range(4)]
OTHER = [QA(f"other question {i}?", f"other answer {i}", f"other.i{i}", "en") for i in range(3)]


# -- the plan --------------------------------------------------------------------------------------------------------


def test_plan_mixes_loop_and_other_questions_at_the_share_over_the_users():
    plan = TrafficPlan(LOOP, OTHER, corrected=LOOP[:2], users=5, loop_share=0.3, seed=1)
    asks = plan.take(4000)
    kinds = Counter(a.kind for a in asks)
    assert kinds["loop"] / len(asks) == pytest.approx(0.3, abs=0.03)
    assert {a.user for a in asks} == {f"demo-user-{n}" for n in range(5)}
    assert {a.qa for a in asks if a.kind == "loop"} == set(LOOP)
    assert {a.qa for a in asks if a.kind == "other"} == set(OTHER)
    # Only the corrected loop questions carry corrections; other intents' questions never do.
    assert {a.qa.question for a in asks if a.corrects} == {qa.question for qa in LOOP[:2]}
    assert TrafficPlan(LOOP, OTHER, LOOP[:2], 5, 0.3, seed=1).take(50) == asks[:50]  # seeded


@pytest.mark.parametrize("share,kinds", [(1.0, {"loop"}), (0.0, {"other"})])
def test_plan_extremes(share, kinds):
    assert {a.kind for a in TrafficPlan(LOOP, OTHER, LOOP, 3, share).take(200)} == kinds


def test_plan_without_other_questions_asks_only_loop_ones_and_refuses_nonsense():
    assert {a.kind for a in TrafficPlan(LOOP, [], LOOP, 2, 0.1).take(50)} == {"loop"}
    with pytest.raises(ValueError):
        TrafficPlan(LOOP, OTHER, LOOP, users=0)
    with pytest.raises(ValueError):
        TrafficPlan(LOOP, OTHER, LOOP, loop_share=1.5)


def test_select_corrected_by_intent_or_question():
    assert select_corrected(LOOP) == LOOP
    assert select_corrected(LOOP, ["loop.i1"]) == LOOP[2:]
    assert select_corrected(LOOP, [LOOP[0].question, "loop.i1"]) == [LOOP[0], *LOOP[2:]]
    with pytest.raises(ValueError, match="nope"):
        select_corrected(LOOP, ["nope"])


def test_the_demo_shop_gives_the_plan_its_questions():
    intents = load_domain()
    asked, unseen = loop_sets(intents, 3)
    plan = TrafficPlan(asked, sft_splits(intents)["test"], select_corrected(asked), users=20)
    asks = plan.take(500)
    assert all(a.corrects == (a.kind == "loop") for a in asks)
    assert not {a.qa.question for a in asks} & {qa.question for qa in unseen}  # unseen stay unseen


# -- the judgement ---------------------------------------------------------------------------------------------------


def test_judge_right_wrong_and_corrections():
    corrected = Ask("u", LOOP[0], "loop", True)
    plain = Ask("u", OTHER[0], "other", False)
    right = judge(LOOP[0].answer, corrected)
    assert right.verdict == "thumbs_up" and right.correction is None and right.score == 1.0
    wrong = judge("something else entirely", corrected)
    assert wrong.verdict == "thumbs_down" and wrong.correction == LOOP[0].answer and wrong.score < CORRECT_AT
    assert judge("something else entirely", plain) == judge("something else entirely", plain)
    assert judge("something else entirely", plain).correction is None
    assert judge("something else entirely", corrected, correcting=False).correction is None
    # Near misses: 0.7 ROUGE-L is the line.
    assert judge("loop answer number 0 is", corrected).verdict == "thumbs_up"  # F = 0.83
    assert judge("loop answer", corrected).verdict == "thumbs_down"  # F = 0.44


def ex(
    at: float,
    question: str,
    version: str = "tiny",
    verdict: str = "thumbs_down",
    corrected: bool = False,
    answer: str = "noise",
    score: float | None = 0.1,
    status: int = 200,
    message_id: str = "",
) -> Exchange:
    return Exchange(
        at,
        "demo-user-1",
        question,
        "loop.i0",
        "loop",
        LOOP[0].answer,
        status=status,
        version=version,
        message_id=message_id or uuid.uuid4().hex,
        answer=answer,
        score=score,
        verdict=verdict,
        corrected=corrected,
    )


def test_nothing_to_correct_only_when_every_corrected_question_was_asked_and_answered_right():
    right = [ex(i, q.question, verdict="thumbs_up") for i in range(2) for q in LOOP[:2]]
    assert nothing_to_correct(right, LOOP[:2])
    assert not nothing_to_correct(right[:3], LOOP[:2])  # one asked only once
    assert not nothing_to_correct([*right, ex(9, LOOP[0].question, corrected=True)], LOOP[:2])


# -- the loop tracker ------------------------------------------------------------------------------------------------


def pair(pair_id: str, message_id: str) -> DPOPair:
    return DPOPair(
        pair_id=pair_id,
        base_model="tiny",
        model_version="tiny",
        prompt=[ChatMessage(role="user", content="q?")],
        chosen="right",
        rejected="wrong",
        source="correction",
        session_id="s",
        message_id=message_id,
        feedback_event_id=uuid.uuid4(),
    )


def job(status: str, job_id: str = "j1", **kw) -> RetrainJob:
    return RetrainJob(job_id=job_id, base_model="tiny", status=status, **kw)


def dep(
    action: str, version: str = "support@v1", weight: int | None = None, reason: str = "", at: datetime = T0
) -> Deployment:
    return Deployment(alias="support", action=action, version=version, weight=weight, reason=reason, occurred_at=at)


def test_tracker_follows_our_pairs_to_the_job_and_its_rollout():
    events = [
        pair("p1", "m1"),
        pair("p2", "m2"),
        pair("p9", "someone-else"),
        job("requested", "other-job", pair_ids=["p9"]),
        job("requested", pair_ids=["p1", "p2", "p9"]),
        job("started"),
        dep("canary_started", "support@v0", 5),
        job("succeeded", adapter_version="support@v1", verdict="accepted"),
        dep("adapter_ready"),
        dep("canary_started", weight=5),
        dep("step", weight=20),
    ]
    tracker = LoopTracker("support")
    s = tracker.state(events, {"m1", "m2"})
    assert s.pair_ids == {"p1", "p2"} and s.job_id == "j1" and s.version == "support@v1" and s.outcome is None
    assert [d.action for d in s.deployments] == ["adapter_ready", "canary_started", "step"]
    assert s.last_deployment.action == "step"
    s = tracker.state([*events, dep("rolled_back", reason="thumbs-down rate harm")], {"m1", "m2"})
    assert (s.outcome, s.reason) == ("rolled_back", "thumbs-down rate harm")


def test_tracker_reports_a_rejected_or_failed_job_and_follows_an_announced_version():
    base = [pair("p1", "m1"), job("requested", pair_ids=["p1"])]
    rejected = LoopTracker("support").state(
        [*base, job("succeeded", adapter_version="support@v2", verdict="rejected", error="regression")], {"m1"}
    )
    assert (rejected.outcome, rejected.reason) == ("rejected", "regression")
    failed = LoopTracker("support").state([*base, job("failed", error="oom")], {"m1"})
    assert (failed.outcome, failed.reason) == ("failed", "oom")
    tracker = LoopTracker("support")
    tracker.target_version = "support@v7"
    s = tracker.state(
        [*base, dep("adapter_ready", "support@v7"), dep("promoted", "support@v7", 100, "non-inferior")], {"m1"}
    )
    assert s.job_id is None and (s.version, s.outcome, s.reason) == ("support@v7", "promoted", "non-inferior")


def test_swapped_pairs_swap_chosen_and_rejected():
    text = pair("p2", "m2").model_copy(update={"prompt_format": "text"})
    row, code_row = swapped_pairs([pair("p1", "m1"), text])
    assert row == {
        "pair_id": "swapped-p1",
        "prompt": [{"role": "user", "content": "q?"}],
        "chosen": "wrong",
        "rejected": "right",
        "prompt_format": "chat",
    }
    assert code_row["prompt_format"] == "text"  # a completion's pair stays a text pair


# -- the report's arithmetic -----------------------------------------------------------------------------------------


def make_run() -> DemoRun:
    config = DemoConfig("http://gw", "key", "k:9092", "redis://r")
    run = DemoRun(config, started_at=1000.0, ended_at=1100.0, corrected=LOOP[:2])
    q0, q1 = LOOP[0].question, LOOP[1].question
    run.exchanges = [
        ex(1010, q0, answer="first wrong", score=0.1, corrected=True),
        ex(1005, q0, answer="earlier wrong", score=0.2, corrected=True),  # the first answer (by time)
        ex(1001, q1, status=502, verdict="", score=None, answer=""),  # failed: not an answer
        ex(1012, q1, answer="right-ish", score=0.9, verdict="thumbs_up"),
        ex(1025, OTHER[0].question, version="support@v1", verdict="thumbs_up", score=1.0),
        ex(1026, OTHER[1].question, version="support@v1", verdict="thumbs_down"),
        ex(1027, OTHER[1].question, version="support@v1", verdict=""),
    ]
    run.after = [ex(1090, q0, version="support@v1", answer=LOOP[0].answer, score=1.0, verdict="")]
    run.unseen = [
        ex(1091, "para 1", score=0.85, verdict=""),
        ex(1092, "para 2", score=0.5, verdict=""),
        ex(1093, "para 3", score=None, status=500, verdict=""),
    ]
    run.state.version = "support@v1"
    run.state.deployments = [
        dep("canary_started", weight=5),
        dep("step", weight=20, at=T0 + timedelta(seconds=5)),
        dep("promoted", weight=100, reason="non-inferior on thumbs-down", at=T0 + timedelta(seconds=10)),
    ]
    run.state.all_deployments = list(run.state.deployments)
    return run


def test_before_after_uses_the_first_answer_and_only_asked_again_questions():
    (row,) = before_after(make_run())
    assert row["question"] == LOOP[0].question and row["correction"] == LOOP[0].answer
    assert (row["before"], row["before_rouge_l"]) == ("earlier wrong", 0.2)
    assert (row["after"], row["after_rouge_l"], row["after_version"]) == (LOOP[0].answer, 1.0, "support@v1")


def test_unseen_share_counts_answers_at_or_above_the_line():
    u = unseen_summary(make_run().unseen)
    assert (u["asked"], u["learned"], u["share"]) == (3, 1, pytest.approx(1 / 3))
    assert unseen_summary([])["share"] is None


def test_version_rows_rate_over_the_active_span_and_keep_the_store_figures():
    s = VersionSummary(
        "support@v1",
        requests=30,
        errors=3,
        error_rate=0.1,
        rated=20,
        thumbs_up=15,
        thumbs_down=5,
        thumbs_down_rate=0.25,
        ok_requests=27,
        latency_mean_ms=100.0,
        latency_std_ms=10.0,
        latency_p50_ms=90.0,
        latency_p95_ms=180.0,
        latency_p99_ms=200.0,
        first_seen=T0,
        last_seen=T0 + timedelta(seconds=60),
    )
    one = VersionSummary(**{**vars(s), "requests": 1, "last_seen": T0})
    rows = version_rows([s, one])
    assert rows[0]["requests_per_s"] == pytest.approx(0.5) and rows[0]["latency_p95_ms"] == 180.0
    assert (rows[0]["error_rate"], rows[0]["thumbs_down_rate"], rows[0]["thumbs_down"]) == (0.1, 0.25, 5)
    assert rows[1]["requests_per_s"] == 1.0  # a single answer: at least one second


def test_decision_is_the_final_event_and_its_reason():
    d = decision(make_run())
    assert (d["version"], d["action"], d["reason"]) == ("support@v1", "promoted", "non-inferior on thumbs-down")
    run = make_run()
    run.state.deployments = run.state.deployments[:2]
    assert decision(run) is None


def test_time_series_per_version_and_bin():
    series = time_series(make_run().exchanges, start=1000.0, bin_s=10.0)
    assert series["tiny"] == {"t": [0.0, 10.0], "requests_per_s": [0.1, 0.2], "thumbs_down_rate": [1.0, 0.5]}
    v1 = series["support@v1"]
    assert v1["t"] == [20.0] and v1["requests_per_s"] == [0.3] and v1["thumbs_down_rate"] == [0.5]


def test_weight_series_fills_unrouted_versions_with_zero():
    w = weight_series([(1000.0, {"tiny": 100}), (1005.0, {"tiny": 80, "v1": 20}), (1010.0, {"v1": 100})], 1000.0)
    assert w == {
        "tiny": {"t": [0.0, 5.0, 10.0], "weight": [100, 80, 0]},
        "v1": {"t": [0.0, 5.0, 10.0], "weight": [0, 20, 100]},
    }


def test_tables_and_markdown_render_a_report():
    run = make_run()
    report = {
        "run_id": "r1",
        "window": {"start": "a", "end": "b", "where": "x"},
        "outcome": {
            "outcome": "promoted",
            "version": "support@v1",
            "job_id": "j1",
            "pairs": 8,
            "reason": "ok",
            "note": "",
            "timed_out": False,
        },
        "corrections": before_after(run),
        "unseen": unseen_summary(run.unseen),
        "stages": {"job_id": "j1", "requested_at": "t1", "promoted_at": "t2", "canary_to_promoted_s": 21.5},
        "versions": [],
        "decision": decision(run),
    }
    titles = [t for t, _, _ in tables(report)]
    assert titles[0] == "Outcome" and any("1/3" in t for t in titles)
    text = markdown(report)
    assert "# Flywheel demo r1" in text and "| promoted | support@v1 | j1 | 8 | ok |" in text and "21.5" in text
