"""`flywheel`: the command line of the platform. Each subcommand is a thin shell over a library call.

Reads settings from FLYWHEEL_* environment variables or `.env` (see `schemas.settings`).
"""

from __future__ import annotations

import logging
import sys

import click
from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table

from deploy import stack
from deploy.errors import StackError
from schemas.logs import setup_logging
from schemas.settings import CommonSettings

console = Console(stderr=False)
errors = Console(stderr=True)


def _status_table(rows: list[stack.ServiceStatus]) -> Table:
    table = Table("service", "pid", "state")
    table.add_column("address", overflow="fold")
    table.add_column("healthy")
    table.add_column("detail", overflow="fold")
    for row in rows:
        healthy = "[green]yes[/]" if row.healthy else "[red]no[/]"
        table.add_row(row.name, str(row.pid or "-"), row.state, row.address, healthy, row.detail)
    return table


def _progress_view(rows: list[stack.ServiceStatus]):
    waiting = [r.name for r in rows if not r.healthy]
    text = f"waiting for {', '.join(waiting)}" if waiting else "all healthy"
    table = _status_table(rows)
    spinner = Spinner("dots", text=text)
    grid = Table.grid()
    grid.add_row(spinner)
    grid.add_row(table)
    return grid


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """flywheel: continuous-learning LLM serving on a message bus."""
    settings = CommonSettings()
    setup_logging("WARNING" if settings.log_level.upper() == "INFO" else settings.log_level, json_lines=False)
    # Health probes of a service still starting make these retry and warn; the table says it better.
    # (clickhouse-connect sets the "urllib3" logger's level when imported, so quiet the child.)
    for noisy in ("urllib3.connectionpool", "clickhouse_connect"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    ctx.obj = settings


@main.command()
@click.option("--infra-only", is_flag=True, help="Only the broker, Redis and the store; no workers.")
@click.option(
    "--timeout", default=300.0, show_default=True, help="Seconds to wait for every service to be healthy."
)
@click.pass_obj
def up(settings: CommonSettings, infra_only: bool, timeout: float) -> None:
    """Start the local stack under supervisord and wait until it is healthy."""
    if not infra_only:
        _ensure_base_model()
    try:
        with Live(Spinner("dots", text="starting supervisord"), console=console, transient=True) as live:
            result = stack.up(
                settings, infra_only, timeout, progress=lambda rows: live.update(_progress_view(rows))
            )
    except StackError as exc:
        errors.print(f"[red]flywheel up failed:[/] {exc}", markup=True, highlight=False)
        sys.exit(1)
    console.print(_status_table(result.statuses))
    if result.already_running:
        console.print("stack was already running")
    console.print(
        f"topics created: {len(result.topics_created)}; logs in {stack.layout_for(settings).logs_dir}"
    )


def _ensure_base_model() -> None:
    """The local stack serves the tiny model unless FLYWHEEL_BASE_MODEL names another directory."""
    from inference.workers import WorkerSettings

    worker_settings = WorkerSettings()
    model_dir = worker_settings.base_model_dir
    if (model_dir / "config.json").is_file():
        return
    if worker_settings.base_model is not None:
        errors.print(f"[red]FLYWHEEL_BASE_MODEL={model_dir} holds no Hugging Face model (config.json)[/]")
        sys.exit(1)
    from retrain.tiny_model import build_tiny_model

    with console.status(f"building the tiny model in {model_dir}"):
        build_tiny_model(model_dir)
    console.print(f"built the tiny model in {model_dir}")


@main.command()
@click.pass_obj
def status(settings: CommonSettings) -> None:
    """Show each service's process and health; exit 0 only when all are healthy."""
    rows = stack.status(settings)
    console.print(_status_table(rows))
    sys.exit(0 if rows and all(r.healthy for r in rows) else 1)


@main.command()
@click.option("--timeout", default=30.0, show_default=True, help="Seconds before leftovers get SIGKILL.")
@click.pass_obj
def down(settings: CommonSettings, timeout: float) -> None:
    """Stop every service and supervisord; nothing is left running."""
    try:
        result = stack.down(settings, timeout)
    except StackError as exc:
        errors.print(f"[red]flywheel down failed:[/] {exc}", highlight=False)
        sys.exit(1)
    if not result.was_running:
        console.print("nothing was running")
        return
    console.print(f"stopped {len(result.stopped_pids)} processes")
    if result.killed_pids:
        console.print(f"[yellow]killed after timeout:[/] {result.killed_pids}")


def _register() -> None:
    from deploy.cli_analytics import report_command, sql_command
    from deploy.cli_config import config_command
    from deploy.cli_data import db, schemas, topics
    from inference.controller_cli import deploy_group
    from producers.cli import produce_command
    from retrain.cli import models_group, train_group
    from retrain.launch import launch_command

    # `models promote|rollback` are the controller's: they route traffic and publish the event.
    for name in ("promote", "rollback"):
        models_group.add_command(deploy_group.commands[name])
    train_group.add_command(launch_command)
    commands = (topics, db, schemas, produce_command, sql_command, report_command, model, models_group, train_group,
                config_command)
    for command in commands:
        main.add_command(command)
    _register_demo()


def _register_demo() -> None:
    from deploy.demo import demo_command

    main.add_command(demo_command)


@click.group()
def model() -> None:
    """Model directories: build the tiny local model."""


def _model_commands() -> None:
    from retrain.tiny_model import init_tiny_command

    model.add_command(init_tiny_command)


_model_commands()
_register()
