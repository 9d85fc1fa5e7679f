"""Pairs -> dataset: the held-out split is a function of pair ids only, disjoint and stable."""

import json

import pytest

from retrain.dataset import Pair, heldout_bucket, pairs_from_records, read_pairs_file, split_pairs


def make(n: int, prefix: str = "p") -> list[Pair]:
    return [Pair(f"{prefix}{i}", ({"role": "user", "content": f"q{i}"},), f"good {i}", f"bad {i}") for i in range(n)]


def test_split_deterministic_disjoint_complete():
    pairs = make(200)
    train, heldout = split_pairs(pairs, 0.2)
    again_train, again_heldout = split_pairs(list(reversed(pairs)), 0.2)
    assert {p.pair_id for p in heldout} == {p.pair_id for p in again_heldout}
    assert {p.pair_id for p in train} == {p.pair_id for p in again_train}
    assert not {p.pair_id for p in train} & {p.pair_id for p in heldout}
    assert len(train) + len(heldout) == 200
    assert 20 <= len(heldout) <= 60  # about 20%


def test_adding_pairs_never_moves_a_pair():
    _, heldout_small = split_pairs(make(50), 0.2)
    _, heldout_big = split_pairs(make(50) + make(50, "q"), 0.2)
    assert {p.pair_id for p in heldout_small} <= {p.pair_id for p in heldout_big}


@pytest.mark.parametrize("n", [2, 3, 5])
def test_small_sets_keep_both_sides(n):
    train, heldout = split_pairs(make(n), 0.25)
    assert train and heldout and len(train) + len(heldout) == n


def test_zero_fraction_holds_nothing_out():
    train, heldout = split_pairs(make(10), 0.0)
    assert len(train) == 10 and heldout == []


def test_buckets_spread_evenly_and_depend_on_the_id_only():
    buckets = [heldout_bucket(f"x{i}") for i in range(2000)]
    assert all(0 <= b < 1 for b in buckets)
    # a quarter of the ids below 0.25 (binomial sd ~1%), and as many in each half
    assert 0.22 < sum(b < 0.25 for b in buckets) / len(buckets) < 0.28
    assert 0.46 < sum(b < 0.5 for b in buckets) / len(buckets) < 0.54
    assert heldout_bucket("x7") == buckets[7] and len(set(buckets)) == len(buckets)


def test_records_from_events_and_plain(tmp_path):
    lines = [
        {"pair_id": "a", "prompt": json.dumps([{"role": "user", "content": "hi"}]), "chosen": "c", "rejected": "r"},
        {"pair_id": "b", "prompt": [{"role": "user", "content": "hi"}], "chosen": None, "rejected": "r"},
        {
            "pair_id": "c",
            "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}],
            "chosen": "c",
            "rejected": "r",
            "source": "correction",
        },
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    pairs = read_pairs_file(path)
    assert [p.pair_id for p in pairs] == ["a", "c"]  # no chosen answer: skipped
    row = pairs[1].to_row()
    assert row["chosen"] == [{"role": "assistant", "content": "c"}] and len(row["prompt"]) == 2
    assert pairs_from_records([]) == []


def test_plain_seed_lines_with_text_prompt_and_no_pair_id(tmp_path):
    lines = [
        {"prompt": "What is the return window?", "chosen": "30 days from delivery.", "rejected": "No idea."},
        {"prompt": "退货期限是多久？", "chosen": "收货后30天内。", "rejected": "不知道。"},
        {"prompt": "[1, 2]", "chosen": "c", "rejected": "r"},  # parses as JSON, but is not messages
    ]
    path = tmp_path / "seed.jsonl"
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n")
    pairs = read_pairs_file(path)
    assert [p.prompt for p in pairs] == [
        ({"role": "user", "content": "What is the return window?"},),
        ({"role": "user", "content": "退货期限是多久？"},),
        ({"role": "user", "content": "[1, 2]"},),
    ]
    ids = [p.pair_id for p in pairs]
    assert len(set(ids)) == 3 and all(len(i) == 32 for i in ids)
    assert [p.pair_id for p in read_pairs_file(path)] == ids  # derived from the content: the same every run
    # the same pair written with a message list gets the same id; a given pair_id is kept
    as_messages = dict(lines[0], prompt=[{"role": "user", "content": "What is the return window?"}])
    assert pairs_from_records([as_messages])[0].pair_id == ids[0]
    assert pairs_from_records([dict(lines[0], pair_id="mine")])[0].pair_id == "mine"
