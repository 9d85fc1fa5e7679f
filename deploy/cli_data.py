"""`flywheel topics|db|schemas`: topic and table administration, schema export.

Reads settings (Kafka bootstrap, ClickHouse DSN); writes topics, tables, or JSON Schema files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from schemas import store
from schemas.ddl import DATABASE, MIGRATIONS, applied_versions, migrate
from schemas.export import export_json_schemas
from schemas.settings import CommonSettings
from schemas.topics import all_topic_names, create_topics

console = Console()
errors = Console(stderr=True)


@click.group()
def topics() -> None:
    """Kafka topics of the registry (schemas/topics.py)."""


@topics.command("create")
@click.pass_obj
def topics_create(settings: CommonSettings) -> None:
    """Create every topic and its DLQ with explicit partition counts (idempotent)."""
    try:
        created = create_topics(settings.kafka_bootstrap, timeout=15.0)
    except Exception as exc:
        errors.print(f"[red]cannot create topics on {settings.kafka_bootstrap}:[/] {exc}", highlight=False)
        sys.exit(1)
    console.print(f"created {len(created)} topics ({len(all_topic_names()) - len(created)} existed)")


@topics.command("list")
@click.pass_obj
def topics_list(settings: CommonSettings) -> None:
    """Print the registry's topic names, one per line (with their DLQs)."""
    for name in all_topic_names():
        click.echo(name)


@click.group()
def db() -> None:
    """The analytics store's tables (schemas/ddl.py)."""


@db.command("migrate")
@click.pass_obj
def db_migrate(settings: CommonSettings) -> None:
    """Apply the ClickHouse migrations not yet applied (idempotent).

    Embedded mode: while the stack runs, the store process owns the chDB path and applied
    the migrations at its start; this command then reports the versions through its endpoint.
    """
    try:
        client = store.connect(settings.store_dsn)
    except Exception as exc:
        if not settings.embedded_store:
            errors.print(f"[red]cannot reach {settings.store_dsn}:[/] {exc}", highlight=False)
            sys.exit(1)
        _report_from_owner(settings, exc)
        return
    applied = migrate(client, settings.clickhouse_cluster)
    client.close()
    console.print(f"applied {applied or 'nothing'}; database {DATABASE} at version {MIGRATIONS[-1].version}")


def _report_from_owner(settings: CommonSettings, cause: Exception) -> None:
    try:
        client = store.connect(settings.query_url)
        done = applied_versions(client)
    except Exception:
        errors.print(f"[red]cannot open {settings.store_dsn}:[/] {cause}", highlight=False)
        sys.exit(1)
    missing = [m.version for m in MIGRATIONS if m.version not in done]
    if missing:
        errors.print(f"[red]the store process owns the data and lacks migrations {missing}:[/] restart it")
        sys.exit(1)
    console.print(f"the running store owns {settings.store_dsn}; migrations {sorted(done)} are applied")


@click.group()
def schemas() -> None:
    """Event JSON Schemas for clients in other languages."""


@schemas.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def schemas_export(directory: Path) -> None:
    """Write one JSON Schema file per event type into DIRECTORY."""
    for path in export_json_schemas(directory):
        console.print(str(path))


@click.command("topology")
@click.option(
    "--mermaid",
    "mermaid_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the topology as a Mermaid flowchart to this file.",
)
def topology_command(mermaid_path: Path | None) -> None:
    """Services, their consumer groups, and which topics each produces and consumes (schemas/topology.py)."""
    from rich.table import Table

    from schemas import topology

    services = Table(title="services", title_justify="left")
    for column in ("service", "runs", "consumer group", "consumes", "produces", "tables written"):
        services.add_column(column, overflow="fold")
    for s in topology.SERVICES:
        services.add_row(
            s.name,
            f"python -m {s.module}",
            s.group or "-",
            "\n".join(s.consumes) or "-",
            "\n".join(s.produces) or "-",
            "\n".join(s.writes) or "-",
        )
    topics = Table(title="topics", title_justify="left")
    for column in ("topic", "record", "table", "produced by", "consumed by"):
        topics.add_column(column, overflow="fold")
    for row in topology.topic_rows():
        topics.add_row(*row)
    console.print(services)
    console.print(topics)
    if mermaid_path is not None:
        mermaid_path.write_text(topology.mermaid(), encoding="utf-8")
        console.print(f"wrote {mermaid_path}")
