"""`flywheel report` rendering: rich tables and PNG plots of a `deploy.analytics.ReportData`.

Reads nothing itself (the data comes from `analytics.collect`); writes one PNG per metric of
`analytics.SERIES` into the output folder, one line per model version. A metric with no data in
the window gets no plot, and a plot of that name left by an earlier run is removed, so the folder
never shows a stale or empty picture as if it were current.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display; before pyplot is imported

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from deploy.abtest import ABComparison, TestOutcome  # noqa: E402
from deploy.analytics import SERIES, ReportData  # noqa: E402

# metric -> (title, y label, y scale factor); rates are plotted in percent.
PLOTS: dict[str, tuple[str, str, float]] = {
    "requests_per_second": ("Requests per second", "requests/s (per-minute average)", 1.0),
    "latency_p95_ms": ("p95 latency of successful answers", "ms", 1.0),
    "error_rate": ("Error rate (errors + timeouts)", "% of responses", 100.0),
    "thumbs_down_rate": ("Thumbs-down rate (by minute served)", "% of rated answers", 100.0),
}
assert set(PLOTS) == set(SERIES)

NO_DATA = "no data yet"


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def _clip(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def summary_table(data: ReportData) -> Table:
    table = Table(title="Per model version", title_justify="left")
    for name in (
        "version",
        "requests",
        "errors",
        "error rate",
        "rated",
        "up",
        "down",
        "down rate",
        "mean ms",
        "p50 ms",
        "p95 ms",
        "p99 ms",
    ):
        table.add_column(name, justify="left" if name == "version" else "right")
    for s in data.summaries:
        table.add_row(
            s.model_version,
            str(s.requests),
            str(s.errors),
            _pct(s.error_rate),
            str(s.rated),
            str(s.thumbs_up),
            str(s.thumbs_down),
            _pct(s.thumbs_down_rate),
            _num(s.latency_mean_ms),
            _num(s.latency_p50_ms),
            _num(s.latency_p95_ms),
            _num(s.latency_p99_ms),
        )
    return table


def questions_table(data: ReportData) -> Table:
    table = Table(title="Top questions", title_justify="left")
    for name in ("#", "question", "asks", "sessions", "last asked"):
        table.add_column(name, justify="left" if name in ("question", "last asked") else "right")
    for rank, q in enumerate(data.questions, 1):
        table.add_row(str(rank), _clip(q.question, 80), str(q.asks), str(q.sessions), _when(q.last_asked))
    return table


def bad_cases_table(data: ReportData) -> Table:
    table = Table(
        "when",
        "version",
        "question",
        "answer",
        "comment",
        "correction",
        title="Recent bad cases (thumbs-down with a comment or correction)",
        title_justify="left",
    )
    for case in data.bad_cases:
        table.add_row(
            _when(case.feedback_at),
            case.model_version or "?",
            _clip(case.question, 40),
            _clip(case.answer, 40),
            _clip(case.comment, 40),
            _clip(case.correction, 40),
        )
    return table


def _outcome_row(label: str, outcome: TestOutcome, fmt) -> list[str]:
    return [
        label,
        fmt(outcome.value_a),
        fmt(outcome.value_b),
        f"{outcome.n_a} / {outcome.n_b}",
        _num(outcome.statistic, "{:.2f}"),
        _num(outcome.p_value, "{:.3g}"),
        outcome.verdict,
    ]


def comparison_table(comparison: ABComparison) -> Table:
    table = Table(
        "metric",
        f"A: {comparison.version_a}",
        f"B: {comparison.version_b}",
        "n A / B",
        "z | t",
        "p",
        "verdict",
        title=f"A/B comparison (alpha {comparison.alpha:g}, at least {comparison.min_samples} per arm)",
        title_justify="left",
        caption=comparison.verdict,
        caption_justify="left",
    )
    table.add_row(*_outcome_row("thumbs-down rate (z-test)", comparison.thumbs_down, _pct))
    table.add_row(*_outcome_row("latency ms, ok answers (Welch t)", comparison.latency, _num))
    return table


def dead_letters_table(data: ReportData) -> Table:
    table = Table("topic", "error type", title="Dead letters", title_justify="left")
    table.add_column("count", justify="right")
    table.add_column("last seen")
    table.add_column("last error")
    for d in data.dead_letters:
        table.add_row(d.source_topic, d.error_type, str(d.dead_letters), _when(d.last_seen), _clip(d.last_error, 60))
    return table


def print_report(data: ReportData, console: Console) -> None:
    window = "all time" if data.since is None else f"since {_when(data.since)} UTC"
    console.print(f"[bold]Flywheel report[/], {window}")
    if data.empty:
        console.print(NO_DATA)
        return
    sections = [
        (data.summaries, summary_table),
        (data.questions, questions_table),
        (data.bad_cases, bad_cases_table),
        (data.dead_letters, dead_letters_table),
    ]
    for rows, build in sections:
        table = build(data)
        if rows:
            console.print(table)
        else:
            console.print(f"[bold]{table.title}[/]: none")
    if data.comparison is not None:
        console.print(comparison_table(data.comparison))
    else:
        console.print("[bold]A/B comparison[/]: needs two versions with traffic in the window")


def write_plots(data: ReportData, out_dir: Path) -> list[Path]:
    """One PNG per metric with data; returns the paths written (stale ones of empty metrics removed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, (title, ylabel, scale) in PLOTS.items():
        path = out_dir / f"{metric}.png"
        by_version = {v: points for v, points in data.series.get(metric, {}).items() if points}
        if not by_version:
            path.unlink(missing_ok=True)
            continue
        _plot(path, title, ylabel, scale, by_version)
        written.append(path)
    return written


def _plot(path: Path, title: str, ylabel: str, scale: float, by_version) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    try:
        for version, points in sorted(by_version.items()):
            xs = [minute for minute, _ in points]
            ys = [value * scale if value is not None else float("nan") for _, value in points]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=version)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("minute (UTC)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.legend(title="model version", loc="best", fontsize="small")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
