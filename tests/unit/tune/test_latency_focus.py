"""`focus: latency` in the tuner: arms judged on median TPOT at the target concurrency, TTFT still
bound by the SLO, output tok/s never part of the score, crowned only outside the noise."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from perftune.campaign.report import tune_md
from perftune.campaign.tuning import tune_json
from perftune.errors import ConfigError
from perftune.tune.arms import Arm
from perftune.tune.search import (
    Measure,
    Outcome,
    TuneConfig,
    raw_score,
    run_tuner,
    score,
    workload_score,
)

THROUGHPUT = TuneConfig(ladder=[4, 16, 64], slo_ttft_ms=5000, slo_tpot_ms=100, trials=3, top_k=2)
LATENCY = TuneConfig(**{**THROUGHPUT.__dict__, "focus": "latency", "target_concurrency": 16})


class Node:
    """Each arm: (tok/s per slot, median TPOT ms, mean TTFT ms), and optionally a TTFT at c=16 only.
    The TPOT of trial t is scaled by 1 + noise * (-1, 0, 1)[t % 3] so intervals are real."""

    def __init__(
        self,
        arms: dict[str, tuple[float, float, float]],
        *,
        noise: float = 0.002,
        ttft_at_16: dict[str, float] | None = None,
    ) -> None:
        self.arms, self.noise, self.ttft_at_16 = arms, noise, ttft_at_16 or {}
        self.calls: list[tuple[str, list[int], bool]] = []

    def run(self, arm: Arm, concurrencies: Sequence[int], trial: int, *, screening: bool) -> Outcome:
        self.calls.append((arm.name, list(concurrencies), screening))
        tok, tpot, ttft = self.arms.get(arm.name, self.arms["baseline"])
        wobble = 1 + self.noise * (-1, 0, 1)[trial % 3]
        ms = [
            Measure(
                arm.key,
                c,
                trial,
                tok * c,
                self.ttft_at_16.get(arm.name, ttft) if c == 16 else ttft,
                tpot * wobble,
            )
            for c in concurrencies
        ]
        return Outcome(ms, 60.0 + 10.0 * len(concurrencies))


def _arms(*names: str) -> list[Arm]:
    return [
        Arm(engine="sim", name=n, levers={} if n == "baseline" else {"batch-cap": 64 + k})
        for k, n in enumerate(names)
    ]


def test_the_judged_concurrency_is_the_largest_ladder_step_at_or_below_the_target() -> None:
    assert LATENCY.judged_concurrency == 16 and LATENCY.screen_concurrency == 16
    assert TuneConfig(**{**LATENCY.__dict__, "target_concurrency": 40}).judged_concurrency == 16
    assert TuneConfig(**{**LATENCY.__dict__, "target_concurrency": 64}).judged_concurrency == 64
    assert THROUGHPUT.judged_concurrency is None and THROUGHPUT.screen_concurrency == 64
    with pytest.raises(ConfigError, match="ladder"):
        TuneConfig(**{**LATENCY.__dict__, "target_concurrency": 2})
    with pytest.raises(ConfigError, match="ladder"):
        TuneConfig(**{**LATENCY.__dict__, "target_concurrency": None})
    assert "median TPOT ms at c=16" in LATENCY.metric and "tok/s" in THROUGHPUT.metric


def test_a_latency_score_is_tpot_speed_at_the_target_and_never_tok_s() -> None:
    ms = [
        Measure("a", c, t, 100.0 * c, 200.0, 20.0 if c == 16 else 5.0) for t in range(3) for c in (4, 16, 64)
    ]
    s, vals = score(ms, LATENCY)
    assert s == pytest.approx(1000.0 / 20.0) and vals == pytest.approx([50.0] * 3)  # c=16, not c=4's 5 ms
    assert workload_score(ms, LATENCY, "random").concurrency == 16
    # ten times the tok/s at the same TPOT: the same latency score
    fast = [Measure(m.arm, m.concurrency, m.trial, 10 * m.output_tok_s, m.ttft_ms, m.tpot_ms) for m in ms]
    assert score(fast, LATENCY)[0] == pytest.approx(s)
    assert score(fast, THROUGHPUT)[0] == pytest.approx(10 * score(ms, THROUGHPUT)[0])  # type: ignore[operator]
    # TTFT over the SLO at the target: no score, whatever the TPOT; raw_score ranks it SLO ignored
    slow_ttft = [
        Measure(
            m.arm, m.concurrency, m.trial, m.output_tok_s, 9000.0 if m.concurrency == 16 else 200.0, m.tpot_ms
        )
        for m in ms
    ]
    assert score(slow_ttft, LATENCY) == (None, [])
    assert raw_score(slow_ttft, LATENCY) == pytest.approx(50.0)
    assert score(slow_ttft, THROUGHPUT)[0] is not None  # c=64 still meets it for throughput


def test_latency_focus_crowns_the_lower_tpot_arm_even_with_lower_tok_s() -> None:
    arms = {
        "baseline": (100.0, 20.0, 300.0),
        "snappy": (60.0, 15.0, 300.0),  # lower TPOT, lower tok/s
        "bulky": (150.0, 25.0, 300.0),  # higher tok/s, higher TPOT
        "meh": (90.0, 22.0, 300.0),  # a third challenger: more than top_k, so screening runs
    }
    lat = run_tuner(_arms("baseline", "snappy", "bulky", "meh"), node := Node(arms), LATENCY)
    e = lat.engines[0]
    assert e.crowned is not None and e.crowned.name == "snappy", e.verdict
    assert e.focus == "latency" and e.concurrency == 16 and "median TPOT" in e.metric
    assert e.ratio is not None and e.ratio == pytest.approx(
        20.0 / 15.0, rel=1e-3
    )  # baseline / challenger TPOT
    assert e.ratio_ci95 is not None and e.ratio_ci95[0] > 1.0
    assert e.tpot_ms == pytest.approx(15.0, rel=1e-3) and e.baseline_tpot_ms == pytest.approx(20.0, rel=1e-3)
    assert e.show(e.score) == "15.00 ms" and "ms" in e.show_ci(e.ci95)
    v = e.by_workload["random"]
    assert v.concurrency == v.baseline_concurrency == 16
    assert v.tpot_ms == pytest.approx(15.0, rel=1e-3) and v.baseline_tpot_ms == pytest.approx(20.0, rel=1e-3)
    # screening and halving measured at the target, the full treatment over the whole ladder
    assert {tuple(c) for _n, c, screening in node.calls if screening} == {(16,)}
    assert {tuple(c) for _n, c, screening in node.calls if not screening} == {(4, 16, 64)}
    # the pareto front is TPOT vs TTFT at the judged concurrency
    assert {c for _w, _a, c, *_x in e.pareto} == {16}
    assert [a for _w, a, *_x in e.pareto] == ["snappy"]  # same TTFT, lowest TPOT dominates
    # the same node under throughput focus crowns the other arm: the focus decides
    thr = run_tuner(_arms("baseline", "snappy", "bulky"), Node(arms), THROUGHPUT).engines[0]
    assert thr.crowned is not None and thr.crowned.name == "bulky" and thr.tpot_ms is None
    assert thr.focus == "throughput" and thr.concurrency is None and thr.show(thr.score).endswith("tok/s")


def test_a_better_tpot_that_breaks_the_ttft_slo_at_the_target_is_not_crowned() -> None:
    arms = {
        "baseline": (100.0, 20.0, 300.0),
        "ttft-hog": (100.0, 10.0, 300.0),  # half the TPOT ...
        "modest": (100.0, 18.0, 300.0),
    }
    node = Node(arms, ttft_at_16={"ttft-hog": 6000.0})  # ... but a 6 s TTFT at c=16 (SLO 5 s)
    e = run_tuner(_arms("baseline", "ttft-hog", "modest"), node, LATENCY).engines[0]
    assert e.crowned is not None and e.crowned.name == "modest", e.verdict
    assert "ttft-hog" not in [n for n, _s, _k in e.top3]
    assert e.tpot_ms == pytest.approx(18.0, rel=1e-3)


def test_a_latency_win_inside_the_noise_keeps_the_baseline() -> None:
    arms = {"baseline": (100.0, 20.0, 300.0), "marginal": (100.0, 19.8, 300.0)}
    e = run_tuner(_arms("baseline", "marginal"), Node(arms, noise=0.05), LATENCY).engines[0]
    assert e.crowned is not None and e.crowned.name == "baseline"
    assert e.challenger == "marginal" and "within the noise" in e.verdict
    assert e.ratio is not None and e.ratio > 1.0 and e.ratio_ci95 is not None and e.ratio_ci95[0] < 1.0


def test_tune_md_and_tune_json_say_the_crown_was_tpot_in_ms() -> None:
    arms = {"baseline": (100.0, 20.0, 300.0), "snappy": (60.0, 15.0, 300.0)}
    res = run_tuner(_arms("baseline", "snappy"), Node(arms), LATENCY)
    md, heads = tune_md(res, ["random"], 3, [], {"sim": True}, "")
    assert "Crowned by: median TPOT ms at c=16" in md
    assert "median TPOT 15.00 ms at c=16" in md and "baseline 20.00 ms" in md
    assert "TPOT speedup (baseline TPOT / snappy TPOT)" in md and "| random | 15.00 | 20.00 | 1.333" in md
    assert (
        "median TPOT 15.00 ms at c=16 vs baseline 20.00 ms" in heads[0] and "TPOT speedup x1.333" in heads[0]
    )
    eng = tune_json(res)["engines"][0]
    assert eng["focus"] == "latency" and eng["concurrency"] == 16 and "median TPOT ms" in eng["metric"]
    assert eng["tpot_ms"] == pytest.approx(15.0, rel=1e-3) and eng["baseline_tpot_ms"] == pytest.approx(
        20.0, rel=1e-3
    )
    assert eng["top3_tpot_ms"][0][0] == "snappy" and eng["top3_tpot_ms"][0][1] == pytest.approx(
        15.0, rel=1e-3
    )
    # throughput focus: tok/s as before, no TPOT crown fields
    thr = run_tuner(_arms("baseline", "snappy"), Node(arms), THROUGHPUT)
    md, heads = tune_md(thr, ["random"], 3, [], {"sim": True}, "")
    assert "Crowned by: output tok/s under the SLO" in md and "TPOT speedup" not in md
    assert "score 6,400" not in md and "score 6400" in md  # baseline 100 tok/s/slot x 64
    eng = tune_json(thr)["engines"][0]
    assert eng["focus"] == "throughput" and eng["tpot_ms"] is None and "top3_tpot_ms" not in eng


def test_a_composition_keeps_the_better_winners_value_of_a_shared_lever() -> None:
    from perftune.tune.arms import compose

    winners = [
        Arm(engine="sim", name="prefill-chunk=16384", levers={"prefill-chunk": 16384}),
        Arm(engine="sim", name="kv-cache-dtype=fp8", levers={"kv-cache-dtype": "fp8"}),
        Arm(engine="sim", name="prefill-chunk=8192", levers={"prefill-chunk": 8192}),  # a worse value
    ]
    comp = compose("sim", winners, {"batch-cap": 64})
    assert comp.levers == {"batch-cap": 64, "prefill-chunk": 16384, "kv-cache-dtype": "fp8"}
    assert comp.name == "composed:prefill-chunk=16384+kv-cache-dtype=fp8"
