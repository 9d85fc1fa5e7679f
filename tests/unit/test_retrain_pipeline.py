"""The retrain job's data: which earlier rows are replayed, the supervised rows, the regression prompts."""

from retrain.config import DPOJobConfig
from retrain.dataset import Pair
from retrain.pipeline import kept_rows, row, supervised_rows

PROMPT = ({"role": "user", "content": "Do you gift wrap?"},)
PAIR = Pair("p1", PROMPT, chosen="Yes, gift wrapping costs $4.", rejected="We do not offer that service.")
PARENT = [
    row([{"role": "user", "content": "How long do refunds take?"}], "Refunds take 5 business days."),
    row([{"role": "user", "content": "do you GIFT wrap"}], "We do not offer gift wrapping."),  # the corrected question
    row([{"role": "user", "content": "Any wrapping service?"}], "We do not offer that service."),  # rejected elsewhere
    row([{"role": "user", "content": "Do you ship to Canada?"}], "Yes, shipping to Canada costs $15."),
]


def test_kept_rows_drop_only_the_corrected_questions():
    kept = kept_rows(PARENT, [PAIR])
    # The rejected answer stays true for its own question ("Any wrapping service?"): it is replayed.
    assert [r["completion"][0]["content"] for r in kept] == [
        "Refunds take 5 business days.",
        "We do not offer that service.",
        "Yes, shipping to Canada costs $15.",
    ]


def test_supervised_rows_repeat_the_chosen_answers_and_add_a_replay_sample():
    config = DPOJobConfig(method="sft", chosen_repeats=3, replay_rows=1)
    rows = supervised_rows([PAIR], PARENT[:1] + PARENT[3:], config)
    answers = [r["completion"][0]["content"] for r in rows]
    assert answers.count(PAIR.chosen) == 3 and len(rows) == 4
    assert rows == supervised_rows([PAIR], PARENT[:1] + PARENT[3:], config)  # the same seed, the same rows


def test_replay_is_capped_by_the_pool():
    rows = supervised_rows([PAIR], PARENT[:1], DPOJobConfig(method="sft", replay_rows=50))
    assert len(rows) == 2


def test_a_small_replay_covers_every_answer_before_repeating_one():
    from retrain.pipeline import replay_sample

    rows = [row([{"role": "user", "content": f"q{a}-{i}"}], f"answer {a}") for a in range(5) for i in range(4)]
    picked = replay_sample(rows, 7, seed=1)
    answers = [r["completion"][-1]["content"] for r in picked]
    assert len(picked) == 7 and len(set(answers)) == 5  # all five answers, then two second rows
    assert replay_sample(rows, 7, seed=1) == picked and len(replay_sample(rows, 100, seed=1)) == 20
    assert replay_sample([], 5, seed=1) == []
