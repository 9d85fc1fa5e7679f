"""The gate's decision table: candidate vs current on held-out accuracy, margin and the golden set."""

import pytest

from retrain.gate import EvalResult, Thresholds, decide

T = Thresholds(accuracy_tolerance=0.02, margin_tolerance=0.02, golden_tolerance=0.05, golden_prompt_tolerance=0.5)
CUR = EvalResult(0.70, 0.30, 10, (-2.0, -3.0))


@pytest.mark.parametrize(
    "candidate, accepted, reason",
    [
        (EvalResult(0.80, 0.40, 10, (-1.9, -2.9)), True, None),  # better everywhere
        (EvalResult(0.70, 0.30, 10, (-2.0, -3.0)), True, None),  # equal
        (EvalResult(0.69, 0.29, 10, (-2.04, -3.04)), True, None),  # within every tolerance
        (EvalResult(0.60, 0.40, 10, (-2.0, -3.0)), False, "preference accuracy"),
        (EvalResult(0.80, 0.20, 10, (-2.0, -3.0)), False, "reward margin"),
        (EvalResult(0.80, 0.40, 10, (-2.2, -3.2)), False, "golden log-likelihood"),
        (EvalResult(0.80, 0.40, 10, (-1.0, -3.6)), False, "golden prompts regressed"),  # mean up, one prompt down
        (EvalResult(0.80, 0.40, 0, (-2.0, -3.0)), False, "no held-out pairs"),
        (EvalResult(0.80, 0.40, 10, (-2.0,)), False, "golden sets differ"),
        (EvalResult(0.10, -0.5, 10, (-4.0, -5.0)), False, "preference accuracy"),
    ],
)
def test_decision_table(candidate, accepted, reason):
    verdict = decide(candidate, CUR, T)
    assert verdict.accepted is accepted
    assert verdict.name == ("accepted" if accepted else "rejected")
    if reason:
        assert any(reason in r for r in verdict.reasons), verdict.reasons
    else:
        assert verdict.reasons == ()


def test_every_failed_check_is_a_reason():
    verdict = decide(EvalResult(0.0, -1.0, 10, (-9.0, -9.0)), CUR, T)
    assert len(verdict.reasons) == 4


def test_base_model_as_current_has_zero_rewards():
    base = EvalResult(0.0, 0.0, 5, (-7.0,))
    assert decide(EvalResult(1.0, 0.9, 5, (-6.8,)), base, T).accepted
    assert not decide(EvalResult(1.0, 0.9, 5, (-7.2,)), base, T).accepted
