"""`flywheel`: the command line of the platform. Each subcommand is a thin shell over a library call.

Reads settings from FLYWHEEL_* environment variables or `.env` (see `schemas.settings`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table

from deploy import stack
from deploy.errors import StackError
from schemas.logs import setup_logging
from schemas.settings import CommonSettings
from schemas.topology import SINK_GROUP

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
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for every service to be healthy.")
@click.pass_obj
def up(settings: CommonSettings, infra_only: bool, timeout: float) -> None:
    """Start the local stack under supervisord and wait until it is healthy."""
    if not infra_only:
        _ensure_base_model()
        _ensure_production_version()
    try:
        with Live(Spinner("dots", text="starting supervisord"), console=console, transient=True) as live:
            result = stack.up(settings, infra_only, timeout, progress=lambda rows: live.update(_progress_view(rows)))
    except StackError as exc:
        errors.print(f"[red]flywheel up failed:[/] {exc}", markup=True, highlight=False)
        sys.exit(1)
    console.print(_status_table(result.statuses))
    if not infra_only:
        _route_production_version()
    if result.already_running:
        console.print("stack was already running")
    console.print(f"topics created: {len(result.topics_created)}; logs in {stack.layout_for(settings).logs_dir}")


def _ensure_base_model() -> None:
    """Build the served base model's directory when missing (SmolLM2 from its wheel by default)."""
    from inference.worker.spec import WorkerSettings
    from retrain.base_model import BaseModelError, ensure_base_model

    worker_settings = WorkerSettings()
    model_dir = worker_settings.base_model_dir
    if (model_dir / "config.json").is_file():
        return
    try:
        with console.status(f"building the base model {worker_settings.served_model_name} in {model_dir}"):
            ensure_base_model(worker_settings)
    except BaseModelError as exc:
        errors.print(f"[red]{exc}[/]")
        sys.exit(1)
    console.print(f"built the base model {worker_settings.served_model_name} in {model_dir}")


def _ensure_production_version() -> None:
    """Train the first production version (SFT on the demo shop) when the alias has none."""
    from retrain.bootstrap import ensure_production
    from retrain.settings import RetrainSettings

    settings = RetrainSettings()
    version = ensure_production(settings, show_progress=True)
    if version is not None:
        seconds = version.metadata["training"]["seconds"]
        console.print(f"trained {version.name} (SFT, {seconds:.0f} s), now the production version")


def _route_production_version() -> None:
    """A stack that starts with no routes serves the registry's production version (when there is one)."""
    import asyncio

    from inference.controller.cli import with_deployer
    from inference.controller.operator import promote_now
    from inference.keys import ROUTES_KEY
    from retrain.registry import Registry
    from retrain.settings import RetrainSettings

    settings = RetrainSettings()
    registry = Registry(settings.registry_dir)
    current = registry.current(settings.model_alias)
    if current is None:
        return
    import redis

    if redis.Redis.from_url(settings.redis_dsn).hlen(ROUTES_KEY.format(alias=settings.model_alias)):
        return  # routed already (a restart): the controller's state stands
    path = str(registry.show(current).path)
    asyncio.run(with_deployer(lambda d: promote_now(d, settings.model_alias, current, "stack start", path)))
    console.print(f"{settings.model_alias} routed to {current}")


@main.command()
@click.pass_obj
def status(settings: CommonSettings) -> None:
    """Show each service's process and health; exit 0 only when all are healthy."""
    rows = stack.status(settings)
    console.print(_status_table(rows))
    _print_serving(settings)
    sys.exit(0 if rows and all(r.healthy for r in rows) else 1)


@click.command("show")
@click.argument("version")
def show_command(version: str) -> None:
    """The metadata of VERSION (e.g. support@v2) as JSON, with its live weight and rollout (`serving`)."""
    import json

    import redis

    from inference.controller.cli import live_state
    from retrain.cli import version_metadata

    metadata = version_metadata(version)
    try:
        state = live_state(CommonSettings().redis_dsn, version.rpartition("@")[0])
    except redis.RedisError as exc:
        serving: dict = {"error": f"Redis unreachable: {exc}"}
    else:
        rollout = state.get("rollout")
        serving = {"weight": state["routes"].get(version, 0)}
        if rollout and rollout["canary"] == version:
            serving["rollout"] = rollout
    click.echo(json.dumps({**metadata, "serving": serving}, indent=2, ensure_ascii=False))


def _print_serving(settings: CommonSettings) -> None:
    """The alias's routes and running rollout (what a holding canary waits for); nothing when Redis is down."""
    import redis

    from inference.controller.cli import describe, live_state

    try:
        state = live_state(settings.redis_dsn, settings.model_alias)
    except redis.RedisError:
        return
    for line in describe(state):
        console.print(line, highlight=False, soft_wrap=True)


@main.command()
@click.option("--timeout", default=30.0, show_default=True, help="Seconds before leftovers get SIGKILL.")
@click.option(
    "--drain-timeout",
    default=60.0,
    show_default=True,
    help="Seconds the sink and the streams may take to read what is left in the embedded broker (0: none).",
)
@click.pass_obj
def down(settings: CommonSettings, timeout: float, drain_timeout: float) -> None:
    """Stop every service and supervisord; nothing is left running.

    The embedded broker keeps its log in memory: the gateway, the controller and the retrain worker stop first,
    then the sink and the streams read what is left, then everything stops."""
    try:
        with Live(Spinner("dots", text="draining the broker"), console=console, transient=True):
            result = stack.down(settings, timeout, drain_timeout)
    except StackError as exc:
        errors.print(f"[red]flywheel down failed:[/] {exc}", highlight=False)
        sys.exit(1)
    if not result.was_running:
        console.print("nothing was running")
        return
    console.print(f"stopped {len(result.stopped_pids)} processes")
    for group, count in result.unread.items():
        left = "an unknown number of" if count < 0 else f"at least {count}"
        if group == SINK_GROUP:
            console.print(f"[yellow]{left} events were not stored and are lost with the broker's log[/]")
        else:  # stored by the sink; the group's own processing of them (open windows, pending joins) is lost
            console.print(f"[yellow]{group} had not finished {left} events (stored, but not processed by it)[/]")
    if result.killed_pids:
        console.print(f"[yellow]killed after timeout:[/] {result.killed_pids}")


def _register() -> None:
    from deploy.cli_analytics import report_command, sql_command
    from deploy.cli_config import config_command
    from deploy.cli_data import db, schemas, topics, topology_command
    from deploy.cli_kb import kb_group
    from deploy.cli_keys import keys_group
    from deploy.cli_review import review_group
    from deploy.cli_serve import serve_command
    from inference.controller.cli import deploy_group
    from producers.cli import produce_command
    from retrain.cli import models_group, train_group
    from retrain.data.cli import data_group, eval_command
    from retrain.launch import launch_command

    # `models promote|rollback` are the controller's: they route traffic and publish the event.
    for name in ("promote", "rollback"):
        models_group.add_command(deploy_group.commands[name])
    models_group.add_command(show_command)  # the registry's metadata plus the live routes and rollout
    train_group.add_command(launch_command)
    commands = (
        topics,
        topology_command,
        keys_group,
        review_group,
        kb_group,
        data_group,
        eval_command,
        db,
        schemas,
        produce_command,
        sql_command,
        report_command,
        model,
        models_group,
        train_group,
        config_command,
        serve_command,
    )
    for command in commands:
        main.add_command(command)
    _register_demo()


def _register_demo() -> None:
    from deploy.cli_demo import demo_command

    main.add_command(demo_command)


@click.group()
def model() -> None:
    """Model directories: build the base model (SmolLM2) or the tiny test model."""


def _model_commands() -> None:
    from retrain.base_model import init_base_command
    from retrain.tiny_model import init_tiny_command

    model.add_command(init_base_command)
    model.add_command(init_tiny_command)
    model.add_command(merge_command)


@click.command("merge")
@click.argument("adapter")
@click.argument("out_dir", type=click.Path(path_type=Path))
def merge_command(adapter: str, out_dir: Path) -> None:
    """Fold ADAPTER (a version like support@v2, or an adapter directory) into the base model, into OUT_DIR."""
    from retrain.merge import merge_adapter
    from retrain.registry import Registry, RegistryError
    from retrain.settings import RetrainSettings

    settings = RetrainSettings()
    path = Path(adapter)
    if not path.is_dir():
        try:
            path = Registry(settings.registry_dir).show(adapter).path
        except RegistryError as exc:
            raise click.ClickException(str(exc)) from None
    with console.status(f"merging {adapter} into {settings.base_model_dir.name}"):
        merge_adapter(settings.base_model_dir, path, out_dir, adapter)
    console.print(f"merged model in {out_dir}")


_model_commands()
_register()
