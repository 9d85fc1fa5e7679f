"""The declared topology (schemas/topology.py) is what the code does: each service's subscriptions, the topics it
sends to and the events it builds, read from the code itself."""

from __future__ import annotations

import ast
from pathlib import Path

import click
import pytest

from schemas import topics as registry
from schemas import topology
from schemas.ddl import SINK_LEDGER
from schemas.events import EVENT_TYPES

ROOT = Path(__file__).resolve().parents[2]
EVENTS = {cls.__name__: cls for cls in EVENT_TYPES}


def tree(module: str) -> ast.Module:
    return ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))


def subscribed(module: str) -> set[str]:
    """Topics in `consumer.subscribe([...])` calls, written as registry constants (`RETRAIN_JOBS.name`)."""
    names = set()
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "subscribe" and node.args:
            for element in getattr(node.args[0], "elts", ()):
                if isinstance(element, ast.Attribute) and isinstance(element.value, ast.Name):
                    names.add(getattr(getattr(registry, element.value.id), element.attr))
    return names


def built_events(*modules: str) -> set[str]:
    """Topics of the events these modules construct (`ChatResponse(...)`): what they publish."""
    found = set()
    for module in modules:
        for node in ast.walk(tree(module)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in EVENTS:
                topic = registry.BY_EVENT.get(EVENTS[node.func.id])
                if topic is not None:
                    found.add(topic.name)
    return found


def test_every_topic_has_a_producer_and_a_consumer():
    for name, _, _, producers, consumers in topology.topic_rows():
        assert producers != "-" and consumers != "-", name


def test_consumer_groups_are_the_services_own():
    from consumers.sink import Sink
    from streams.settings import StreamSettings

    assert Sink.__init__.__defaults__[0] == topology.SINK_GROUP
    assert StreamSettings(streams_agents="metrics,pairs,trigger").app_id == topology.STREAMS_GROUP
    assert [s.group for s in topology.SERVICES if s.group] == [
        topology.SINK_GROUP,
        topology.STREAMS_GROUP,
        topology.RETRAIN_GROUP,
        topology.CONTROLLER_GROUP,
    ]


def test_the_sink_reads_every_topic_and_dead_letters_to_their_dlqs():
    from consumers.routes import routes

    store = topology.BY_SERVICE["store"]
    table = routes()
    assert set(table) == set(store.consumes)
    assert {r.dlq for r in table.values() if r.dlq} == set(store.produces)
    assert {r.table for r in table.values()} | {SINK_LEDGER} <= set(store.writes)


def test_the_streams_agents_read_and_send_what_is_declared():
    import streams.app as app

    streams = topology.BY_SERVICE["streams"]
    sources = {name for agent in app.app.agents.values() for name in agent.channel.topics}
    assert sources == set(streams.consumes)
    senders = {  # `ch.<channel>.send(...)` in every agent group
        node.func.value.attr
        for group in ("metrics", "pairs", "trigger")
        for node in ast.walk(tree(f"streams.agents.{group}"))
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", None) == "send"
        and isinstance(node.func.value, ast.Attribute)
    }
    assert len(senders) >= 5
    sent = {name for sender in senders for name in getattr(app.channels, sender).topics}
    assert sent == set(streams.produces)


def test_the_workers_subscribe_and_publish_what_is_declared():
    retrain, controller = topology.BY_SERVICE["retrain"], topology.BY_SERVICE["controller"]
    assert subscribed("retrain.worker") == set(retrain.consumes)
    assert built_events("retrain.worker") == set(retrain.produces)
    assert subscribed("inference.controller.service") == set(controller.consumes)
    assert built_events("inference.controller.service", "inference.controller.deployer") == set(controller.produces)


def test_the_gateway_publishes_what_is_declared():
    assert built_events("inference.gateway.serving", "inference.gateway.turns", "inference.gateway.rag") == set(
        topology.BY_SERVICE["gateway"].produces
    )


def test_the_commands_publish_what_is_declared():
    for command in topology.COMMANDS:
        assert built_events(*command.modules) == set(command.produces), command.name
    assert {t for c in topology.COMMANDS for t in c.produces} <= {t.name for t in registry.TOPICS}


def test_the_declared_commands_exist():
    from deploy.cli import main

    for command in topology.COMMANDS:
        group = main
        for word in command.name.split()[1:]:
            assert isinstance(group, click.Group) and word in group.commands, command.name
            group = group.commands[word]


def test_mermaid_names_every_service_and_topic():
    text = topology.mermaid()
    assert text.startswith("flowchart LR")
    for s in topology.SERVICES:
        assert f"{s.name}[{s.name}]" in text
    for c in topology.COMMANDS:
        assert f'[["{c.name}"]]' in text
    for t in registry.TOPICS:
        assert f"([{t.name}])" in text


def test_internal_topics_carry_frozen_models_checked_when_read():
    from pydantic import ValidationError

    from schemas.internal import TICK, TriggerInput

    for t in topology.INTERNAL_TOPICS:
        assert t.record is bytes or t.record.model_config["frozen"], t.name
    assert TriggerInput.model_validate_json(TICK.model_dump_json()) == TICK
    with pytest.raises(ValidationError):
        TriggerInput.model_validate_json(b'{"kind": "jobs"}')
    with pytest.raises(ValidationError):  # an unknown field is refused, not carried along
        TriggerInput.model_validate_json(b'{"kind": "tick", "extra": 1}')
