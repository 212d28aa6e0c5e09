"""The SLO capacity search's pure core, driven by synthetic measurements with a known threshold."""

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from perftune.bench.capacity import (
    CapacityConfig,
    CapacityPoint,
    CapacityResult,
    SearchSpec,
    bench_config,
    interval,
    judge_point,
    ladder_for,
    midpoint,
    next_load,
    point_dir,
    render_markdown,
    requests_for,
    search,
    summarize,
    write_result,
)
from perftune.bench.slo import Slo, resolve_slo
from perftune.bench.workloads import WorkloadSpec
from perftune.context import Tier

SLO = resolve_slo("mlperf-server-8b")  # p99 TTFT <= 2 s, p99 TPOT <= 100 ms


def point(
    load: float,
    passed: bool,
    *,
    slo: Slo = SLO,
    trials: int = 3,
    tier: Tier | None = "DRAFT",
    simulated: bool = False,
) -> CapacityPoint:
    """A point whose TTFT is well inside (1 s) or well outside (3 s) the SLO, with a little noise."""
    base = 1000.0 if passed else 3000.0
    return judge_point(
        load,
        slo,
        ttft=[base + 10.0 * i for i in range(trials)],
        tpot=[50.0 + i for i in range(trials)],
        sent=100 * trials,
        failed=0,
        output_tok_s=[100.0 * load] * trials,
        req_s=[load / 2] * trials,
        tier=tier,
        simulated=simulated,
    )


def threshold(t: float, calls: list[float] | None = None) -> Callable[[float], CapacityPoint]:
    """A monotone server: every load <= t is inside the SLO, every load above it is not."""

    def measure(load: float) -> CapacityPoint:
        if calls is not None:
            calls.append(load)
        return point(load, load <= t)

    return measure


# ---------------------------------------------------------------- ladders and steps


def test_default_ladders() -> None:
    assert ladder_for(SearchSpec(slo=SLO)) == [float(2**k) for k in range(11)]
    assert ladder_for(SearchSpec(slo=SLO, max_load=100)) == [1, 2, 4, 8, 16, 32, 64]
    assert ladder_for(SearchSpec(slo=SLO, mode="open", start_rate=0.5, max_load=4)) == [0.5, 1, 2, 4]
    opened = ladder_for(SearchSpec(slo=SLO, mode="open"))
    assert opened[0] == 1.0 and opened[-1] == 1024.0 and len(opened) == 11
    assert ladder_for(SearchSpec(slo=SLO, ladder=[8, 2, 8, 32])) == [2, 8, 32]


@pytest.mark.parametrize("ladder", [[1.5, 2], [0, 4], []])
def test_bad_closed_ladders_are_rejected(ladder: list[float]) -> None:
    with pytest.raises(ValidationError):
        SearchSpec(slo=SLO, ladder=ladder)


def test_midpoints() -> None:
    assert midpoint("closed", 32, 64) == 48 and midpoint("closed", 4, 5) is None
    assert midpoint("closed", 4, 7) == 5
    m = midpoint("open", 16, 32)
    assert m is not None and 16 < m < 32 and m == pytest.approx(22.6)  # geometric, 3 significant digits


def test_next_load_brackets_then_bisects_and_respects_the_budget() -> None:
    ladder = ladder_for(SearchSpec(slo=SLO))
    assert next_load([], "closed", ladder, 0.1, 10) == 1
    pts = [point(1, True), point(2, True), point(4, True)]
    assert next_load(pts, "closed", ladder, 0.1, 10) == 8
    pts.append(point(8, False))
    assert next_load(pts, "closed", ladder, 0.1, 10) == 6  # bisect [4, 8)
    assert next_load(pts, "closed", ladder, 0.1, 4) is None  # the budget is spent
    assert next_load([point(1, False)], "closed", ladder, 0.1, 10) is None  # nothing below the first rung


# ---------------------------------------------------------------- the search


def test_search_order_is_the_bracket_then_the_bisection() -> None:
    calls: list[float] = []
    res = search(threshold(37, calls), SearchSpec(slo=SLO, max_points=20))
    assert calls == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38]
    assert [p.load for p in res.points] == calls and res.n_points == 11
    assert res.capacity == 36 and res.interval == (36, 38) and not res.at_least and res.complete
    assert res.statement == (
        "sustains concurrency 36 at p99 TTFT <= 2 s and p99 TPOT <= 100 ms "
        "(next point concurrency 38 fails: p99 TTFT 3.01 s); 11 points, 3 trials each"
    )
    assert res.output_tok_s == pytest.approx(3600) and res.req_s == pytest.approx(18)


@pytest.mark.parametrize("t", [1, 2, 3, 5, 7, 11, 37, 100, 129, 500, 777, 1000, 1023])
def test_closed_search_finds_the_threshold_within_the_resolution(t: int) -> None:
    res = search(threshold(t), SearchSpec(slo=SLO, max_points=40))
    lo, hi = res.interval
    assert lo is not None and hi is not None
    assert lo <= t < hi  # the true capacity lies in [lo, hi)
    assert hi - lo <= max(1, 0.1 * lo)
    assert res.capacity == lo and all(p.passed == (p.load <= t) for p in res.points)


@pytest.mark.parametrize("r", [1.3, 2.0, 7.7, 23.3, 99.0, 400.0])
def test_open_search_finds_the_rate_within_the_resolution(r: float) -> None:
    res = search(threshold(r), SearchSpec(slo=SLO, mode="open", max_points=40))
    lo, hi = res.interval
    assert lo is not None and hi is not None and lo <= r < hi and hi / lo <= 1.10 + 1e-9
    assert res.statement.startswith(f"sustains {res.capacity:.3g} req/s at p99 TTFT")


def test_max_points_bounds_the_search_and_says_the_interval_is_wider() -> None:
    calls: list[float] = []
    res = search(threshold(37, calls), SearchSpec(slo=SLO, max_points=9))
    assert len(calls) == res.n_points == 9
    assert res.interval == (32, 40) and res.capacity == 32
    assert any("max_points 9" in n and "[32, 40)" in n for n in res.notes)


def test_first_point_failing_means_no_capacity() -> None:
    calls: list[float] = []
    res = search(threshold(0.5, calls), SearchSpec(slo=SLO))
    assert calls == [1] and res.capacity is None and res.interval == (None, 1)
    assert res.statement.startswith("does not sustain even the lowest load, concurrency 1, at p99 TTFT")
    assert res.tier == "DRAFT" and res.context is None and res.output_tok_s is None


def test_top_of_the_ladder_passing_is_at_least() -> None:
    res = search(threshold(10_000), SearchSpec(slo=SLO, ladder=[1, 8, 64]))
    assert res.capacity == 64 and res.at_least and res.interval == (64, None) and res.n_points == 3
    assert res.statement.startswith("sustains at least concurrency 64 at")
    assert "the top of the ladder passes" in res.statement
    budget = search(threshold(10_000), SearchSpec(slo=SLO, max_points=3))
    assert budget.capacity == 4 and budget.at_least and "within max_points 3" in budget.statement


def test_non_monotone_noise_is_handled_deterministically() -> None:
    # the server sustains 20, but the point at 4 fails by noise: the search believes the lowest fail
    def noisy(load: float) -> CapacityPoint:
        return point(load, load <= 20 and load != 4)

    a = search(noisy, SearchSpec(slo=SLO))
    b = search(noisy, SearchSpec(slo=SLO))
    assert [p.load for p in a.points] == [1, 2, 4, 3] == [p.load for p in b.points]
    assert a.capacity == 3 and a.interval == (3, 4) and a.statement == b.statement


def test_a_pass_above_the_lowest_fail_is_reported_and_never_raises_the_capacity() -> None:
    prior = [point(4, True), point(8, False), point(16, True)]  # e.g. points reused from another search
    calls: list[float] = []
    res = search(threshold(6, calls), SearchSpec(slo=SLO), prior=prior)
    assert calls == [6, 7] and res.capacity == 6 and res.interval == (6, 7)
    assert [p.load for p in res.points] == [4, 8, 16, 6, 7]
    assert any(n.startswith("non-monotone: concurrency 16 passed above") for n in res.notes)
    lo, hi, above = interval(prior)
    assert (lo, hi, above) == (4, 8, [16])


def test_partial_results_are_seen_after_every_point() -> None:
    seen: list[CapacityResult] = []
    res = search(threshold(5), SearchSpec(slo=SLO), on_point=seen.append)
    assert [s.n_points for s in seen] == list(range(1, res.n_points + 1))
    assert all(not s.complete and s.statement.startswith("searching, so far:") for s in seen)
    assert res.complete


# ---------------------------------------------------------------- judging a point


def test_request_loss_fails_a_point_whatever_its_latencies() -> None:
    fast = {"ttft": [100.0, 101.0, 102.0], "tpot": [10.0, 10.0, 10.0]}
    lossy = judge_point(8, SLO, **fast, sent=300, failed=4)
    assert not lossy.passed and lossy.failed_share == pytest.approx(4 / 300)
    assert lossy.reasons == ["1.3% of requests failed (4 of 300)"]
    assert judge_point(8, SLO, **fast, sent=300, failed=3).passed  # exactly 1% is inside
    nothing = judge_point(8, SLO, ttft=[None, None], tpot=[None, None], sent=20, failed=20)
    assert not nothing.passed and any("no successful request" in r for r in nothing.reasons)


def test_both_percentiles_are_judged_on_their_across_trial_mean() -> None:
    p = judge_point(8, SLO, ttft=[1900.0, 1950.0, 2250.0], tpot=[50.0] * 3, sent=30, failed=0)
    assert (
        not p.passed and p.reasons == ["p99 TTFT 2.03 s"] and p.ttft_ms.mean == pytest.approx(2033.33, 1e-4)
    )
    q = judge_point(8, SLO, ttft=[500.0] * 3, tpot=[99.0, 120.0, 110.0], sent=30, failed=0)
    assert not q.passed and q.reasons == ["p99 TPOT 110 ms"]


def test_marginal_when_the_95_percent_interval_straddles_a_limit() -> None:
    wide = judge_point(8, SLO, ttft=[1800.0, 2000.0, 2150.0], tpot=[50.0] * 3, sent=30, failed=0)
    assert wide.passed and wide.marginal  # mean 1983 ms passes, but the interval reaches past 2 s
    tight = judge_point(8, SLO, ttft=[1000.0, 1010.0, 1020.0], tpot=[50.0] * 3, sent=30, failed=0)
    assert tight.passed and not tight.marginal
    failing = judge_point(8, SLO, ttft=[1900.0, 2100.0, 2300.0], tpot=[50.0] * 3, sent=30, failed=0)
    assert not failing.passed and failing.marginal
    one = judge_point(8, SLO, ttft=[1999.0], tpot=[50.0], sent=10, failed=0)
    assert one.passed and not one.marginal  # one trial has no interval


def test_the_statement_says_when_the_capacity_point_is_marginal() -> None:
    def measure(load: float) -> CapacityPoint:
        ttft = [1800.0, 2000.0, 2150.0] if load == 2 else ([500.0] * 3 if load < 2 else [5000.0] * 3)
        return judge_point(load, SLO, ttft=ttft, tpot=[50.0] * 3, sent=30, failed=0)

    res = search(measure, SearchSpec(slo=SLO))
    assert res.capacity == 2 and "the capacity point is marginal" in res.statement


# ---------------------------------------------------------------- tier


def test_tier_follows_the_capacity_point() -> None:
    def with_tier(tier: Tier, simulated: bool = False) -> Callable[[float], CapacityPoint]:
        return lambda load: point(load, load <= 4, tier=tier, simulated=simulated)

    assert search(with_tier("VERDICT"), SearchSpec(slo=SLO)).tier == "VERDICT"
    assert search(with_tier("DRAFT"), SearchSpec(slo=SLO)).tier == "DRAFT"
    sim = search(with_tier("VERDICT", simulated=True), SearchSpec(slo=SLO))
    assert sim.tier == "SIMULATED" and sim.statement.endswith("SIMULATED server")
    assert "simulated" in sim.tier_reasons[0]


# ---------------------------------------------------------------- the driver's pure parts and files


def _cfg(**kw: object) -> CapacityConfig:
    base: dict[str, object] = {
        "slo": SLO,
        "endpoint": "http://127.0.0.1:8000",
        "model": "m",
        "workload": WorkloadSpec(kind="random", isl=128, osl=16),
    }
    return CapacityConfig.model_validate({**base, **kw})


def test_requests_per_point_and_bench_configs() -> None:
    closed = _cfg()
    assert requests_for(closed, 1) == 16 and requests_for(closed, 48) == 96
    b = bench_config(closed, 48)
    assert b.concurrency == 48 and b.rate is None and b.workload is not None
    assert b.workload.num_requests == 96 and b.workload.isl == 128 and b.trials == 3
    assert b.slo == {"ttft_ms": 2000, "tpot_ms": 100}
    opened = _cfg(mode="open", duration_s=30, max_concurrency=64)
    assert requests_for(opened, 2.5) == 75 and requests_for(opened, 0.1) == 16
    o = bench_config(opened, 2.5)
    assert (o.rate, o.concurrency, o.arrival, o.max_concurrency) == (2.5, None, "poisson", 64)
    assert point_dir("closed", 48) == "points/closed-48" and point_dir("open", 2.5) == "points/open-2.5"


def test_capacity_json_round_trips_and_the_markdown_has_the_points(tmp_path: Path) -> None:
    res = search(threshold(12), SearchSpec(slo=SLO))
    write_result(res, tmp_path)
    back = CapacityResult.model_validate_json((tmp_path / "capacity.json").read_text())
    assert back == res
    md = (tmp_path / "capacity.md").read_text()
    assert md == render_markdown(res) and res.statement in md
    assert md.count("| pass |") + md.count("| FAIL |") == res.n_points


def test_summarize_with_no_points() -> None:
    res = summarize([], SearchSpec(slo=SLO), complete=False)
    assert res.capacity is None and res.n_points == 0 and "no point measured yet" in res.statement


def test_a_failing_first_rung_is_bisected_downwards_to_the_smallest_load() -> None:
    calls: list[float] = []
    res = search(threshold(3, calls), SearchSpec(slo=SLO, ladder=[8, 16, 32], max_points=10))
    assert calls == [8, 4, 2, 3] and res.capacity == 3 and res.interval == (3, 4)
    calls.clear()
    res = search(threshold(0, calls), SearchSpec(slo=SLO, ladder=[8, 16], max_points=10))
    assert calls == [8, 4, 2, 1] and res.capacity is None  # concurrency 1 fails: nothing is sustained


def test_a_marginal_capacity_point_is_never_a_verdict() -> None:
    ok = judge_point(8, SLO, ttft=[1000.0] * 3, tpot=[50.0] * 3, sent=300, failed=0, tier="VERDICT")
    edge = judge_point(
        9, SLO, ttft=[1900.0, 2000.0, 2090.0], tpot=[50.0] * 3, sent=300, failed=0, tier="VERDICT"
    )
    assert edge.passed and edge.marginal
    fail = point(10, False)
    spec = SearchSpec(slo=SLO, ladder=[8, 16], max_points=3)
    assert summarize([ok, fail], spec).tier == "VERDICT"
    res = summarize([ok, edge, fail], spec)
    assert res.capacity == 9 and res.tier == "DRAFT" and "marginal" in res.tier_reasons[0]
