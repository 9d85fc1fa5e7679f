"""A/B verdicts (deploy/abtest.py; its tests are checked in test_stats.py); the report's window parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from deploy.abtest import (
    INSUFFICIENT,
    NOT_SIGNIFICANT,
    SIGNIFICANT,
    Arm,
    compare_arms,
)
from deploy.analytics import parse_since


def test_arm_from_raw_values():
    a = Arm.from_raw("a", ["thumbs_down", "thumbs_up", "thumbs_down"], [100.0, 110.0, 120.0])
    assert (a.rated, a.thumbs_down, a.ok_requests) == (3, 2, 3)
    assert a.latency_mean_ms == pytest.approx(110.0) and a.latency_std_ms == pytest.approx(10.0)


def arm(version, rated, down, n_ok=0, mean=None, std=None):
    return Arm(version, rated, down, n_ok, mean, std)


# (arm A, arm B, min_samples, thumbs-down verdict, better, latency verdict, better)
# fmt: off
CASES = {
    "equal rates and latency, big n": (
        arm("a", 5000, 500, 5000, 100.0, 20.0), arm("b", 5000, 500, 5000, 100.0, 20.0), 30,
        NOT_SIGNIFICANT, None, NOT_SIGNIFICANT, None,
    ),
    "close rates, small n": (
        arm("a", 60, 12, 60, 100.0, 30.0), arm("b", 60, 10, 60, 101.0, 30.0), 30,
        NOT_SIGNIFICANT, None, NOT_SIGNIFICANT, None,
    ),
    "b much better, big n": (
        arm("a", 5000, 1000, 5000, 150.0, 20.0), arm("b", 5000, 500, 5000, 120.0, 20.0), 30,
        SIGNIFICANT, "b", SIGNIFICANT, "b",
    ),
    "b much worse, big n": (
        arm("a", 4000, 200, 4000, 100.0, 10.0), arm("b", 4000, 400, 4000, 110.0, 10.0), 30,
        SIGNIFICANT, "a", SIGNIFICANT, "a",
    ),
    "tiny n despite a huge gap": (
        arm("a", 5, 5, 5, 500.0, 1.0), arm("b", 5, 0, 5, 50.0, 1.0), 30,
        INSUFFICIENT, None, INSUFFICIENT, None,
    ),
    "one arm below the minimum": (
        arm("a", 5000, 1000, 5000, 150.0, 20.0), arm("b", 29, 0, 29, 120.0, 20.0), 30,
        INSUFFICIENT, None, INSUFFICIENT, None,
    ),
    "exactly the minimum is enough": (
        arm("a", 30, 25, 30, 300.0, 10.0), arm("b", 30, 2, 30, 100.0, 10.0), 30,
        SIGNIFICANT, "b", SIGNIFICANT, "b",
    ),
    "no thumbs-down at all": (
        arm("a", 100, 0, 100, 100.0, 5.0), arm("b", 100, 0, 100, 100.0, 5.0), 30,
        NOT_SIGNIFICANT, None, NOT_SIGNIFICANT, None,
    ),
    "enough latency, too few ratings": (
        arm("a", 3, 1, 1000, 100.0, 10.0), arm("b", 4, 1, 1000, 80.0, 10.0), 30,
        INSUFFICIENT, None, SIGNIFICANT, "b",
    ),
}
# fmt: on


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_compare_arms_verdicts(case):
    a, b, min_samples, td_verdict, td_better, lat_verdict, lat_better = case
    result = compare_arms(a, b, alpha=0.05, min_samples=min_samples)
    assert (result.thumbs_down.verdict, result.thumbs_down.better) == (td_verdict, td_better)
    assert (result.latency.verdict, result.latency.better) == (lat_verdict, lat_better)
    if td_verdict == INSUFFICIENT:
        assert result.thumbs_down.p_value is None
    else:
        assert 0 <= result.thumbs_down.p_value <= 1


def test_alpha_decides():
    a, b = arm("a", 100, 30, 0), arm("b", 100, 15, 0)  # p = 0.0111
    assert compare_arms(a, b, alpha=0.05).thumbs_down.verdict == SIGNIFICANT
    assert compare_arms(a, b, alpha=0.01).thumbs_down.verdict == NOT_SIGNIFICANT


def test_verdict_line_names_the_winner():
    result = compare_arms(arm("v1", 5000, 1000, 5), arm("v2", 5000, 500, 5), min_samples=30)
    assert result.verdict.startswith("thumbs-down rate: v2 is lower (p=")
    assert result.verdict.endswith("latency: insufficient data")
    assert result.thumbs_down.value_a == 0.2 and result.thumbs_down.value_b == 0.1


@pytest.mark.parametrize(("alpha", "min_samples"), [(0.0, 30), (1.0, 30), (0.05, 1)])
def test_bad_parameters_are_refused(alpha, min_samples):
    with pytest.raises(ValueError):
        compare_arms(arm("a", 10, 1), arm("b", 10, 1), alpha=alpha, min_samples=min_samples)


NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("1h", NOW - timedelta(hours=1)),
        (" 1.5h ", NOW - timedelta(minutes=90)),
        ("2d", NOW - timedelta(days=2)),
        ("1W", NOW - timedelta(weeks=1)),
        ("all", None),
    ],
)
def test_parse_since(text, expected):
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["", "1", "h", "1y", "-1h", "1h30m", "yesterday"])
def test_parse_since_refuses(text):
    with pytest.raises(ValueError):
        parse_since(text, now=NOW)
