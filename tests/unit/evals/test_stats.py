"""Pure statistics: Wilson, the paired delta (Tango score interval) + McNemar, and the gate decision."""

from __future__ import annotations

import pytest

from perftune.evals.stats import PairedDelta, decide, decision_reason, paired_delta, wilson


def test_wilson_matches_hand_computed_value() -> None:
    # k=8, n=10, z=1.96: p=0.8, denom=1+3.8416/10=1.38416, centre=(0.8+0.19208)/1.38416=0.716745,
    # half=1.96*sqrt(0.016+0.009604)/1.38416=0.226583 -> (49.016, 94.333) points.
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(49.016, abs=0.01)
    assert hi == pytest.approx(94.333, abs=0.01)


def test_wilson_edges() -> None:
    lo, hi = wilson(0, 10)
    assert lo == 0.0
    assert 25 < hi < 35
    lo, hi = wilson(10, 10)
    assert hi == pytest.approx(100.0)
    assert 65 < lo < 75
    assert wilson(0, 0) == (0.0, 100.0)
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_paired_delta_identical_vectors() -> None:
    v = [True] * 60 + [False] * 40
    d = paired_delta(v, list(v))
    assert d.delta_pts == 0.0
    # no discordant pair: Z(d) = -n d / sqrt(n (-d - d^2)) = z at d = -z^2 / (n + z^2), by hand
    # -3.8416 / 103.8416 = -3.70 points (and +3.70): agreement on 100 items bounds a loss, no more
    assert d.ci95 == pytest.approx((-3.6995, 3.6995), abs=1e-3)
    assert d.mcnemar_p == 1.0
    assert (d.n, d.b01, d.b10) == (100, 0, 0)


def test_identical_answers_on_few_items_prove_nothing_many_items_do() -> None:
    few = paired_delta([True, False] * 3, [True, False] * 3)
    assert decide(few, 1.0) == "inconclusive" and few.ci95[0] < -20
    many = paired_delta([True, False] * 2500, [True, False] * 2500)
    assert decide(many, 1.0) == "pass" and -0.1 < many.ci95[0] < 0


def test_paired_delta_candidate_loses_ten_of_hundred() -> None:
    base = [True] * 100
    cand = [True] * 90 + [False] * 10
    d = paired_delta(base, cand)
    assert d.delta_pts == pytest.approx(-10.0)
    assert (d.b01, d.b10, d.n) == (10, 0, 100)
    assert d.mcnemar_p < 0.01
    assert d.mcnemar_p == pytest.approx(2 * 0.5**10)
    lo, hi = d.ci95
    assert -20 < lo < -10 < hi < 0
    assert paired_delta(base, cand) == d  # deterministic


def test_paired_delta_gain_and_balanced_discordance() -> None:
    base = [False] * 5 + [True] * 5 + [True] * 10
    cand = [True] * 5 + [False] * 5 + [True] * 10
    d = paired_delta(base, cand)
    assert d.delta_pts == 0.0
    assert (d.b01, d.b10) == (5, 5)
    assert d.mcnemar_p == pytest.approx(1.0)
    lo, hi = d.ci95
    assert lo < 0 < hi


def test_paired_delta_length_mismatch() -> None:
    with pytest.raises(ValueError, match="length"):
        paired_delta([True, False], [True])
    with pytest.raises(ValueError):
        paired_delta([], [])


def _delta(lo: float, hi: float) -> PairedDelta:
    return PairedDelta(delta_pts=(lo + hi) / 2, ci95=(lo, hi), n=100, b01=0, b10=0, mcnemar_p=1.0)


def test_decide_three_outcomes() -> None:
    assert decide(_delta(-0.9, 1.5), tolerance_pts=1.0) == "pass"
    assert decide(_delta(-1.0, 0.0), tolerance_pts=1.0) == "pass"  # lower bound == -tolerance
    assert decide(_delta(-6.0, -2.0), tolerance_pts=1.0) == "fail"
    assert decide(_delta(-3.0, 0.5), tolerance_pts=1.0) == "inconclusive"
    assert decide(_delta(-3.0, -1.0), tolerance_pts=1.0) == "inconclusive"  # upper == -tol


def test_inconclusive_reason_says_raise_item_count() -> None:
    d = _delta(-3.0, 0.5)
    reason = decision_reason(d, 1.0, decide(d, 1.0))
    assert "raise the item count" in reason
    assert "not passed" in reason


def test_items_to_pass_says_how_many_items_would_decide() -> None:
    from perftune.evals.stats import items_to_pass, tango_interval

    same = paired_delta([True, False] * 50, [True, False] * 50)
    n = items_to_pass(same, 1.0)
    assert n is not None and 380 < n < 2000  # zero discordance still needs a few hundred items
    # 149 flips each way on 3,000 items (a guessing model under FP8): a few thousand more would decide
    flips = paired_delta(
        [True] * 150 + [False] * 2850, [False] * 149 + [True] + [True] * 149 + [False] * 2701
    )
    k = items_to_pass(flips, 1.0)
    assert k is not None and 3000 < k < 5000
    lo, _ = tango_interval(round(flips.b10 * k / 3000), round(flips.b01 * k / 3000), k)
    assert lo * 100 >= -1.0  # at the number it names, the same rates do clear the tolerance
    worse = paired_delta([True] * 100, [True] * 95 + [False] * 5)  # -5 points: more items cannot pass
    assert items_to_pass(worse, 1.0) is None
