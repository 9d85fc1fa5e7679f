"""`flywheel demo`: the command and its live view over `deploy.demo.run_demo`, then the report (deploy.demo_report)."""

from __future__ import annotations

from pathlib import Path

import click

from deploy.demo import DemoConfig, DemoError, Progress, run_demo
from deploy.demo_cases import CASES, case_questions
from deploy.demo_traffic import select_corrected


def _view(p: Progress):
    from rich.table import Table

    s = p.state
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("elapsed", f"{p.elapsed_s:.0f} s")
    table.add_row("requests", f"{p.sent} sent, {p.answers} answered, {p.errors} failed")
    table.add_row(
        "feedback", f"[green]{p.thumbs_up} up[/], [red]{p.thumbs_down} down[/] ({p.corrections} with a correction)"
    )
    table.add_row("pairs / job", f"{len(s.pairs)} pairs from this run; job {s.job_id or '-'} {s.job_status or ''}")
    table.add_row("routes", ", ".join(f"{v} {w}%" for v, w in sorted(p.routes.items())) or "-")
    last = s.last_deployment
    table.add_row(
        "last deployment",
        f"{last.action} {last.version}"
        + (f" @{last.weight}%" if last.weight is not None else "")
        + f" {last.reason[:80]}"
        if last
        else "-",
    )
    table.add_row("now", p.note)
    return table


@click.command("demo")
@click.option(
    "--case",
    type=click.Choice(CASES),
    default="support",
    show_default=True,
    help="support: the shop's questions by chat; rag: the same to an alias marked rag, answered with sources; "
    "code: an editor's completions at the gaps of Python snippets, accepted or rejected.",
)
@click.option("--users", type=click.IntRange(min=1), default=20, show_default=True, help="Simulated users.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Requests per second, all users together.",
)
@click.option(
    "--loop-share",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Share of the traffic that asks loop questions (the rest: other intents' test questions).",
)
@click.option(
    "--questions",
    multiple=True,
    metavar="INTENT|QUESTION",
    help="Loop intents (or asked questions; snippet ids for code) whose wrong answers get corrections [default: all].",
)
@click.option(
    "--asked",
    type=click.IntRange(1, 5),
    default=3,
    show_default=True,
    help="Asked questions per loop intent; the rest are the unseen paraphrases.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=1200.0,
    show_default=True,
    help="Seconds to wait for the run's adapter to be promoted or rolled back.",
)
@click.option("--bad", is_flag=True, help="Train an adapter on the run's pairs swapped and roll it out: a rollback.")
@click.option(
    "--bad-pairs",
    type=click.IntRange(min=1),
    default=None,
    help="Pairs the --bad run collects before training [default: the retrain threshold minus one].",
)
@click.option("--alias", default=None, help="Model alias [default: FLYWHEEL_MODEL_ALIAS].")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--temperature",
    type=click.FloatRange(0, 2),
    default=0.0,
    show_default=True,
    help="Sampling temperature of the users' traffic (the after-the-loop questions use 0).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the traffic plan.")
@click.option("--gateway", "gateway_url", default=None, help="Gateway URL [default: http://127.0.0.1:<gateway port>].")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report folder [default: <data_dir>/demo/<run id>].",
)
@click.pass_obj
def demo_command(
    settings,
    case,
    users,
    rate,
    loop_share,
    questions,
    asked,
    timeout,
    bad,
    bad_pairs,
    alias,
    max_tokens,
    temperature,
    seed,
    gateway_url,
    out_dir,
) -> None:
    """Simulated users chat with the running stack and give feedback until the loop promotes (or, with --bad, rolls
    back) an adapter trained from their corrections; then a report of what changed."""
    from datetime import datetime

    from rich.console import Console
    from rich.live import Live

    from deploy import analytics
    from deploy.demo_render import print_report, write_report
    from deploy.demo_report import build_report
    from inference.gateway.settings import GatewaySettings

    console = Console()
    key_file = settings.data_dir / "dev-api-key"
    if not key_file.is_file():
        raise click.ClickException(f"no API key at {key_file}: is the stack up? (`flywheel up`)")
    from streams.settings import StreamSettings

    streams = StreamSettings()
    if not bad and users < streams.streams_retrain_min_users:
        raise click.BadParameter(
            f"a retrain job needs corrections from {streams.streams_retrain_min_users} distinct users "
            "(FLYWHEEL_STREAMS_RETRAIN_MIN_USERS)",
            param_hint="--users",
        )
    if bad and bad_pairs is None:
        bad_pairs = max(1, streams.streams_retrain_threshold - 1)
    config = DemoConfig(
        gateway_url=gateway_url or f"http://127.0.0.1:{GatewaySettings().gateway_port}",
        api_key=key_file.read_text().strip(),
        kafka_bootstrap=settings.kafka_bootstrap,
        redis_url=settings.redis_dsn,
        alias=alias or settings.model_alias,
        case=case,
        users=users,
        rate=rate,
        loop_share=loop_share,
        asked=asked,
        questions=tuple(questions),
        timeout=timeout,
        bad=bad,
        bad_pairs=bad_pairs or 7,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        base_version=settings.served_model_name,
    )
    run_id = datetime.now().strftime("%Y%m%d-%H%M%S") + ("-bad" if bad else "")
    try:
        select_corrected(case_questions(case, asked).asked, questions)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--questions") from exc
    try:
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            run = run_demo(config, on_progress=lambda p: live.update(_view(p)))
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        client = analytics.connect(settings.query_url)
        try:
            report = build_report(run, client, run_id)
        finally:
            client.close()
    except analytics.AnalyticsError as exc:
        raise click.ClickException(str(exc)) from exc
    print_report(report, console)
    written = write_report(report, out_dir or settings.data_dir / "demo" / run_id)
    console.print(f"report: {', '.join(str(p) for p in written)}")
