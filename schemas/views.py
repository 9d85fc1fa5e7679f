"""Analyst views over the topic tables (database `flywheel`), applied by migration 2 of `schemas.ddl`
(`v_loop_stages` by migration 4, `v_reviewed_accuracy` by migration 7, `v_retrieval` and `v_code_acceptance` by
migration 8).

Plain views, not materialized ones, on purpose:
- Exactness. The tables are ReplacingMergeTree keyed by `event_id`; an event produced twice
  (at-least-once producers, a replayed file) is two rows until a merge, and only `FINAL` (read
  time) removes the copy. A materialized view aggregates at insert time, so it would count that
  copy for good. Every view here reads `FINAL`.
- Scale. The embedded stack holds thousands to a few million rows: a scan with FINAL answers in
  milliseconds to a second. The pre-aggregated path already exists: the stream processors write
  windowed aggregates to `metrics_windows`. If raw tables grow past what a scan answers in time,
  the step up is an AggregatingMergeTree fed by a materialized view (after deduplication), not a
  change to these names and columns.

Time series are bucketed per minute of the event's `occurred_at` (UTC) and per model version;
filter them on `minute` (ClickHouse pushes the predicate into the view). Conventions:
- `requests` are responses (`chat_responses`): only a response carries the model version.
- Latency figures are over `status = 'ok'` responses (the time to a usable answer); failures are
  what the error rate counts (`error` and `timeout`).
- A message's verdict is its latest feedback (a user may change their mind); the thumbs-down rate
  is thumbs-down over rated answers, bucketed by the minute the answer was served, so that it
  describes the version that served it.
- A question is the last user message of a request, trimmed, lowercased, inner whitespace folded.
"""

from __future__ import annotations

DB = "flywheel"

# The last user message of a chat_requests row as written (messages is a JSON array of {role, content}), and
# the normalized question made from it.
LAST_USER_MESSAGE_EXPR = (
    "JSONExtractString(arrayLast(m -> JSONExtractString(m, 'role') = 'user', JSONExtractArrayRaw(messages)), 'content')"
)
QUESTION_EXPR = f"lowerUTF8(trimBoth(replaceRegexpAll({LAST_USER_MESSAGE_EXPR}, '\\\\s+', ' ')))"

# Per-version aggregates over `v_responses`, shared by the view `v_ab_summary` (all time) and by
# the windowed queries of deploy/analytics.py, so the two cannot drift apart.
AB_SUMMARY_COLUMNS = """
    model_version,
    count() AS requests,
    countIf(status != 'ok') AS errors,
    errors / requests AS error_rate,
    countIf(verdict != '') AS rated,
    countIf(verdict = 'thumbs_up') AS thumbs_up,
    countIf(verdict = 'thumbs_down') AS thumbs_down,
    if(rated = 0, NULL, thumbs_down / rated) AS thumbs_down_rate,
    countIf(status = 'ok') AS ok_requests,
    if(ok_requests = 0, NULL, avgIf(latency_ms, status = 'ok')) AS latency_mean_ms,
    if(ok_requests < 2, NULL, stddevSampStableIf(latency_ms, status = 'ok')) AS latency_std_ms,
    if(ok_requests = 0, NULL, quantileIf(0.5)(latency_ms, status = 'ok')) AS latency_p50_ms,
    if(ok_requests = 0, NULL, quantileIf(0.95)(latency_ms, status = 'ok')) AS latency_p95_ms,
    if(ok_requests = 0, NULL, quantileIf(0.99)(latency_ms, status = 'ok')) AS latency_p99_ms,
    min(occurred_at) AS first_seen,
    max(occurred_at) AS last_seen"""


def ab_summary_sql(where: str = "") -> str:
    """Per-version summary over `v_responses`, optionally filtered (`where` is a SQL condition)."""
    condition = f"\nWHERE {where}" if where else ""
    return f"SELECT{AB_SUMMARY_COLUMNS}\nFROM {DB}.v_responses{condition}\nGROUP BY model_version"


def top_questions_sql(where: str = "", limit: int = 10) -> str:
    """The most asked normalized questions over `v_questions`, optionally filtered."""
    condition = f"\nWHERE {where}" if where else ""
    return (
        "SELECT question, count() AS asks, uniqExact(session_id) AS sessions, max(occurred_at) AS last_asked\n"
        f"FROM {DB}.v_questions{condition}\nGROUP BY question\nORDER BY asks DESC, question ASC\nLIMIT {int(limit)}"
    )


def dead_letters_sql(where: str = "") -> str:
    """Dead letters per source topic and error type, optionally filtered."""
    condition = f"\nWHERE {where}" if where else ""
    return (
        "SELECT source_topic, error_type, count() AS dead_letters, max(occurred_at) AS last_seen,\n"
        "    argMax(error, occurred_at) AS last_error\n"
        f"FROM {DB}.dead_letters FINAL{condition}\nGROUP BY source_topic, error_type"
    )


# Name -> SELECT, in dependency order (a view only reads tables and the views above it).
VIEWS: dict[str, str] = {
    # One row per message: its latest verdict, comment and correction.
    "v_feedback_verdicts": f"""
SELECT
    message_id,
    argMax(feedback, occurred_at) AS verdict,
    argMax(comment, occurred_at) AS comment,
    argMax(correction, occurred_at) AS correction,
    max(occurred_at) AS feedback_at
FROM {DB}.feedback FINAL
GROUP BY message_id""",
    # One row per response with its verdict ('' when unrated): the base of per-version figures.
    "v_responses": f"""
SELECT
    r.occurred_at AS occurred_at, r.model_version AS model_version, r.model_alias AS model_alias,
    r.session_id AS session_id, r.message_id AS message_id, r.status AS status,
    r.latency_ms AS latency_ms, r.ttft_ms AS ttft_ms, r.completion_tokens AS completion_tokens,
    f.verdict AS verdict
FROM {DB}.chat_responses AS r FINAL
LEFT JOIN {DB}.v_feedback_verdicts AS f ON f.message_id = r.message_id""",
    # Requests (responses) per second per version, per minute.
    "v_requests_per_second": f"""
SELECT
    model_version,
    toStartOfMinute(occurred_at) AS minute,
    count() AS requests,
    requests / 60 AS requests_per_second
FROM {DB}.chat_responses FINAL
GROUP BY model_version, minute""",
    # p95 (with p50, p99, mean) latency of successful responses per version, per minute.
    "v_latency_p95": f"""
SELECT
    model_version,
    toStartOfMinute(occurred_at) AS minute,
    count() AS requests,
    quantile(0.95)(latency_ms) AS latency_p95_ms,
    quantile(0.5)(latency_ms) AS latency_p50_ms,
    quantile(0.99)(latency_ms) AS latency_p99_ms,
    avg(latency_ms) AS latency_mean_ms
FROM {DB}.chat_responses FINAL
WHERE status = 'ok'
GROUP BY model_version, minute""",
    # Share of responses that failed (error or timeout) per version, per minute.
    "v_error_rate": f"""
SELECT
    model_version,
    toStartOfMinute(occurred_at) AS minute,
    count() AS requests,
    countIf(status = 'error') AS errors,
    countIf(status = 'timeout') AS timeouts,
    (errors + timeouts) / requests AS error_rate
FROM {DB}.chat_responses FINAL
GROUP BY model_version, minute""",
    # Thumbs-down over rated answers per version, per minute the answer was served.
    "v_thumbs_down_rate": f"""
SELECT
    model_version,
    toStartOfMinute(occurred_at) AS minute,
    countIf(verdict != '') AS rated,
    countIf(verdict = 'thumbs_up') AS thumbs_up,
    countIf(verdict = 'thumbs_down') AS thumbs_down,
    thumbs_down / rated AS thumbs_down_rate
FROM {DB}.v_responses
WHERE verdict != ''
GROUP BY model_version, minute""",
    # One row per request with its normalized question (requests without a user message left out).
    "v_questions": f"""
SELECT occurred_at, model_alias, session_id, message_id, {QUESTION_EXPR} AS question
FROM {DB}.chat_requests FINAL
WHERE question != ''""",
    # The ten most asked questions, all time.
    "v_top_questions": top_questions_sql(),
    # Thumbs-down feedback that says why (comment or correction), with the answer and the question.
    "v_bad_cases": f"""
SELECT
    f.occurred_at AS feedback_at,
    r.model_version AS model_version,
    q.question AS question,
    r.content AS answer,
    f.comment AS comment,
    f.correction AS correction,
    f.session_id AS session_id,
    f.message_id AS message_id,
    f.event_id AS feedback_event_id
FROM {DB}.feedback AS f FINAL
LEFT JOIN (
    SELECT message_id, any(model_version) AS model_version, any(content) AS content
    FROM {DB}.chat_responses FINAL
    WHERE message_id IN (SELECT message_id FROM {DB}.feedback WHERE feedback = 'thumbs_down')
    GROUP BY message_id
) AS r ON r.message_id = f.message_id
LEFT JOIN (
    SELECT message_id, any(question) AS question
    FROM {DB}.v_questions
    WHERE message_id IN (SELECT message_id FROM {DB}.feedback WHERE feedback = 'thumbs_down')
    GROUP BY message_id
) AS q ON q.message_id = f.message_id
WHERE f.feedback = 'thumbs_down' AND (coalesce(f.comment, '') != '' OR f.correction IS NOT NULL)""",
    # Input of the A/B comparison: per version, all time (deploy/analytics.py windows the same SELECT).
    "v_ab_summary": ab_summary_sql(),
    # Dead letters per source topic and error type, all time.
    "v_dead_letters": dead_letters_sql(),
}


def view_statements() -> tuple[str, ...]:
    """`CREATE OR REPLACE VIEW` for every view, in dependency order (idempotent)."""
    return tuple(f"CREATE OR REPLACE VIEW {DB}.{name} AS\n{select.strip()}" for name, select in VIEWS.items())


# The loop's stage times, one row per retrain job (migration 4 of schemas.ddl). The stages:
#   threshold pair (the newest of the job's pairs: the one whose arrival crossed the trigger's threshold)
#   -> job requested -> started -> succeeded (retrain_jobs) -> adapter_ready -> canary_started
#   -> promoted or rolled_back (model_deployments of the job's adapter version; a version name is never reused).
# Times are the events' `occurred_at` (set by the process that made the transition); durations in seconds,
# NULL while a stage has not happened. `total_s` is threshold pair -> promoted (the loop's goal).
# (stage, its time column, its seconds-since-the-previous-stage column) of v_loop_stages, in order: for reports.
LOOP_STAGES = (
    ("threshold pair", "threshold_pair_at", None),
    ("job requested", "requested_at", "pair_to_requested_s"),
    ("job started", "started_at", "requested_to_started_s"),
    ("job succeeded", "succeeded_at", "started_to_succeeded_s"),
    ("adapter_ready", "adapter_ready_at", "succeeded_to_ready_s"),
    ("canary started", "canary_started_at", "ready_to_canary_s"),
    ("promoted", "promoted_at", "canary_to_promoted_s"),
    ("rolled back", "rolled_back_at", "canary_to_rolled_back_s"),
)
LOOP_STAGES_SQL = f"""
SELECT
    j.job_id AS job_id,
    j.base_model AS base_model,
    j.adapter_version AS adapter_version,
    j.verdict AS verdict,
    j.error AS error,
    j.pairs AS pairs,
    p.threshold_pair_at AS threshold_pair_at,
    j.requested_at AS requested_at,
    j.started_at AS started_at,
    j.succeeded_at AS succeeded_at,
    j.failed_at AS failed_at,
    d.adapter_ready_at AS adapter_ready_at,
    d.canary_started_at AS canary_started_at,
    d.promoted_at AS promoted_at,
    d.rolled_back_at AS rolled_back_at,
    multiIf(d.promoted_at IS NOT NULL, 'promoted', d.rolled_back_at IS NOT NULL, 'rolled_back',
            d.canary_started_at IS NOT NULL, 'canary', d.adapter_ready_at IS NOT NULL, 'adapter_ready',
            j.failed_at IS NOT NULL, 'failed', j.succeeded_at IS NOT NULL, 'succeeded',
            j.started_at IS NOT NULL, 'started', 'requested') AS stage,
    dateDiff('millisecond', p.threshold_pair_at, j.requested_at) / 1000 AS pair_to_requested_s,
    dateDiff('millisecond', j.requested_at, j.started_at) / 1000 AS requested_to_started_s,
    dateDiff('millisecond', j.started_at, j.succeeded_at) / 1000 AS started_to_succeeded_s,
    dateDiff('millisecond', j.succeeded_at, d.adapter_ready_at) / 1000 AS succeeded_to_ready_s,
    dateDiff('millisecond', d.adapter_ready_at, d.canary_started_at) / 1000 AS ready_to_canary_s,
    dateDiff('millisecond', d.canary_started_at, d.promoted_at) / 1000 AS canary_to_promoted_s,
    dateDiff('millisecond', d.canary_started_at, d.rolled_back_at) / 1000 AS canary_to_rolled_back_s,
    dateDiff('millisecond', p.threshold_pair_at, d.promoted_at) / 1000 AS total_s
FROM (
    SELECT
        job_id,
        any(base_model) AS base_model,
        anyIf(pair_ids, status = 'requested') AS requested_pair_ids,
        length(requested_pair_ids) AS pairs,
        anyIf(adapter_version, status = 'succeeded') AS adapter_version,
        anyIf(verdict, status = 'succeeded') AS verdict,
        anyIf(error, status IN ('succeeded', 'failed')) AS error,
        minIfOrNull(occurred_at, status = 'requested') AS requested_at,
        minIfOrNull(occurred_at, status = 'started') AS started_at,
        minIfOrNull(occurred_at, status = 'succeeded') AS succeeded_at,
        minIfOrNull(occurred_at, status = 'failed') AS failed_at
    FROM {DB}.retrain_jobs FINAL
    GROUP BY job_id
) AS j
LEFT JOIN (
    SELECT jp.job_id AS job_id, maxOrNull(pp.created_at) AS threshold_pair_at
    FROM (
        SELECT job_id, arrayJoin(pair_ids) AS pair_id
        FROM {DB}.retrain_jobs FINAL
        WHERE status = 'requested'
    ) AS jp
    INNER JOIN (
        SELECT pair_id, minIfOrNull(occurred_at, review IN ('none', 'approved')) AS created_at
        FROM {DB}.dpo_pairs FINAL
        GROUP BY pair_id
    ) AS pp ON pp.pair_id = jp.pair_id
    GROUP BY jp.job_id
) AS p ON p.job_id = j.job_id
LEFT JOIN (
    SELECT
        version,
        minIfOrNull(occurred_at, action = 'adapter_ready') AS adapter_ready_at,
        minIfOrNull(occurred_at, action = 'canary_started') AS canary_started_at,
        minIfOrNull(occurred_at, action = 'promoted') AS promoted_at,
        minIfOrNull(occurred_at, action = 'rolled_back') AS rolled_back_at
    FROM {DB}.model_deployments FINAL
    GROUP BY version
) AS d ON d.version = j.adapter_version"""


def loop_stages_statements() -> tuple[str, ...]:
    """`CREATE OR REPLACE VIEW flywheel.v_loop_stages` (migration 4)."""
    return (f"CREATE OR REPLACE VIEW {DB}.v_loop_stages AS\n{LOOP_STAGES_SQL.strip()}",)


# People's scores of answers per model version (migration 7 of schemas.ddl, beside the table human_reviews):
# `flywheel review export` samples answers into a sheet, people score them, `flywheel review import` publishes a
# HumanReview per scored row. Each reviewer's latest review of an answer counts (a corrected score replaces the
# reviewer's own, never another reviewer's); the latest is taken as one tuple, because argMax skips NULLs and would
# bring back an older friendliness that a correction left empty.
#   reviewed_answers  answers with at least one review;  reviews: (answer, reviewer) pairs;  reviewers: people
#   accuracy          mean accuracy (1 right, 0 wrong) over those reviews
#   friendliness, completeness  means (1-5) over the reviews that gave one; NULL when none did
#   accurate_share    share of reviewed answers that no reviewer marked wrong (= accuracy with one reviewer each)
#   last_reviewed_at  the newest review's time
REVIEWED_ACCURACY_SQL = f"""
SELECT
    model_version,
    uniqExact(message_id) AS reviewed_answers,
    count() AS reviews,
    uniqExact(reviewer) AS reviewers,
    avg(latest.1) AS accuracy,
    avg(latest.2) AS friendliness,
    avg(latest.3) AS completeness,
    1 - uniqExactIf(message_id, latest.1 = 0) / reviewed_answers AS accurate_share,
    max(reviewed_at) AS last_reviewed_at
FROM (
    SELECT
        message_id,
        reviewer,
        any(model_version) AS model_version,
        argMax(tuple(accuracy, friendliness, completeness), occurred_at) AS latest,
        max(occurred_at) AS reviewed_at
    FROM {DB}.human_reviews FINAL
    GROUP BY message_id, reviewer
)
GROUP BY model_version"""


def reviewed_accuracy_statements() -> tuple[str, ...]:
    """`CREATE OR REPLACE VIEW flywheel.v_reviewed_accuracy` (migration 7)."""
    return (f"CREATE OR REPLACE VIEW {DB}.v_reviewed_accuracy AS\n{REVIEWED_ACCURACY_SQL.strip()}",)


# Retrieval-augmented answers per model version (migration 8 of schemas.ddl), from the gateway's lookups
# (retrievals) and the answers they fed (chat_responses with sources):
#   retrievals       lookups made;  failed: lookups that errored (the answer went without passages)
#   hit_rate         share of ok lookups that returned at least one passage
#   answers          answers of the version that went through retrieval (a Retrieval event names them)
#   with_source      share of those answers that were given at least one passage (`sources` not empty)
#   thumbs_down_rate thumbs-down over rated answers among them
#   retrieval_p50_ms, retrieval_p99_ms  lookup latency
RETRIEVAL_SQL = f"""
SELECT
    q.model_version AS model_version,
    count() AS retrievals,
    countIf(q.status != 'ok') AS failed,
    if(retrievals - failed = 0, NULL, countIf(q.status = 'ok' AND q.sources != '[]') / (retrievals - failed))
        AS hit_rate,
    uniqExactIf(q.message_id, r.message_id != '') AS answers,
    if(answers = 0, NULL, uniqExactIf(q.message_id, r.sources != '[]' AND r.message_id != '') / answers)
        AS with_source,
    countIf(f.verdict != '') AS rated,
    if(rated = 0, NULL, countIf(f.verdict = 'thumbs_down') / rated) AS thumbs_down_rate,
    quantile(0.5)(q.latency_ms) AS retrieval_p50_ms,
    quantile(0.99)(q.latency_ms) AS retrieval_p99_ms
FROM {DB}.retrievals AS q FINAL
LEFT JOIN (SELECT message_id, sources FROM {DB}.chat_responses FINAL) AS r ON r.message_id = q.message_id
LEFT JOIN {DB}.v_feedback_verdicts AS f ON f.message_id = q.message_id
GROUP BY q.model_version"""

# Code completions per model version (migration 8): an editor accepts (thumbs_up) or rejects (thumbs_down) a
# completion; `feedback.kind` = 'completion'. The latest verdict of a completion counts.
#   completions  answers on the completion routes (/v1/completions, /code/complete)
#   judged       completions the editor accepted or rejected;  accepted, rejected: their counts
#   acceptance_rate  accepted / judged (NULL when none was judged)
CODE_ACCEPTANCE_SQL = f"""
SELECT
    r.model_version AS model_version,
    count() AS completions,
    countIf(v.verdict != '') AS judged,
    countIf(v.verdict = 'thumbs_up') AS accepted,
    countIf(v.verdict = 'thumbs_down') AS rejected,
    if(judged = 0, NULL, accepted / judged) AS acceptance_rate
FROM {DB}.chat_responses AS r FINAL
LEFT JOIN (
    SELECT message_id, argMax(feedback, occurred_at) AS verdict
    FROM {DB}.feedback FINAL
    WHERE kind = 'completion'
    GROUP BY message_id
) AS v ON v.message_id = r.message_id
WHERE r.route IN ('completion', 'code') AND r.status = 'ok'
GROUP BY r.model_version"""


def retrieval_and_code_statements() -> tuple[str, ...]:
    """`CREATE OR REPLACE VIEW flywheel.v_retrieval` and `flywheel.v_code_acceptance` (migration 8)."""
    return (
        f"CREATE OR REPLACE VIEW {DB}.v_retrieval AS\n{RETRIEVAL_SQL.strip()}",
        f"CREATE OR REPLACE VIEW {DB}.v_code_acceptance AS\n{CODE_ACCEPTANCE_SQL.strip()}",
    )
