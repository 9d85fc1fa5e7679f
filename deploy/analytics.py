"""Analyst queries over the views of `schemas/views.py`, returning plain data (no printing).

Every function takes a clickhouse-connect client: the HTTP client of `connect(settings.query_url)`
(embedded store's read-only endpoint, or a ClickHouse server), or an in-process chdb:// client
(tests, notebooks on a copy of the data). One code path for all.
`since` is an aware UTC datetime (None: all time); `parse_since("1h")` turns CLI text into one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from pydantic import Field

from deploy.abtest import ABComparison, Arm, compare_arms
from schemas import store
from schemas.settings import CommonSettings
from schemas.views import DB, ab_summary_sql, dead_letters_sql, top_questions_sql


class AnalyticsSettings(CommonSettings):
    # Significance level of the A/B tests (thumbs-down z-test, latency Welch t-test).
    ab_alpha: float = Field(0.05, gt=0, lt=1, description="A/B significance level")
    # Below this many observations per arm (rated answers; successful answers) a test says "insufficient data".
    ab_min_samples: int = Field(30, ge=2, description="A/B minimum sample size per arm and test")


class AnalyticsError(RuntimeError):
    """The store could not answer; the message is fit for people (ClickHouse's own text included)."""


class StoreUnavailable(AnalyticsError):
    pass


class QueryFailed(AnalyticsError):
    pass


_CLICKHOUSE_MESSAGE = re.compile(r"Code: \d+\..*", re.DOTALL)
_OS_ERROR = re.compile(r"\[Errno -?\d+\] ([^\"')]+)")  # "[Errno 111] Connection refused" in urllib3's text


def clickhouse_message(exc: Exception) -> str:
    """ClickHouse's own message ("Code: N. DB::Exception: ...") out of a driver error, else the error."""
    text = str(exc)
    match = _CLICKHOUSE_MESSAGE.search(text)
    return (match.group(0) if match else text).strip()


def connect(url: str):
    """A clickhouse-connect client for `url` (http(s)://host:port or chdb://PATH); StoreUnavailable if not."""
    try:
        return store.connect(url)
    except Exception as exc:
        reason = _OS_ERROR.search(str(exc))
        detail = reason.group(1) if reason else clickhouse_message(exc)
        hint = " (is the stack up? `flywheel up`)" if url.startswith("http://127.0.0.1") else ""
        raise StoreUnavailable(f"cannot reach the analytics store at {url}: {detail}{hint}") from exc


@dataclass(frozen=True)
class QueryResult:
    columns: tuple[str, ...]
    types: tuple[str, ...]
    rows: list[tuple]


def run_sql(client, sql: str) -> QueryResult:
    """Run one statement and return its columns and rows; QueryFailed carries ClickHouse's message."""
    statement = sql.strip().rstrip(";").strip()
    try:
        result = client.query(statement)
    except Exception as exc:
        raise QueryFailed(clickhouse_message(exc)) from exc
    types = tuple(t.name for t in result.column_types)
    return QueryResult(tuple(result.column_names), types, result.result_rows)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime | None:
    """'90s', '15m', '1h', '2d', '1w' -> that long before `now` (UTC); 'all' -> None."""
    if text.strip().lower() == "all":
        return None
    match = _DURATION.match(text.lower())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 1h, 2d, or all)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return (now or datetime.now(UTC)) - timedelta(seconds=seconds)


def _ts(moment: datetime) -> str:
    """A DateTime64 literal for a datetime (built from a datetime, never from user text)."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return f"toDateTime64('{utc:%Y-%m-%d %H:%M:%S.%f}', 6, 'UTC')"


def _after(column: str, since: datetime | None) -> str:
    return f"{column} >= {_ts(since)}" if since else ""


def _dicts(client, sql: str) -> list[dict]:
    try:
        result = client.query(sql)
    except Exception as exc:
        raise QueryFailed(clickhouse_message(exc)) from exc
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


@dataclass(frozen=True)
class VersionSummary:
    model_version: str
    requests: int
    errors: int
    error_rate: float
    rated: int
    thumbs_up: int
    thumbs_down: int
    thumbs_down_rate: float | None
    ok_requests: int
    latency_mean_ms: float | None
    latency_std_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    first_seen: datetime
    last_seen: datetime

    def arm(self) -> Arm:
        return Arm(
            self.model_version,
            self.rated,
            self.thumbs_down,
            self.ok_requests,
            self.latency_mean_ms,
            self.latency_std_ms,
        )


def version_summaries(client, since: datetime | None = None) -> list[VersionSummary]:
    """Per-version requests, errors, verdicts and latency since `since`, busiest first."""
    sql = ab_summary_sql(_after("occurred_at", since)) + "\nORDER BY requests DESC, model_version"
    return [VersionSummary(**row) for row in _dicts(client, sql)]


def compare(
    client,
    version_a: str,
    version_b: str,
    since: datetime | None = None,
    alpha: float = 0.05,
    min_samples: int = 30,
) -> ABComparison:
    """A/B comparison of two versions over the window (a version without traffic has empty arms)."""
    return _compare(version_summaries(client, since), version_a, version_b, alpha, min_samples)


def _compare(summaries: list[VersionSummary], a: str, b: str, alpha: float, min_samples: int) -> ABComparison:
    arms = {s.model_version: s.arm() for s in summaries}
    empty = Arm("", 0, 0, 0, None, None)
    return compare_arms(
        arms.get(a) or replace(empty, version=a), arms.get(b) or replace(empty, version=b), alpha, min_samples
    )


# metric -> (view, value column); the time series behind the report's plots.
SERIES: dict[str, tuple[str, str]] = {
    "requests_per_second": ("v_requests_per_second", "requests_per_second"),
    "latency_p95_ms": ("v_latency_p95", "latency_p95_ms"),
    "error_rate": ("v_error_rate", "error_rate"),
    "thumbs_down_rate": ("v_thumbs_down_rate", "thumbs_down_rate"),
}


def series(client, metric: str, since: datetime | None = None) -> dict[str, list[tuple[datetime, float]]]:
    """model_version -> [(minute, value)] in time order, for one metric of SERIES."""
    view, column = SERIES[metric]
    condition = f"\nWHERE {_after('minute', since)}" if since else ""
    sql = f"SELECT model_version, minute, {column} FROM {DB}.{view}{condition}\nORDER BY model_version, minute"
    out: dict[str, list[tuple[datetime, float]]] = {}
    for row in _dicts(client, sql):
        out.setdefault(row["model_version"], []).append((row["minute"], row[column]))
    return out


@dataclass(frozen=True)
class QuestionCount:
    question: str
    asks: int
    sessions: int
    last_asked: datetime


def top_questions(client, since: datetime | None = None, limit: int = 10) -> list[QuestionCount]:
    return [QuestionCount(**row) for row in _dicts(client, top_questions_sql(_after("occurred_at", since), limit))]


@dataclass(frozen=True)
class BadCase:
    feedback_at: datetime
    model_version: str
    question: str
    answer: str
    comment: str | None
    correction: str | None
    session_id: str
    message_id: str
    feedback_event_id: object


def bad_cases(client, since: datetime | None = None, limit: int = 10) -> list[BadCase]:
    """The latest thumbs-down answers that came with a comment or a correction."""
    condition = f"\nWHERE {_after('feedback_at', since)}" if since else ""
    sql = f"SELECT * FROM {DB}.v_bad_cases{condition}\nORDER BY feedback_at DESC LIMIT {int(limit)}"
    return [BadCase(**row) for row in _dicts(client, sql)]


@dataclass(frozen=True)
class DeadLetterCount:
    source_topic: str
    error_type: str
    dead_letters: int
    last_seen: datetime
    last_error: str


def dead_letter_counts(client, since: datetime | None = None) -> list[DeadLetterCount]:
    sql = dead_letters_sql(_after("occurred_at", since)) + "\nORDER BY dead_letters DESC, source_topic, error_type"
    return [DeadLetterCount(**row) for row in _dicts(client, sql)]


@dataclass(frozen=True)
class ReportData:
    since: datetime | None
    summaries: list[VersionSummary]
    questions: list[QuestionCount]
    bad_cases: list[BadCase]
    dead_letters: list[DeadLetterCount]
    comparison: ABComparison | None  # the two busiest versions, when there are two
    series: dict[str, dict[str, list[tuple[datetime, float]]]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.summaries or self.questions or self.bad_cases or self.dead_letters)


def collect(
    client,
    since: datetime | None = None,
    alpha: float = 0.05,
    min_samples: int = 30,
    versions: tuple[str, str] | None = None,
) -> ReportData:
    """Everything `flywheel report` shows; `versions` picks the A/B pair (default: the two busiest)."""
    summaries = version_summaries(client, since)
    if versions is None and len(summaries) >= 2:
        versions = (summaries[0].model_version, summaries[1].model_version)
    comparison = _compare(summaries, *versions, alpha, min_samples) if versions else None
    return ReportData(
        since=since,
        summaries=summaries,
        questions=top_questions(client, since),
        bad_cases=bad_cases(client, since),
        dead_letters=dead_letter_counts(client, since),
        comparison=comparison,
        series={metric: series(client, metric, since) for metric in SERIES},
    )
