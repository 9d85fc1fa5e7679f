"""`flywheel produce FILE.jsonl`: replay a JSONL file of events onto their Kafka topics.

Reads FILE; writes each event to its topic (schemas.topics). Prints `sent N, invalid M` and the
bad lines; exits 1 when a line was invalid or an event was not delivered.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from producers.replay import replay_file
from producers.sdk import ChatEventProducer
from producers.settings import ProducerSettings
from schemas.topics import create_topics

MAX_SHOWN = 50


@click.command("produce")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--bootstrap", help="Kafka bootstrap servers (default: FLYWHEEL_KAFKA_BOOTSTRAP).")
@click.option(
    "--create-topics/--no-create-topics",
    "create_topics_",
    default=True,
    show_default=True,
    help="Create missing topics first (a broker may otherwise auto-create them with the wrong layout).",
)
def produce_command(file: Path, bootstrap: str | None, create_topics_: bool) -> None:
    """Replay FILE (JSON lines, one event each) onto the topics of its events."""
    console = Console(stderr=True)
    settings = ProducerSettings()
    if bootstrap:
        settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
    if create_topics_:
        create_topics(settings.kafka_bootstrap)
    producer = ChatEventProducer(settings)
    try:
        result = replay_file(file, producer)
    finally:
        producer.close(strict=False)
    for number, reason in result.errors[:MAX_SHOWN]:
        console.print(f"[red]line {number}[/red]: {reason}", markup=True, highlight=False)
    if len(result.errors) > MAX_SHOWN:
        console.print(f"... and {len(result.errors) - MAX_SHOWN} more invalid lines")
    for failure in result.delivery_errors:
        console.print(f"[red]delivery failed[/red]: {failure}", highlight=False)
    summary = f"sent {result.sent}, invalid {result.invalid}"
    if result.failed:
        summary += f", failed {result.failed}"
    Console().print(summary, style="green" if result.ok else "red")
    if not result.ok:
        raise SystemExit(1)
