"""A `flywheel demo` report (deploy/demo_report.py's dict) as tables on the console and in report.md, as
report.json, and as PNG plots: requests/s, thumbs-down rate and routing weight per version over the run.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from schemas.views import LOOP_STAGES


def _f(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _clip(text: str | None, width: int = 50) -> str:
    if not text:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def tables(report: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by the console and report.md."""
    out = []
    o = report["outcome"]
    out.append(
        (
            "Outcome",
            ["outcome", "version", "job", "pairs", "reason"],
            [
                [
                    str(o["outcome"] or ("timed out" if o["timed_out"] else "-")),
                    o["version"] or "-",
                    (o["job_id"] or "-")[:12],
                    str(o["pairs"]),
                    o["reason"] or o["note"] or "-",
                ]
            ],
        )
    )
    out.append(
        (
            "Corrected questions, before and after",
            ["question", "correction", "before", "ROUGE-L", "after", "ROUGE-L", "version"],
            [
                [
                    _clip(r["question"], 40),
                    _clip(r["correction"], 40),
                    _clip(r["before"], 40),
                    _f(r["before_rouge_l"]),
                    _clip(r["after"], 40),
                    _f(r["after_rouge_l"]),
                    r["after_version"] or "-",
                ]
                for r in report["corrections"]
            ],
        )
    )
    u = report["unseen"]
    unseen = "Gaps without their docstring" if report.get("case") == "code" else "Unseen paraphrases"
    out.append(
        (
            f"{unseen}: {u['learned']}/{u['asked']} answered with the correction "
            f"(ROUGE-L >= {u['learned_at']}), share {_pct(u['share'])}",
            ["question", "answer", "ROUGE-L"],
            [[_clip(r["question"], 50), _clip(r["answer"], 50), _f(r["rouge_l"])] for r in u["rows"]],
        )
    )
    r = report.get("retrieval")
    if r:
        out.append(
            (
                "Answers with sources (rag)",
                [
                    "answered",
                    "with a source",
                    "labelled questions",
                    "their page among the sources",
                    "pairs with passages",
                ],
                [
                    [
                        str(r["answered"]),
                        f"{r['with_sources']} ({_pct(r['source_share'])})",
                        str(r["labelled"]),
                        f"{r['hits']} ({_pct(r['hit_rate'])})",
                        f"{r['pairs_with_passages']}/{r['pairs']}",
                    ]
                ],
            )
        )
    stages = report["stages"] or {}
    out.append(
        (
            f"Loop stages of job {(stages.get('job_id') or '-')[:12]} (flywheel.v_loop_stages)",
            ["stage", "at", "seconds from the previous stage"],
            [
                [name, str(stages.get(at) or "-"), _f(stages.get(secs), "{:.1f}") if secs else "-"]
                for name, at, secs in LOOP_STAGES
                if stages.get(at)
            ],
        )
    )
    out.append(
        (
            "Per model version over the run's window",
            ["version", "requests", "req/s", "p95 ms", "error rate", "rated", "down", "down rate"],
            [
                [
                    v["model_version"],
                    str(v["requests"]),
                    _f(v["requests_per_s"]),
                    _f(v["latency_p95_ms"], "{:.0f}"),
                    _pct(v["error_rate"]),
                    str(v["rated"]),
                    str(v["thumbs_down"]),
                    _pct(v["thumbs_down_rate"]),
                ]
                for v in report["versions"]
            ],
        )
    )
    d = report["decision"]
    out.append(
        ("Rollout decision", ["version", "action", "reason"], [[d["version"], d["action"], d["reason"]]] if d else [])
    )
    return out


def print_report(report: dict, console: Console) -> None:
    for title, header, rows in tables(report):
        table = Table(*header, title=title, title_justify="left")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def markdown(report: dict) -> str:
    w = report["window"]
    lines = [f"# Flywheel demo {report['run_id']}", "", f"Window: {w['start']} to {w['end']} (`{w['where']}`)", ""]
    for title, header, rows in tables(report):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.json", out_dir / "report.md"]
    written[0].write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    written[1].write_text(markdown(report), encoding="utf-8")
    return written + write_plots(report, out_dir)


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    plots = (
        ("requests_per_s.png", "Requests per second", "requests/s", report["series"], "requests_per_s", 1.0),
        ("thumbs_down_rate.png", "Thumbs-down rate", "% of rated answers", report["series"], "thumbs_down_rate", 100.0),
        ("canary_weight.png", "Routing weight (canary)", "% of users", report["weights"], "weight", 1.0),
    )
    written = []
    for name, title, ylabel, data, key, scale in plots:
        if not data:
            continue
        fig, ax = plt.subplots(figsize=(8, 4))
        for version, s in sorted(data.items()):
            points = [(t, v * scale) for t, v in zip(s["t"], s[key], strict=True) if v is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                (ax.step if key == "weight" else ax.plot)(
                    xs, ys, label=version, **({"where": "post"} if key == "weight" else {})
                )
        for d in report["deployments"]:
            if d["action"] in ("promoted", "rolled_back"):
                at = datetime.fromisoformat(d["at"]).timestamp() - report["window"]["start_unix"]
                ax.axvline(at, color="green" if d["action"] == "promoted" else "red", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("seconds since the start of the run")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)
    return written
