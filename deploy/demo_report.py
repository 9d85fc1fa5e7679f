"""The report of a `flywheel demo` run: what the loop learned, how long it took, how each version served.

`build_report` turns a `deploy.demo.DemoRun` plus the analytics store into one JSON-able dict:
- `corrections`: each corrected question's first answer in the run and its answer after the rollout, ROUGE-L against
  the correction; `unseen`: the loop intents' unseen paraphrases asked after the rollout, and the share answered
  with the correction (ROUGE-L >= LEARNED_AT);
- `stages`: the run's job in the view `flywheel.v_loop_stages`;
- `versions`: per model version over the run's window, the analyst summary of `schemas.views.ab_summary_sql`
  (the SELECT behind `flywheel.v_ab_summary`, as `flywheel report` windows it), plus requests/s over the version's
  active span; `decision`: the rollout's last event and its reason (the sequential test's verdict);
- `retrieval` (the rag case): answers with a source, labelled questions whose sources hold their page, the run's
  pairs with passages in their prompt (deploy.demo_cases.retrieval_summary);
- `series` (requests/s and thumbs-down rate per version, from the run's own answers, in `bin_s` bins) and
  `weights` (the routing table as sampled), for the plots.
deploy/demo_render.py prints it as tables and writes report.json, report.md and the PNG plots.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from deploy import analytics
from deploy.demo import DemoRun
from deploy.demo_cases import retrieval_summary
from deploy.demo_traffic import LEARNED_AT, Exchange
from inference.retrieval.examples import labelled_documents
from schemas.views import DB, ab_summary_sql

log = logging.getLogger(__name__)

VERSION_COLUMNS = (
    "model_version",
    "requests",
    "requests_per_s",
    "latency_p95_ms",
    "error_rate",
    "rated",
    "thumbs_down",
    "thumbs_down_rate",
    "first_seen",
    "last_seen",
)


# -- arithmetic (pure) -----------------------------------------------------------------------------------------------


def before_after(run: DemoRun) -> list[dict]:
    """Each corrected question: its first answer in the run (before) and the answer after the rollout."""
    first: dict[str, Exchange] = {}
    for ex in sorted((e for e in run.exchanges if e.status == 200), key=lambda e: e.at):
        first.setdefault(ex.question, ex)
    after = {ex.question: ex for ex in run.after}
    rows = []
    for qa in run.corrected:
        if qa.question not in after:
            continue
        b, a = first.get(qa.question), after[qa.question]
        rows.append(
            {
                "question": qa.question,
                "intent": qa.intent,
                "correction": qa.answer,
                "before": b.answer if b else None,
                "before_version": b.version if b else None,
                "before_rouge_l": b.score if b else None,
                "after": a.answer if a.status == 200 else None,
                "after_version": a.version,
                "after_rouge_l": a.score,
            }
        )
    return rows


def unseen_summary(unseen: Sequence[Exchange], learned_at: float = LEARNED_AT) -> dict:
    rows = [
        {
            "question": e.question,
            "intent": e.intent,
            "answer": e.answer,
            "version": e.version,
            "rouge_l": e.score,
            "learned": e.score is not None and e.score >= learned_at,
        }
        for e in unseen
    ]
    learned = sum(r["learned"] for r in rows)
    return {
        "asked": len(rows),
        "learned": learned,
        "share": learned / len(rows) if rows else None,
        "learned_at": learned_at,
        "rows": rows,
    }


def version_rows(summaries: Sequence[analytics.VersionSummary]) -> list[dict]:
    """The per-version table: requests/s is over the version's active span (first to last answer, at least 1 s),
    so a canary that served for 20 s is not diluted by the whole run."""
    rows = []
    for s in summaries:
        span = max(1.0, (s.last_seen - s.first_seen).total_seconds())
        rows.append(
            {
                "model_version": s.model_version,
                "requests": s.requests,
                "requests_per_s": s.requests / span,
                "latency_p95_ms": s.latency_p95_ms,
                "error_rate": s.error_rate,
                "rated": s.rated,
                "thumbs_down": s.thumbs_down,
                "thumbs_down_rate": s.thumbs_down_rate,
                "first_seen": s.first_seen.isoformat(),
                "last_seen": s.last_seen.isoformat(),
            }
        )
    return rows


def decision(run: DemoRun) -> dict | None:
    """The rollout's final event for the run's version (promoted or rolled_back) with its reason."""
    final = next((d for d in reversed(run.state.deployments) if d.action in ("promoted", "rolled_back")), None)
    if final is None:
        return None
    return {
        "version": final.version,
        "action": final.action,
        "reason": final.reason,
        "previous_version": final.previous_version,
        "at": final.occurred_at.isoformat(),
    }


def time_series(exchanges: Sequence[Exchange], start: float, bin_s: float = 10.0) -> dict[str, dict]:
    """version -> {"t": [bin start, s from `start`], "requests_per_s": [...], "thumbs_down_rate": [...]} from the
    run's answers; a bin without rated answers has thumbs_down_rate None."""
    bins: dict[str, dict[int, list[int]]] = {}  # version -> bin -> [answers, rated, thumbs down]
    for e in exchanges:
        if e.status != 200 or not e.version:
            continue
        b = bins.setdefault(e.version, {}).setdefault(int((e.at - start) // bin_s), [0, 0, 0])
        b[0] += 1
        b[1] += e.verdict in ("thumbs_up", "thumbs_down")
        b[2] += e.verdict == "thumbs_down"
    out = {}
    for version, per_bin in bins.items():
        keys = sorted(per_bin)
        out[version] = {
            "t": [k * bin_s for k in keys],
            "requests_per_s": [per_bin[k][0] / bin_s for k in keys],
            "thumbs_down_rate": [per_bin[k][2] / per_bin[k][1] if per_bin[k][1] else None for k in keys],
        }
    return out


def weight_series(samples: Sequence[tuple[float, dict[str, int]]], start: float) -> dict[str, dict]:
    """version -> {"t": [...], "weight": [...]}: every sample, 0 where the version was not routed."""
    versions = sorted({v for _, routes in samples for v in routes})
    return {
        v: {"t": [at - start for at, _ in samples], "weight": [routes.get(v, 0) for _, routes in samples]}
        for v in versions
    }


# -- the store -------------------------------------------------------------------------------------------------------


def window_condition(start: float, end: float, alias: str) -> str:
    quoted = alias.replace("\\", "\\\\").replace("'", "\\'")
    return (
        f"occurred_at >= {analytics._ts(_utc(start))} AND occurred_at <= {analytics._ts(_utc(end))}"
        f" AND model_alias = '{quoted}'"
    )


def _utc(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


def window_summaries(client, start: float, end: float, alias: str) -> list[analytics.VersionSummary]:
    """Per-version figures over [start, end]: the analyst summary's SELECT, windowed."""
    sql = ab_summary_sql(window_condition(start, end, alias)) + "\nORDER BY first_seen, model_version"
    return [analytics.VersionSummary(**row) for row in analytics._dicts(client, sql)]


def wait_for_sink(client, run: DemoRun, timeout: float = 60.0) -> bool:
    """Wait until the store holds every answer and verdict of the run (the sink lags the bus by a flush or so)."""
    exchanges = [e for e in run.exchanges + run.after + run.unseen if e.message_id]
    answered = {e.message_id for e in exchanges}
    rated = {e.message_id for e in exchanges if e.verdict}
    if not answered:
        return True
    ids = ", ".join(f"'{m}'" for m in sorted(answered) if "'" not in m and "\\" not in m)
    deadline = time.monotonic() + timeout
    while True:
        rows = analytics._dicts(
            client,
            f"SELECT (SELECT count() FROM {DB}.chat_responses FINAL WHERE message_id IN "
            f"({ids})) AS answers, (SELECT count() FROM {DB}.v_feedback_verdicts WHERE "
            f"message_id IN ({ids})) AS rated",
        )
        if rows[0]["answers"] >= len(answered) and rows[0]["rated"] >= len(rated):
            return True
        if time.monotonic() > deadline:
            log.warning(
                "the store has %s of %s answers and %s of %s verdicts",
                rows[0]["answers"],
                len(answered),
                rows[0]["rated"],
                len(rated),
            )
            return False
        time.sleep(1.0)


def loop_stages(client, job_id: str | None, timeout: float = 30.0) -> dict | None:
    """The job's row of `flywheel.v_loop_stages`, once its rollout's end has reached the store (or `timeout`)."""
    if not job_id or "'" in job_id or "\\" in job_id:
        return None
    deadline = time.monotonic() + timeout
    while True:
        rows = analytics._dicts(client, f"SELECT * FROM {DB}.v_loop_stages WHERE job_id = '{job_id}'")
        row = rows[0] if rows else None
        ended = row is not None and (
            row["promoted_at"] or row["rolled_back_at"] or row["failed_at"] or row["verdict"] == "rejected"
        )
        if ended or time.monotonic() > deadline:
            return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()} if row else None
        time.sleep(1.0)


def build_report(run: DemoRun, client, run_id: str, bin_s: float = 10.0) -> dict:
    start, end = run.started_at, run.ended_at
    synced = wait_for_sink(client, run)
    state = run.state
    return {
        "run_id": run_id,
        "case": run.config.case,
        "window": {
            "start": _utc(start).isoformat(),
            "end": _utc(end).isoformat(),
            "start_unix": start,
            "end_unix": end,
            "where": window_condition(start, end, run.config.alias),
            "store_synced": synced,
        },
        "config": {k: v for k, v in vars(run.config).items() if k != "api_key"},
        "outcome": {
            "outcome": state.outcome,
            "reason": state.reason,
            "version": state.version,
            "job_id": state.job_id,
            "gate_verdict": state.gate_verdict,
            "pairs": len(state.pairs),
            "timed_out": run.timed_out,
            "note": run.note,
            "bad_adapter": run.bad_adapter,
        },
        "traffic": {
            "asked": len(run.exchanges),
            "answered": sum(e.status == 200 for e in run.exchanges),
            "errors": sum(e.status != 200 for e in run.exchanges),
            "thumbs_up": sum(e.verdict == "thumbs_up" for e in run.exchanges),
            "thumbs_down": sum(e.verdict == "thumbs_down" for e in run.exchanges),
            "corrections": sum(e.corrected for e in run.exchanges),
        },
        "corrections": before_after(run),
        "unseen": unseen_summary(run.unseen),
        "retrieval": (
            retrieval_summary(run.exchanges, state.pairs, labelled_documents()) if run.config.case == "rag" else None
        ),
        "stages": loop_stages(client, state.job_id),
        "versions": version_rows(window_summaries(client, start, end, run.config.alias)),
        "decision": decision(run),
        "deployments": [
            {
                "at": d.occurred_at.isoformat(),
                "action": d.action,
                "version": d.version,
                "weight": d.weight,
                "reason": d.reason,
            }
            for d in state.all_deployments
        ],
        "series": time_series(run.exchanges, start, bin_s),
        "weights": weight_series(run.route_samples, start),
    }
