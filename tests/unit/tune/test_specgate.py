"""Phase 7's gate as pure functions: a win ships; a loss, a mixed suite, an acceptance that is not
above the standing config's, or an engine that reports no acceptance does not."""

from __future__ import annotations

import pytest

from perftune.tune.specgate import WorkloadAB, call_workload, decide, mean_ci, suite_ratio

WIN = dict(accept_len=[2.9, 3.0, 3.1], ratio=1.8, ratio_ci95=(1.6, 2.0))


def test_win_on_every_workload_ships() -> None:
    d = decide([WorkloadAB("code", **WIN), WorkloadAB("chat", [2.0, 2.1, 2.2], 1.3, (1.1, 1.5))])
    assert d.verdict == "ship" and d.reasons == []
    assert [c.acceptance for c in d.calls] == ["win", "win"] and [c.latency for c in d.calls] == [
        "win",
        "win",
    ]
    assert d.suite_ratio == pytest.approx((1.8 * 1.3) ** 0.5)
    assert d.suite_ratio_ci95 is not None and d.suite_ratio_ci95[0] > 1


def test_a_loss_on_any_workload_is_do_not_ship() -> None:
    d = decide([WorkloadAB("code", **WIN), WorkloadAB("random", [1.0, 1.0, 1.01], 0.8, (0.75, 0.85))])
    assert d.verdict == "do-not-ship"
    assert "loses latency on random" in d.reasons
    assert any(r.startswith("random: acceptance inconclusive") for r in d.reasons)


def test_wins_one_workload_and_loses_the_suite() -> None:
    d = decide(
        [
            WorkloadAB("code", [2.5, 2.6, 2.4], 1.2, (1.05, 1.37)),
            WorkloadAB("chat", [1.1, 1.2, 1.1], 0.7, (0.66, 0.74)),
            WorkloadAB("random", [1.0, 1.0, 1.0], 0.7, (0.66, 0.74)),
        ]
    )
    assert d.verdict == "do-not-ship" and d.calls[0].latency == "win"
    assert any(r.startswith("loses the suite (geometric mean 0.8") for r in d.reasons)


def test_mixed_inconclusive_is_not_a_win() -> None:
    d = decide([WorkloadAB("code", **WIN), WorkloadAB("chat", [2.0, 2.1, 2.2], 1.05, (0.95, 1.16))])
    assert d.verdict == "do-not-ship"
    assert any(r.startswith("chat: latency inconclusive") for r in d.reasons)


def test_acceptance_must_beat_the_standing_method() -> None:
    # MTP K=3 stands at 2.4 tokens per step: a candidate at 2.3 +/- 0.1 is no acceptance win
    ab = WorkloadAB("code", [2.2, 2.3, 2.4], 1.2, (1.1, 1.3), standing_accept_len=2.4)
    assert call_workload(ab).acceptance == "loss" or call_workload(ab).acceptance == "inconclusive"
    assert decide([ab]).verdict == "do-not-ship"


def test_no_acceptance_reported_is_said_and_not_a_win() -> None:
    c = call_workload(WorkloadAB("code", [], 1.5, (1.3, 1.7)))
    assert c.acceptance == "not measured" and "acceptance not reported by the engine" in c.reason
    assert decide([WorkloadAB("code", [], 1.5, (1.3, 1.7))]).verdict == "do-not-ship"


def test_acceptance_zero_loses() -> None:
    ab = WorkloadAB("random", [1.0, 1.0, 1.0], 0.93, (0.91, 0.95))
    c = call_workload(ab)
    assert c.acceptance == "inconclusive" and c.latency == "loss"  # length exactly 1: no win
    assert decide([ab]).verdict == "do-not-ship"


def test_helpers() -> None:
    assert mean_ci([1.0]) is None
    m, (lo, hi) = mean_ci([1.0, 2.0, 3.0]) or (0, (0, 0))
    assert m == 2.0 and lo < 2.0 < hi
    assert suite_ratio([WorkloadAB("a", [], None, None)]) is None
    assert decide([]).verdict == "do-not-ship"
