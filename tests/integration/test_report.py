"""`flywheel report` and `flywheel sql`.

Report rendering runs on a real in-process chDB (temp path) loaded with tests/analytics_data.py,
first empty, then with data; the CLI runs through click's CliRunner against the `stack` fixture's
store (the read-only ClickHouse HTTP endpoint, migrated with the views at its start).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import clickhouse_connect
import pytest
from click.testing import CliRunner
from rich.console import Console

from deploy import analytics
from deploy.cli import main
from deploy.ports import free_ports
from deploy.report import NO_DATA, PLOTS, print_report, write_plots
from schemas.ddl import migrate
from schemas.views import VIEWS
from tests.analytics_data import V1, V2, build, load
from tests.conftest import settings_env, stack_settings

pytestmark = pytest.mark.integration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # One chDB path per process at a time: closed before another module opens its own.
    c = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('chdb-report')}")
    migrate(c)
    yield c
    c.close()


def _render(data) -> str:
    console = Console(record=True, width=220, color_system=None)
    print_report(data, console)
    return console.export_text()


def test_empty_store_prints_no_data_and_writes_no_plots(client, tmp_path):
    data = analytics.collect(client, since=None)
    assert data.empty and data.comparison is None
    assert NO_DATA in _render(data)
    assert write_plots(data, tmp_path / "report") == []
    assert list((tmp_path / "report").iterdir()) == []


@pytest.fixture(scope="module")
def loaded(client):
    load(client, build())
    return client


def test_report_tables_with_data(loaded):
    data = analytics.collect(loaded, since=datetime.now(UTC) - timedelta(hours=1), min_samples=30)
    text = _render(data)
    for title in ("Per model version", "Top questions", "Recent bad cases", "Dead letters", "A/B comparison"):
        assert title in text
    assert NO_DATA not in text
    assert "where is my order?" in text and "wrong answer" in text and "not_json" in text
    assert "support@v0" not in text  # two days old: outside the window
    assert (data.comparison.version_a, data.comparison.version_b) == (V1, V2)  # the two busiest
    assert f"thumbs-down rate: {V2} is lower" in text  # the verdict line under the A/B table


def test_plots_are_real_pngs_and_stale_ones_go(loaded, tmp_path):
    out = tmp_path / "report"
    data = analytics.collect(loaded, since=datetime.now(UTC) - timedelta(hours=1))
    written = write_plots(data, out)
    assert sorted(p.name for p in written) == sorted(f"{metric}.png" for metric in PLOTS)
    for path in written:
        body = path.read_bytes()
        assert body[:8] == PNG_MAGIC and len(body) > 10_000, path
    # A later window without data removes the pictures instead of leaving stale ones.
    later = analytics.collect(loaded, since=datetime.now(UTC) + timedelta(hours=1))
    assert later.empty
    assert write_plots(later, out) == [] and list(out.iterdir()) == []


@pytest.fixture
def cli(stack):
    env = settings_env(stack)

    def invoke(*args):
        return CliRunner().invoke(main, list(args), env=env)

    return invoke


def test_sql_select_one(cli):
    result = cli("sql", "SELECT 1 AS one, 'a\tb' AS text")
    assert result.exit_code == 0, result.output
    assert "one" in result.stdout and "1 row" in result.stderr


def test_sql_show_tables_lists_the_views(cli):
    result = cli("sql", "SHOW TABLES FROM flywheel", "--format", "tsv")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "name"
    assert set(VIEWS) | {"chat_responses", "feedback"} <= set(lines[1:])


def test_sql_json_lines_and_tsv_escaping(cli):
    query = "SELECT number AS n, toString(number) || '\\t!' AS s, NULL AS nothing FROM numbers(3)"
    result = cli("sql", query, "--format", "json")
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"n": i, "s": f"{i}\t!", "nothing": None} for i in range(3)
    ]
    tsv = cli("sql", query, "--format", "tsv")
    assert tsv.stdout.splitlines() == ["n\ts\tnothing"] + [f"{i}\t{i}\\t!\t\\N" for i in range(3)]


def test_sql_decodes_the_types_the_views_return(cli):
    query = (
        "SELECT toLowCardinality('v1') AS version, toDateTime64('2026-01-02 03:04:05.678', 3, 'UTC') AS at, "
        "CAST(NULL AS Nullable(Float64)) AS missing, quantile(0.95)(number) AS p95, "
        "toUUID('00000000-0000-0000-0000-000000000001') AS id FROM numbers(101)"
    )
    result = cli("sql", query, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "version": "v1",
        "at": "2026-01-02T03:04:05.678000",  # clickhouse-connect gives naive datetimes (UTC here)
        "missing": None,
        "p95": 95.0,
        "id": "00000000-0000-0000-0000-000000000001",
    }


def test_sql_reads_the_views(cli, stack):
    # Other tests send traffic through the same stack, so compare with the store, not with zero.
    query = "SELECT count() AS n FROM flywheel.v_ab_summary"
    result = cli("sql", query, "--format", "json")
    assert result.exit_code == 0, result.output
    direct = clickhouse_connect.get_client(dsn=stack.query_url)
    assert json.loads(result.stdout) == {"n": direct.command(query)}
    direct.close()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("DROP TABLE flywheel.feedback", "DROP statements are not allowed"),
        ("INSERT INTO flywheel.feedback SELECT * FROM flywheel.feedback", "INSERT statements are not allowed"),
        ("SELECT 1; DROP TABLE flywheel.feedback", "only one statement"),
        ("SELECT * FROM flywheel.no_such_table", "UNKNOWN_TABLE"),  # ClickHouse's own message, from the store
        ("SELEC 1", "SELEC statements are not allowed"),
    ],
)
def test_sql_refusals_and_failures_exit_1_with_the_message(cli, query, message):
    result = cli("sql", query)
    assert result.exit_code == 1
    assert message in result.stderr and result.stdout == ""


def test_sql_when_the_store_is_unreachable(tmp_path):
    settings = stack_settings(tmp_path, *free_ports(3))  # nothing listens on these ports
    result = CliRunner().invoke(main, ["sql", "SELECT 1"], env=settings_env(settings))
    assert result.exit_code == 1
    assert "cannot reach the analytics store" in result.stderr


def test_report_on_the_stack_store_with_no_recent_data(cli, tmp_path):
    # Other tests' traffic lands in the shared stack's store, but none is sent while this test runs: a window of
    # the last second is empty once the sink has flushed what came before (tried a few times for that).
    for attempt in range(5):
        out = tmp_path / f"r{attempt}"
        result = cli("report", "--out", str(out), "--since", "1s")
        assert result.exit_code == 0, result.output
        if NO_DATA in result.stdout:
            break
        time.sleep(2)
    assert NO_DATA in result.stdout, result.stdout
    assert not out.exists() or list(out.iterdir()) == []


def test_report_refuses_a_bad_window(cli):
    result = cli("report", "--since", "yesterday")
    assert result.exit_code == 2 and "not a duration" in result.output
