"""The gate's decision table over generations: corrections learnt, paraphrases learnt, other answers kept."""

import pytest

from retrain.gate import Generations, Thresholds, decide

T = Thresholds(learn_rouge=0.8, keep_rouge=0.9, right_rouge=0.7, min_corrected=0.8, min_paraphrases=0.5, min_kept=0.9)
GOOD = (1.0, 0.9, 0.85, 0.8, 1.0)


@pytest.mark.parametrize(
    "generations, accepted, reason",
    [
        (Generations(GOOD, (1.0, 0.2), (1.0,) * 10), True, None),
        (Generations(GOOD, (), (1.0,) * 10), True, None),  # no held-out paraphrases: that check passes
        (Generations(GOOD, (1.0,), ()), True, None),  # no regression prompts: passes
        (Generations((1.0, 1.0, 1.0, 1.0, 0.79), (1.0,), (1.0,) * 10), True, None),  # 4 of 5 = 0.8 learnt
        (Generations((1.0, 1.0, 1.0, 0.79, 0.79), (1.0,), (1.0,) * 10), False, "corrected 0.60 of 5 (min 0.80)"),
        (Generations(GOOD, (0.5, 0.79, 0.9), (1.0,) * 10), False, "paraphrases 0.33 of 3 (min 0.50)"),
        (Generations(GOOD, (1.0,), (1.0,) * 8 + (0.89, 0.5)), False, "kept 0.80 of 10 (min 0.90)"),
        (Generations((), (), (1.0,) * 10), False, "nothing to learn"),
    ],
)
def test_decision_table(generations, accepted, reason):
    verdict = decide(generations, T)
    assert verdict.accepted is accepted
    assert verdict.name == ("accepted" if accepted else "rejected")
    assert len(verdict.figures) == 3  # every check names its figure, failed or not
    if reason:
        assert any(reason in r for r in verdict.reasons), verdict.reasons
    else:
        assert verdict.reasons == ()


def test_every_failed_check_is_a_reason():
    verdict = decide(Generations((0.1,), (0.1,), (0.1,)), T)
    assert len(verdict.reasons) == 3
    assert [r.split()[0] for r in verdict.reasons] == ["corrected", "paraphrases", "kept"]


def test_shares_use_the_thresholds():
    g = Generations((0.8, 0.79), (0.8,), (0.9, 0.89))
    assert g.shares(T) == {"corrected": 0.5, "paraphrases": 1.0, "kept": 0.5}


def test_kept_counts_right_answers_lost_and_compares_wording_without_a_reference():
    from retrain.gate import GoldenItem, kept_scores

    q = ({"role": "user", "content": "?"},)
    items = [
        GoldenItem(q, "Refunds take 5 business days."),  # right before, right after: kept
        GoldenItem(q, "Returns are free within 30 days."),  # right before, wrong after: lost
        GoldenItem(q, "Shipping is free over $50."),  # wrong before: not a regression, not counted
        GoldenItem(q, ""),
    ]  # no reference: the wording must stay
    before = ["Refunds take 5 business days.", "Returns are free within 30 days.", "We ship to Mars.", "Hello there."]
    after = ["Refunds take 5 business days!", "We do not take returns.", "We ship to Venus.", "Hello there."]
    assert kept_scores(after, before, items, T) == [1.0, 0.0, 1.0]
    assert Generations(kept=tuple(kept_scores(after, before, items, T))).shares(T)["kept"] == 2 / 3
