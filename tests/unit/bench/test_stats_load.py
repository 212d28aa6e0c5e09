import itertools
import math

import numpy as np
import pytest

from perftune.bench.load import MAX_P99_LAG_MS, arrival_offsets, assess_load
from perftune.bench.stats import across_trials, dist


def test_dist_percentiles_and_std() -> None:
    d = dist([float(x) for x in range(1, 101)])
    assert d.n == 100 and d.mean == pytest.approx(50.5)
    assert d.p50 == pytest.approx(50.5) and d.p99 == pytest.approx(99.01)
    assert d.std == pytest.approx(np.std(range(1, 101), ddof=1))
    assert dist([]).mean is None


def test_t_interval_matches_textbook_value() -> None:
    a = across_trials([10.0, 12.0, 14.0])
    # t(0.975, 2) = 4.302653; std = 2; half = 4.302653 * 2 / sqrt(3)
    assert a.mean == pytest.approx(12.0) and a.std == pytest.approx(2.0)
    assert a.ci95_half_width == pytest.approx(4.302653 * 2 / math.sqrt(3), rel=1e-5)
    assert a.cv == pytest.approx(2 / 12)
    one = across_trials([5.0])
    assert one.ci95 is None and one.std is None and one.mean == 5.0


@pytest.mark.parametrize("arrival", ["constant", "poisson", "gamma"])
def test_offsets_have_exactly_the_requested_mean_rate(arrival: str) -> None:
    off = arrival_offsets(500, 50.0, arrival, burstiness=0.5, seed=3)  # type: ignore[arg-type]
    assert off[0] == 0.0 and all(b >= a for a, b in itertools.pairwise(off))
    assert (len(off) - 1) / off[-1] == pytest.approx(50.0)
    assert off == arrival_offsets(500, 50.0, arrival, burstiness=0.5, seed=3)  # type: ignore[arg-type]


def test_gamma_burstiness_changes_the_gap_spread() -> None:
    bursty = np.diff(arrival_offsets(2000, 10.0, "gamma", burstiness=0.25, seed=1))
    smooth = np.diff(arrival_offsets(2000, 10.0, "gamma", burstiness=4.0, seed=1))
    assert bursty.std() / bursty.mean() > 1.5 > 0.7 > smooth.std() / smooth.mean()


def test_assess_load_flags_lag_and_low_rate() -> None:
    sched = [i * 20_000_000 for i in range(100)]  # 50 req/s
    ok = assess_load(sched, [s + 100_000 for s in sched], concurrency=None, requested_rate=50.0)
    assert ok.valid and ok.achieved_rate == pytest.approx(50.0)
    late = assess_load(
        sched,
        [s + int((MAX_P99_LAG_MS + 1) * 1e6) * (i % 2) for i, s in enumerate(sched)],
        concurrency=None,
        requested_rate=50.0,
    )
    assert not late.valid and "lag" in late.invalid_reasons[0]
    slow = assess_load(sched, [int(s * 1.1) for s in sched], concurrency=None, requested_rate=50.0)
    assert not slow.valid and any("achieved" in r for r in slow.invalid_reasons)
