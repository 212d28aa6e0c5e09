"""Phase 7's gate as pure functions: a win ships; a loss, a mixed suite, an acceptance that is not
above the standing config's, or an engine that reports no acceptance does not."""

from __future__ import annotations

import math

import pytest

from perftune.tune.specgate import (
    WorkloadAB,
    call_workload,
    decide,
    loop_share,
    loops,
    mean_ci,
    suite_ratio,
)

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


# Outputs recorded in the GPU run (benchmarks/results/2026-12-03-h200-vllm-0.26.0-specdec/loops.tsv):
# the dummy 8B and SmolLM2 on random token ids loop; SmolLM2 on chat and code does not.
LOOPING = [
    "|\\\\ Jsonnet 1160 " + "Jsonnet 1160 " * 14,
    "pklsubsequence" * 14,
    " " + "1" * 127,
    "onassmatsunce" + "vatsunce" * 25,
]
NATURAL = [
    "The piggy bank market has seen steady growth in recent years, with a focus on personal savings and "
    "innovative products. The report highlights several key points, including the growing market size, "
    "competitive landscape, and market trends.",
    '\ndef special_factorial(n):\n    """The special_factorial function is defined as:\n'
    "    special_factorial(n) = n! * (n-1)! * (n-2)! * (n-3)! * (n-4)! * (n-5)! * (n-6)! * (n-7)! "
    "* (n-8)! * (n-9)! * (n-10)!",
    "\ndef get_odd_collatz(n):\n    if n == 1:\n        return [1]\n    elif n % 2 == 0:\n        return [n]"
    " + get_odd_collatz(n // 2)\n    else:\n        return [n] + get_odd_collatz(n % 2)\n",
    "short",  # too short to judge: not a loop
]


def test_loops_tells_a_repeating_span_from_text_and_code() -> None:
    assert all(loops(t) for t in LOOPING)
    assert not any(loops(t) for t in NATURAL)
    assert loop_share(LOOPING + NATURAL) == pytest.approx(0.5)
    assert loop_share([]) is None


def test_a_workload_whose_outputs_loop_is_left_out_of_the_decision() -> None:
    chat = WorkloadAB("chat", [3.2, 3.3, 3.25], 1.6, (1.4, 1.8))
    code = WorkloadAB("code", [3.0, 3.1, 3.05], 1.5, (1.3, 1.7))
    # random loops: its huge measured loss would sink the suite if it counted
    rnd = WorkloadAB("random", [4.9, 4.9, 4.9], 0.5, (0.4, 0.6), degenerate="98% of its outputs loop")
    d = decide([chat, code, rnd])
    assert d.verdict == "ship", d.reasons
    assert d.suite_ratio == pytest.approx(math.sqrt(1.6 * 1.5))
    assert [c.workload for c in d.calls] == ["chat", "code", "random"]
    assert d.calls[-1].acceptance == d.calls[-1].latency == "degenerate"
    assert d.reasons == ["random: left out, 98% of its outputs loop"]
    # a degenerate win is no win either
    lose = WorkloadAB("chat", [3.2, 3.3, 3.25], 0.5, (0.4, 0.6))
    win = WorkloadAB("random", [4.9, 4.9, 4.9], 1.5, (1.2, 1.9), degenerate="loops")
    assert decide([lose, win]).verdict == "do-not-ship"


def test_when_every_workload_is_degenerate_nothing_ships() -> None:
    # the dummy 8B on random: acceptance 1.0 and a 3.2x TPOT win, both artifacts of looping output
    d = decide([WorkloadAB("random", [4.92, 4.9, 4.91], 3.2, (2.9, 3.5), degenerate="dummy weights")])
    assert d.verdict == "do-not-ship" and d.suite_ratio is None
    assert d.reasons[0] == "no workload with non-degenerate outputs"
    assert "random: left out, dummy weights" in d.reasons
