"""`flywheel sql` and `flywheel report`: the analysts' command line.

Reads the analytics store at `settings.query_url`: in embedded mode the store process's read-only
ClickHouse HTTP endpoint (127.0.0.1:<clickhouse_http_port>), with a ClickHouse server the server
itself. Writes PNG plots (report) under --out, default <data_dir>/report/.

    flywheel sql "SELECT model_version, requests FROM flywheel.v_ab_summary"
    flywheel sql --format json "SELECT * FROM flywheel.v_top_questions"     # one JSON object per line
    flywheel report --since 30m --out /tmp/report
"""

from __future__ import annotations

import json
import sys
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from deploy import analytics
from schemas.settings import CommonSettings

console = Console()
errors = Console(stderr=True)


def _fail(message: str) -> None:
    errors.print(f"[red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    sys.exit(1)


def _json_value(value):
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)  # UUID, IP addresses, anything else without a JSON form


def _tsv_value(value) -> str:
    if value is None:
        return "\\N"
    text = _json_value(value) if not isinstance(value, str | int | float | bool) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _print_result(result: analytics.QueryResult, fmt: str) -> None:
    if fmt == "json":
        for row in result.rows:
            click.echo(json.dumps(dict(zip(result.columns, row, strict=True)), default=_json_value, ensure_ascii=False))
    elif fmt == "tsv":
        click.echo("\t".join(result.columns))
        for row in result.rows:
            click.echo("\t".join(_tsv_value(v) for v in row))
    else:
        table = Table(*result.columns)
        for row in result.rows:
            table.add_row(*("NULL" if v is None else str(v) for v in row))
        console.print(table)
        errors.print(f"{len(result.rows)} row{'s' if len(result.rows) != 1 else ''}", highlight=False)


@click.command("sql")
@click.argument("query")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "tsv", "json"]),
    default="table",
    show_default=True,
    help="table: a rich table (row count on stderr); tsv: tab-separated with a header line, "
    "ClickHouse escaping, NULL as \\N; json: one JSON object per row (JSON lines).",
)
@click.pass_obj
def sql_command(settings: CommonSettings, query: str, fmt: str) -> None:
    """Run one read-only SQL statement against the analytics store and print the result.

    Only SELECT, WITH, SHOW, DESCRIBE, EXISTS and EXPLAIN are accepted, in embedded mode and
    against a ClickHouse server alike. Tables and views live in database `flywheel`
    (`SHOW TABLES FROM flywheel`). Exit 1 with ClickHouse's message when the store is
    unreachable or the statement fails.
    """
    from consumers.store_server import read_only_refusal  # the store's own rule; imported late (chDB)

    refusal = read_only_refusal(query)
    if refusal:
        _fail(f"refused: {refusal}")
    try:
        client = analytics.connect(settings.query_url)
        try:
            result = analytics.run_sql(client, query)
        finally:
            client.close()
    except analytics.AnalyticsError as exc:
        _fail(str(exc))
    _print_result(result, fmt)


@click.command("report")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the PNG plots [default: <data_dir>/report].",
)
@click.option(
    "--since", default="1h", show_default=True, help="Window: a duration before now (90s, 30m, 1h, 2d, 1w) or 'all'."
)
@click.option(
    "--compare",
    "versions",
    nargs=2,
    default=None,
    metavar="A B",
    help="Model versions to compare [default: the two busiest in the window].",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Significance level [default: FLYWHEEL_AB_ALPHA, 0.05].",
)
@click.option(
    "--min-samples",
    type=click.IntRange(min=2),
    default=None,
    help="Minimum observations per arm and test [default: FLYWHEEL_AB_MIN_SAMPLES, 30].",
)
@click.pass_obj
def report_command(settings: CommonSettings, out_dir: Path | None, since: str, versions, alpha, min_samples) -> None:
    """Print per-version figures, top questions, bad cases, dead letters and an A/B test; write PNG plots."""
    from deploy.report import print_report, write_plots  # matplotlib is slow to import: only here

    config = analytics.AnalyticsSettings(**settings.model_dump())
    try:
        start = analytics.parse_since(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    try:
        client = analytics.connect(settings.query_url)
        try:
            data = analytics.collect(
                client,
                start,
                alpha=config.ab_alpha if alpha is None else alpha,
                min_samples=config.ab_min_samples if min_samples is None else min_samples,
                versions=tuple(versions) if versions else None,
            )
        finally:
            client.close()
    except analytics.AnalyticsError as exc:
        _fail(str(exc))
    print_report(data, console)
    target = out_dir or settings.data_dir / "report"
    written = write_plots(data, target)
    if written:
        console.print(f"plots: {', '.join(str(p) for p in written)}")
    else:
        console.print(f"no plots written to {target} ({'no data yet' if data.empty else 'no time series'})")
