"""Analyst views against a real chDB (in-process, temp path): the numbers equal what was inserted.

The data (tests/analytics_data.py) includes duplicate deliveries of responses and feedback, a
changed verdict, an old version outside the window and dead letters.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import clickhouse_connect
import numpy as np
import pytest
from scipy import stats

from deploy import analytics
from deploy.abtest import INSUFFICIENT, SIGNIFICANT
from schemas.ddl import DATABASE, migrate
from schemas.views import VIEWS
from tests.analytics_data import V0, V1, V2, build, load
from tests.manifests import clickhouse_sql, panel_targets

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    # One chDB path per process at a time: this client is closed before the next module opens its own.
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('chdb-views')}")
    migrate(client)
    dataset = build()
    load(client, dataset)
    yield client, dataset
    client.close()


def _rows(client, sql: str) -> list[dict]:
    result = client.query(sql)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def test_every_view_exists_and_answers(loaded):
    client, _ = loaded
    tables = {row[0] for row in client.query(f"SHOW TABLES FROM {DATABASE}").result_rows}
    assert set(VIEWS) <= tables
    # the analytics data set covers every view: each answers with rows
    empty = [name for name in VIEWS if not client.query(f"SELECT count() FROM {DATABASE}.{name}").result_rows[0][0]]
    assert empty == []


def test_requests_per_second_per_minute(loaded):
    client, data = loaded
    rows = _rows(client, f"SELECT * FROM {DATABASE}.v_requests_per_second WHERE model_version != '{V0}'")
    got = {(r["model_version"], _utc(r["minute"])): r["requests"] for r in rows}
    assert got == dict(data.expected.per_minute)  # duplicates counted once
    assert all(r["requests_per_second"] == pytest.approx(r["requests"] / 60) for r in rows)


def test_error_rate_per_version(loaded):
    client, data = loaded
    rows = _rows(
        client,
        f"SELECT model_version, sum(requests) AS n, sum(errors + timeouts) AS failed "
        f"FROM {DATABASE}.v_error_rate GROUP BY model_version",
    )
    got = {r["model_version"]: (r["n"], r["failed"]) for r in rows}
    for version in (V1, V2):
        assert got[version] == (data.expected.requests[version], data.expected.errors[version])


def test_thumbs_down_rate_is_exact_and_uses_the_latest_verdict(loaded):
    client, data = loaded
    rows = _rows(
        client,
        f"SELECT model_version, sum(thumbs_down) AS down, sum(rated) AS rated "
        f"FROM {DATABASE}.v_thumbs_down_rate GROUP BY model_version",
    )
    got = {r["model_version"]: r["down"] / r["rated"] for r in rows}
    for version in (V1, V2):
        verdicts = data.expected.verdicts[version]
        assert got[version] == verdicts.count("thumbs_down") / len(verdicts)
    assert got[V1] == 0.4 and got[V2] == 6 / 61  # 61 rated: the changed mind counts once, as thumbs-up
    first = _rows(
        client,
        f"SELECT thumbs_down_rate FROM {DATABASE}.v_thumbs_down_rate "
        f"WHERE model_version = '{V2}' ORDER BY minute LIMIT 1",
    )
    assert first[0]["thumbs_down_rate"] == 0.1


def test_p95_latency_matches_numpy_per_minute(loaded):
    client, data = loaded
    rows = _rows(client, f"SELECT * FROM {DATABASE}.v_latency_p95 WHERE model_version != '{V0}'")
    assert len(rows) == len(data.expected.ok_latencies_per_minute)
    for r in rows:
        latencies = data.expected.ok_latencies_per_minute[(r["model_version"], _utc(r["minute"]))]
        assert r["requests"] == len(latencies)
        # quantile() samples a reservoir of 8192: exact (linear interpolation) below that size.
        assert r["latency_p95_ms"] == pytest.approx(np.percentile(latencies, 95), rel=1e-3)
        assert r["latency_mean_ms"] == pytest.approx(np.mean(latencies))


def test_top_questions_are_normalized_and_ordered(loaded):
    client, data = loaded
    rows = _rows(client, f"SELECT question, asks FROM {DATABASE}.v_top_questions")
    assert [(r["question"], r["asks"]) for r in rows] == data.expected.top_questions
    assert rows[0]["question"] == "where is my order?"  # two spellings folded into one


def test_bad_cases_join_answer_and_question(loaded):
    client, data = loaded
    rows = _rows(client, f"SELECT * FROM {DATABASE}.v_bad_cases")
    assert {r["message_id"] for r in rows} == data.expected.bad_case_messages | data.expected.old_bad_case_messages
    assert len(rows) == len({r["feedback_event_id"] for r in rows})  # duplicates once
    case = next(r for r in rows if r["message_id"] == f"{V1}-m1")
    assert case["model_version"] == V1
    assert case["answer"] == f"answer 1 of {V1}"
    assert case["correction"] == "the right answer 1"
    assert case["question"] == "where is my order?"  # request 1 asked "Where is my order?"
    assert all(r["question"] and r["answer"] for r in rows)


def test_ab_summary_and_windowed_summaries(loaded):
    client, data = loaded
    all_time = {r["model_version"]: r for r in _rows(client, f"SELECT * FROM {DATABASE}.v_ab_summary")}
    assert set(all_time) == {V0, V1, V2}
    windowed = analytics.version_summaries(client, since=datetime.now(UTC) - timedelta(hours=1))
    assert [s.model_version for s in windowed] == [V1, V2]  # busiest first; v0 is two days old
    for s in windowed:
        latencies = data.expected.ok_latencies[s.model_version]
        assert s.requests == data.expected.requests[s.model_version] == all_time[s.model_version]["requests"]
        assert s.ok_requests == len(latencies)
        assert s.latency_mean_ms == pytest.approx(np.mean(latencies))
        assert s.latency_std_ms == pytest.approx(np.std(latencies, ddof=1))


def test_compare_matches_scipy_on_the_raw_values(loaded):
    client, data = loaded
    result = analytics.compare(client, V1, V2, since=datetime.now(UTC) - timedelta(hours=1))
    welch = stats.ttest_ind(data.expected.ok_latencies[V1], data.expected.ok_latencies[V2], equal_var=False)
    assert result.latency.p_value == pytest.approx(welch.pvalue, rel=1e-6)
    assert result.latency.statistic == pytest.approx(welch.statistic, rel=1e-6)
    assert result.latency.verdict == SIGNIFICANT and result.latency.better == "b"
    assert (result.thumbs_down.value_a, result.thumbs_down.n_a) == (0.4, 100)
    assert result.thumbs_down.verdict == SIGNIFICANT and result.thumbs_down.better == "b"
    # The old version has 5 rated answers: too few.
    assert analytics.compare(client, V1, V0).thumbs_down.verdict == INSUFFICIENT


def test_dead_letters_and_window(loaded):
    client, data = loaded
    counts = analytics.dead_letter_counts(client)
    assert {(d.source_topic, d.error_type): d.dead_letters for d in counts} == dict(data.expected.dead_letters)
    assert analytics.dead_letter_counts(client, since=datetime.now(UTC) + timedelta(minutes=1)) == []


@pytest.mark.parametrize("title,sql", list(panel_targets("clickhouse")), ids=lambda v: v[:40])
def test_every_dashboard_query_runs_on_the_analyst_tables(loaded, title, sql):
    client, _ = loaded
    rows = _rows(client, clickhouse_sql(sql))
    if "v_thumbs_down_rate" in sql:  # the data set has rated answers (no windows, no jobs)
        assert rows, title
