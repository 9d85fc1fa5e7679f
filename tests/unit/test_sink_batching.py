"""The sink's pure parts: batch cutting, replay plans, tokens, commit positions, rows, error classes."""

from __future__ import annotations

import json

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from consumers.batching import Accumulator, PartitionBuffer, commit_positions, dedup_token
from consumers.routes import dead_letter
from consumers.writer import StoreRejected, StoreUnavailable, classify
from schemas.errors import NotJSON
from schemas.rows import columns, to_row
from tests.examples import examples


def ranges(batches) -> list[tuple[int, int]]:
    return [(b.first, b.last) for b in batches]


def test_token_depends_only_on_the_range():
    assert dedup_token("g", "t", 1, 10, 19) == dedup_token("g", "t", 1, 10, 19)
    assert (
        len(
            {
                dedup_token("g", "t", 1, 10, 19),
                dedup_token("g", "t", 2, 10, 19),
                dedup_token("g", "t", 1, 10, 20),
                dedup_token("h", "t", 1, 10, 19),
            }
        )
        == 4
    )


def test_free_batches_cover_consumed_offsets_contiguously():
    buf = PartitionBuffer("t", 0)
    for offset in range(5, 12):
        buf.add(offset, row=[offset])
    [batch] = buf.take_ready()
    assert (batch.first, batch.last, len(batch.rows)) == (5, 11, 7)
    buf.add(12, dead="x")
    [batch] = buf.take_ready()
    assert (batch.first, batch.last, batch.dead) == (12, 12, ["x"])
    assert buf.size == 0


def test_replay_cuts_at_the_recorded_ranges_whatever_arrives():
    # First run flushed [0,3] and [4,9] (recorded), crashed before committing: the re-read is cut the same way.
    buf = PartitionBuffer("t", 0, plan=[(4, 9), (0, 3)])
    for offset in range(0, 6):
        buf.add(offset, row=[offset])
    assert ranges(buf.take_ready()) == [(0, 3)]  # [4..5] waits for offset 9: a time flush must not cut it
    assert buf.waiting_on_plan
    for offset in range(6, 13):
        buf.add(offset, row=[offset])
    ready = buf.take_ready()
    assert ranges(ready) == [(4, 9), (10, 12)]  # then free cutting again
    assert [len(b.rows) for b in ready] == [6, 3]
    assert [b.planned for b in ready] == [True, False]


def test_plan_ranges_before_the_committed_offset_are_skipped():
    buf = PartitionBuffer("t", 0, plan=[(0, 3), (4, 9)])
    for offset in range(4, 10):  # committed offset was 4
        buf.add(offset, row=[offset])
    assert ranges(buf.take_ready()) == [(4, 9)]


def test_free_batch_stops_before_a_planned_range():
    buf = PartitionBuffer("t", 0, plan=[(5, 6)])
    for offset in range(2, 8):  # a range not in the ledger (never flushed) precedes the planned one
        buf.add(offset, row=[offset])
    assert ranges(buf.take_ready()) == [(2, 4), (5, 6), (7, 7)]


def test_gap_after_planned_range_seals_it():
    buf = PartitionBuffer("t", 0, plan=[(0, 5)])
    for offset in (0, 1, 2, 8):  # 3..5 vanished (compaction, transaction markers)
        buf.add(offset, row=[offset])
    assert ranges(buf.take_ready()) == [(0, 5), (8, 8)]


def test_accumulator_due_on_rows_or_age():
    acc = Accumulator(max_rows=3, max_age_s=1.0)
    assert not acc.due(0.0)
    acc.add("t", 0, 0, now=10.0, row=[0])
    assert not acc.due(10.5)
    assert acc.due(11.0)
    acc.add("t", 1, 0, now=10.6, row=[0])
    acc.add("t", 1, 1, now=10.6, row=[1])
    assert acc.due(10.6)
    ready = acc.take_ready(10.7)
    assert sorted(ranges(ready)) == [(0, 0), (0, 1)]
    assert acc.size == 0 and not acc.due(100.0)


def test_revoked_partition_is_forgotten():
    acc = Accumulator(max_rows=10, max_age_s=1.0)
    acc.assign("t", 0, plan=[(0, 9)])
    acc.add("t", 0, 0, now=0.0, row=[0])
    acc.revoke("t", 0)
    assert acc.size == 0 and acc.take_ready(5.0) == []


def test_commit_positions_are_one_past_the_last_offset():
    buf = PartitionBuffer("t", 0)
    for offset in range(3):
        buf.add(offset, row=[offset])
    other = PartitionBuffer("u", 2)
    other.add(7, row=[7])
    assert commit_positions([*buf.take_ready(), *other.take_ready()]) == {("t", 0): 3, ("u", 2): 8}


@pytest.mark.parametrize("event", examples(), ids=lambda e: e.event_type)
def test_rows_hold_every_field_in_column_order(event):
    dumped = event.model_dump()
    expected = [
        json.dumps(dumped[name], ensure_ascii=False)
        if name in ("messages", "prompt", "sources")
        else getattr(event, name)
        for name in columns(type(event))
    ]
    assert list(to_row(event)) == expected


def test_dead_letter_id_is_a_function_of_the_position():
    a = dead_letter("chat.responses", 1, 42, b"k", b"{bad", NotJSON("not a JSON object"))
    b = dead_letter("chat.responses", 1, 42, b"k", b"{bad", NotJSON("not a JSON object"))
    assert a.event_id == b.event_id
    assert (a.error_type, a.payload, a.key) == ("not_json", "{bad", "k")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (OperationalError("connection refused"), StoreUnavailable),
        (ConnectionRefusedError(111, "refused"), StoreUnavailable),
        (DatabaseError("Code: 252. DB::Exception: Too many parts (TOO_MANY_PARTS)"), StoreUnavailable),
        (DatabaseError("Code: 241. DB::Exception: Memory limit exceeded"), StoreUnavailable),
        (DatabaseError("Code: 60. DB::Exception: Table flywheel.x does not exist. (UNKNOWN_TABLE)"), StoreRejected),
        (DatabaseError("Code: 53. DB::Exception: Type mismatch (TYPE_MISMATCH)"), StoreRejected),
        (TypeError("bad value for column"), StoreRejected),
    ],
)
def test_errors_are_classified(exc, kind):
    assert classify(exc) is kind
