"""High-concurrency defaults follow the measured run-to-run variance (issue 23)."""

import math

import pytest
from scipy import stats

from perftune.bench.defaults import BANDS, DETECT, closed_loop_defaults, trials_to_resolve


def _half(k: int, cv: float) -> float:
    return float(stats.t.ppf(0.975, 2 * k - 2)) * cv * math.sqrt(2 / k)


def test_trials_are_the_fewest_that_call_a_three_percent_difference() -> None:
    for band in BANDS:
        n = trials_to_resolve(band.cv_tok_s)
        assert _half(n, band.cv_tok_s) <= DETECT and (n == 3 or _half(n - 1, band.cv_tok_s) > DETECT)
    assert trials_to_resolve(0.001) == 3 and trials_to_resolve(0.5) == 12  # floor and cap


@pytest.mark.parametrize(("c", "trials"), [(16, 3), (64, 4), (256, 4), (512, 8)])
def test_closed_loop_defaults_by_concurrency(c: int, trials: int) -> None:
    d = closed_loop_defaults(c)
    assert d.trials == trials and d.min_requests == 2 * c
    if c >= 64:
        assert "run-to-run CV" in d.why and "client-compare" in d.why
