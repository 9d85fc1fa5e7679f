"""`flywheel review` on the stack: a pending correction is listed, approved once (published again as "approved"
through the broker and stored by the sink), and then no longer pending; unknown or decided pairs are refused."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from click.testing import CliRunner

from deploy.cli import main
from schemas import store
from schemas.events import ChatMessage, DPOPair
from tests.conftest import settings_env
from tests.integration.streams_worker import produce

pytestmark = pytest.mark.integration


def pending_pair(question: str) -> DPOPair:
    return DPOPair(
        pair_id=str(uuid.uuid4()),
        base_model="tiny",
        model_version="tiny",
        prompt=[ChatMessage(role="user", content=question)],
        chosen="Kettles cost 39 euros.",
        rejected="Please see the help centre.",
        source="correction",
        session_id="s-review",
        message_id=f"m-{uuid.uuid4().hex[:8]}",
        feedback_event_id=uuid.uuid4(),
        user_id="alice",
        review="pending",
    )


def reviews(stack, pair_id: str) -> list[str]:
    client = store.connect(stack.query_url)
    rows = client.query(
        "SELECT review FROM flywheel.dpo_pairs FINAL WHERE pair_id = %(p)s ORDER BY occurred_at", {"p": pair_id}
    ).result_rows
    return [r[0] for r in rows]


def wait_reviews(stack, pair_id: str, wanted: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := reviews(stack, pair_id)) != wanted:
        assert time.monotonic() < deadline, f"store has {got} for {pair_id}, wanted {wanted}"
        time.sleep(0.5)


def test_a_correction_waits_until_a_person_approves_it(stack):
    env = settings_env(stack)
    pair, other = pending_pair("What do kettles cost?"), pending_pair("Do you ship to Norway?")
    produce(stack.kafka_bootstrap, [pair, other])
    wait_reviews(stack, pair.pair_id, ["pending"])
    wait_reviews(stack, other.pair_id, ["pending"])

    listed = CliRunner().invoke(main, ["review", "list", "--limit", "1000", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    shown = {row["pair_id"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert shown[pair.pair_id]["prompt"][-1]["content"] == "What do kettles cost?"
    assert shown[pair.pair_id]["chosen"] == pair.chosen and shown[pair.pair_id]["user_id"] == "alice"
    table = CliRunner().invoke(main, ["review", "list"], env=env)
    assert table.exit_code == 0 and "waiting for review" in table.stdout, table.output

    approved = CliRunner().invoke(main, ["review", "approve", pair.pair_id], env=env)
    assert approved.exit_code == 0 and "approved 1 pair" in approved.stdout, approved.output
    rejected = CliRunner().invoke(main, ["review", "reject", other.pair_id], env=env)
    assert rejected.exit_code == 0, rejected.output
    wait_reviews(stack, pair.pair_id, ["pending", "approved"])
    wait_reviews(stack, other.pair_id, ["pending", "rejected"])

    listed = CliRunner().invoke(main, ["review", "list", "--limit", "1000", "--json"], env=env)
    assert pair.pair_id not in listed.stdout and other.pair_id not in listed.stdout
    again = CliRunner().invoke(main, ["review", "approve", pair.pair_id, "no-such-pair"], env=env)
    assert again.exit_code == 1 and pair.pair_id in again.output and "no-such-pair" in again.output
    assert reviews(stack, pair.pair_id) == ["pending", "approved"]  # nothing published by a refused command
