"""The tuner's order, crowning rule and failure handling, on deterministic fake and simulated nodes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from perftune.errors import ConfigError
from perftune.hardware.ceilings import gpu
from perftune.models.resolve import model_card
from perftune.sim.calibration import for_gpu
from perftune.tune.arms import Arm, generate_arms, grid_arms, read_tsv, write_tsv
from perftune.tune.evaluate import PredictEvaluator, classify, feasibility
from perftune.tune.search import Failure, Measure, Outcome, TuneConfig, interleave, run_tuner, score

CFG = TuneConfig(ladder=[8, 32], slo_ttft_ms=5000, slo_tpot_ms=100, trials=3, top_k=2)


class FakeNode:
    """tok/s = the arm's quality x concurrency, tiny noise by trial; 'crash' arms fail."""

    def __init__(self, quality: dict[str, float], failing: dict[str, str] | None = None) -> None:
        self.quality, self.failing, self.calls = quality, failing or {}, []

    def run(self, arm: Arm, concurrencies: Sequence[int], trial: int, *, screening: bool) -> Outcome:
        self.calls.append((arm.name, trial, screening))
        if arm.name in self.failing:
            return Outcome([], 60.0, Failure(arm.key, self.failing[arm.name], "log tail"))  # type: ignore[arg-type]
        q = self.quality.get(arm.name, 13.0)  # a composed arm: better than either part
        ms = [Measure(arm.key, c, trial, q * c * (1 + 0.001 * trial), 100.0, 10.0) for c in concurrencies]
        return Outcome(ms, 60.0 + 10.0 * len(concurrencies))


def _arms(names: list[str], engine: str = "sim") -> list[Arm]:
    return [
        Arm(engine=engine, name=n, levers={} if n == "baseline" else {"batch-cap": 64 + i})
        for i, n in enumerate(names)
    ]


def test_interleave_is_abab() -> None:
    a, b, c = _arms(["baseline", "x", "y"])
    assert [(arm.name, t) for arm, t in interleave([a, b, c], range(2))] == [
        ("baseline", 0),
        ("x", 0),
        ("y", 0),
        ("baseline", 1),
        ("x", 1),
        ("y", 1),
    ]


def test_full_treatment_runs_interleaved_and_crowns_only_with_three_trials() -> None:
    node = FakeNode({"baseline": 10, "x": 12, "y": 11, "z": 5})
    res = run_tuner(_arms(["baseline", "x", "y", "z"]), node, CFG)
    full = [(arm, t) for arm, t, stage in res.order if stage == "full"]
    trials = [t for _a, t in full]
    assert trials == sorted(trials)  # every finalist's trial t before any trial t+1 (ABAB)
    names = [a for a, _t in full]
    assert names[: len(set(names))] == names[len(set(names)) : 2 * len(set(names))]  # same cycle each pass
    e = res.engines[0]
    assert e.crowned is not None and e.crowned.name.startswith(("x", "composed"))
    assert all(n >= 3 for _name, _s, n in e.top3)
    assert e.ratio is not None and e.ratio > 1.0 and e.ratio_ci95 is not None


def test_a_failing_arm_is_recorded_and_never_crowned() -> None:
    node = FakeNode({"baseline": 10, "x": 12, "y": 20}, failing={"y": "crash"})
    res = run_tuner(_arms(["baseline", "x", "y"]), node, CFG)
    assert [f.klass for f in res.failures] == ["crash"]
    assert res.engines[0].crowned is not None and res.engines[0].crowned.name != "y"


def test_budget_stops_the_sweep() -> None:
    node = FakeNode({"baseline": 10, "x": 12, "y": 11})
    res = run_tuner(_arms(["baseline", "x", "y"]), node, TuneConfig(**{**CFG.__dict__, "budget_gpu_s": 200}))
    assert res.budget_exhausted and res.gpu_s < 400


def test_failure_classes() -> None:
    assert classify("deploy", "torch.OutOfMemoryError: CUDA out of memory", False, 0) == "oom"
    assert classify("deploy", "ValueError: bad flag", False, 0) == "boot"
    assert classify("bench", "", server_alive=False, timeouts=0) == "crash"
    assert classify("bench", "", server_alive=True, timeouts=3) == "wedge"


def test_arms_follow_the_catalog_and_the_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    dense = generate_arms(model_card("llama-3.1-8b"), ["vllm", "sglang"])
    assert dense[0].name == "baseline" and any(a.name == "kv-cache-dtype=fp8" for a in dense)
    assert not any("expert-parallel" in a.name for a in dense)
    moe = generate_arms(model_card("qwen3-30b-a3b"), ["vllm"])
    assert any(a.name == "expert-parallel=True" for a in moe)
    f = tmp_path / "arms.tsv"
    write_tsv(dense, f)
    assert read_tsv(f) == dense  # the TSV round-trips, so users can edit it


def test_simulator_prunes_infeasible_arms() -> None:
    card, g = model_card("llama-3.1-8b"), gpu("h100")
    check = feasibility(card, g, for_gpu(g), concurrency=64, context=4096)
    assert check(Arm(engine="vllm", name="b", levers={})) is None
    assert "KV too small" in (check(Arm(engine="vllm", name="m", levers={"memory-fraction": 0.22})) or "")
    ev = PredictEvaluator(card, g, for_gpu(g), isl=512, osl=32)
    arms = grid_arms("sim", {"batch-cap": 64}, {"batch-cap": [8, 64, 256]})
    res = run_tuner(arms, ev, TuneConfig(ladder=[32], slo_ttft_ms=5000, slo_tpot_ms=100, trials=3, top_k=2))
    assert res.engines[0].crowned is not None and res.engines[0].crowned.levers["batch-cap"] in (64, 256)


def test_journal_replays_finished_deploys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from perftune.tune.evaluate import RecordingEvaluator

    arms = _arms(["baseline", "x", "y"])
    journal = tmp_path / "journal.jsonl"
    first = run_tuner(arms, RecordingEvaluator(FakeNode({"baseline": 10, "x": 12, "y": 11}), journal), CFG)
    lines = journal.read_text().splitlines()
    assert len(lines) == len(first.order)
    # killed after 5 deploys, with a torn last line: the re-run replays 5 and runs only the rest
    journal.write_text("\n".join(lines[:5]) + '\n{"key": "torn')
    node = FakeNode({"baseline": 10, "x": 12, "y": 11})
    ev = RecordingEvaluator(node, journal)
    again = run_tuner(arms, ev, CFG)
    assert ev.replayed == 5 and len(node.calls) == len(first.order) - 5
    assert again.engines[0].crowned == first.engines[0].crowned and again.gpu_s == first.gpu_s


class TwoWorkloadNode:
    """Each arm has a quality per workload; trial noise is +/-1% so intervals are tight but real."""

    workloads = ("random", "prefix")

    def __init__(self, quality: dict[str, tuple[float, float]]) -> None:
        self.quality, self.calls = quality, []

    def run(self, arm: Arm, concurrencies: Sequence[int], trial: int, *, screening: bool) -> Outcome:
        self.calls.append((arm.name, trial, screening))
        q = self.quality.get(arm.name, (10.0, 10.0))
        noise = 1 + 0.01 * (-1) ** trial
        ms = [
            Measure(arm.key, c, trial, qw * c * noise, 100.0, 10.0, w)
            for w, qw in zip(self.workloads, q, strict=True)
            for c in concurrencies
        ]
        return Outcome(ms, 60.0)


def test_score_is_the_geometric_mean_over_workloads_and_each_workload_gets_its_ratio() -> None:
    # x wins random by 30% but loses prefix by 40% (geomean 0.88); y wins both by 10%: y is crowned
    node = TwoWorkloadNode({"baseline": (10, 10), "x": (13, 6), "y": (11, 11)})
    cfg = TuneConfig(**{**CFG.__dict__, "workloads": ["random", "prefix"]})
    res = run_tuner(_arms(["baseline", "x", "y"]), node, cfg)
    e = res.engines[0]
    assert e.crowned is not None and e.crowned.name == "y"
    assert set(e.by_workload) == {"random", "prefix"}
    for v in e.by_workload.values():
        assert v.ratio is not None and abs(v.ratio - 1.1) < 0.02
        assert v.ratio_ci95 is not None and v.ratio_ci95[0] < v.ratio < v.ratio_ci95[1]
        assert v.concurrency == 32  # the top of the ladder meets the SLO here
    assert {w for w, *_ in e.pareto} == {"random", "prefix"}
    # a crowned arm has >= 3 trials on every workload at every concurrency
    assert all(n >= 3 for _name, _s, n in e.top3)


def test_an_arm_breaking_the_slo_on_one_workload_has_no_score() -> None:
    cfg = TuneConfig(**{**CFG.__dict__, "workloads": ["random", "prefix"]})
    ok = [Measure("a", 8, t, 100.0, 50.0, 10.0, w) for t in range(3) for w in ("random", "prefix")]
    assert score(ok, cfg)[0] == pytest.approx(100.0) and len(score(ok, cfg)[1]) == 3
    slow_prefix = [
        m if m.workload == "random" else Measure("a", 8, m.trial, 100.0, 50.0, 500.0, "prefix") for m in ok
    ]
    assert score(slow_prefix, cfg) == (None, [])


def test_tuner_refuses_a_workload_its_evaluator_does_not_measure() -> None:
    cfg = TuneConfig(**{**CFG.__dict__, "workloads": ["random", "chat"]})
    with pytest.raises(ConfigError, match="chat"):
        run_tuner(_arms(["baseline", "x"]), TwoWorkloadNode({}), cfg)


def test_no_halving_rung_when_every_survivor_reaches_the_final() -> None:
    # 4 arms, top_k 3: the rung could drop nobody, so it is not paid for
    node = FakeNode({"baseline": 10, "x": 12, "y": 11, "z": 9})
    res = run_tuner(_arms(["baseline", "x", "y", "z"]), node, TuneConfig(**{**CFG.__dict__, "top_k": 3}))
    assert "halving" not in {stage for _a, _t, stage in res.order}
    # 8 arms, top_k 2: the rung runs on the top half (4) and sends 2 on, plus the baseline
    node = FakeNode({n: 10 + i for i, n in enumerate("abcdefg")} | {"baseline": 9})
    res = run_tuner(_arms(["baseline", *"abcdefg"]), node, CFG)
    assert sum(1 for *_x, stage in res.order if stage == "halving") == 4
    assert len({a for a, _t, stage in res.order if stage == "full"}) == 3


def test_autotune_equivalent_is_priced_from_this_runs_screening_deploys() -> None:
    from perftune.campaign.tuning import autotune_equivalent

    node = FakeNode({"baseline": 10, "x": 12, "y": 11, "z": 9})
    arms = ["baseline", "x", "y", "z"]  # 3 challengers, top_k 2: screening runs
    res = run_tuner(_arms(arms, "vllm"), node, CFG)
    per_screen = 60.0 + 10.0  # FakeNode: 60 s deploy + 10 s per concurrency, screening runs one
    line = autotune_equivalent(res, 1)
    assert "mean screening deploy" in line
    n = int(res.gpu_s // per_screen)
    assert (
        f"({per_screen:.0f} s:" in line
        and "whole default 8-point grid" in line
        and f"{n - 8} more runs" in line
    )
    short = run_tuner(
        _arms(arms, "vllm"),
        FakeNode(node.quality),
        TuneConfig(**{**CFG.__dict__, "budget_gpu_s": 300}),
    )
    assert f"{int(short.gpu_s // per_screen)} of the 8 points" in autotune_equivalent(short, 1)
    # two engines tuned: auto_tune is priced in vLLM's own share of the GPU time, not the total
    both = run_tuner(
        _arms(arms, "vllm") + _arms(arms, "sim"),
        FakeNode(node.quality),
        CFG,
    )
    vllm_s = sum(s for engine, _stage, s in both.outcomes if engine == "vllm")
    assert vllm_s < both.gpu_s and f"in the same {vllm_s / 60:.1f} GPU-min" in autotune_equivalent(both, 1)
    # a two-arm A/B skips screening: priced from its full deploys (60 s + 2 concurrencies x 10 s), and says so
    ab = run_tuner(_arms(["baseline", "x"], "vllm"), FakeNode(node.quality), CFG)
    assert "(80 s:" in (ab_line := autotune_equivalent(ab, 1)) and "no screening ran" in ab_line


def test_a_two_arm_ab_skips_screening_and_a_failed_arm_is_not_redeployed() -> None:
    node = FakeNode({"baseline": 10, "x": 12})
    res = run_tuner(_arms(["baseline", "x"]), node, CFG)
    assert [stage for *_x, stage in res.order] == ["full"] * 6  # 2 arms x 3 trials, nothing screened
    assert [(a, t) for a, t, _s in node.calls] == [(n, t) for t in range(3) for n in ("baseline", "x")]
    assert any("screening skipped" in n for n in res.notes)
    assert res.engines[0].crowned is not None and res.engines[0].crowned.name == "x"
    # more challengers than top_k (2): screening runs, one short deploy each
    res = run_tuner(_arms(["baseline", "x", "y", "z"]), FakeNode({"baseline": 10, "x": 12, "y": 11}), CFG)
    assert sum(1 for *_x, stage in res.order if stage == "screen") == 4
    # a finalist whose deploy crashes is deployed once, not once per trial
    node = FakeNode({"baseline": 10, "x": 12}, failing={"x": "crash"})
    res = run_tuner(_arms(["baseline", "x"]), node, CFG)
    assert [a for a, _t, _s in node.calls].count("x") == 1 and len(res.failures) == 1
    assert res.engines[0].crowned is None or res.engines[0].crowned.name == "baseline"


def test_a_time_box_stops_between_deploys_and_the_rerun_resumes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from perftune.tune.evaluate import RecordingEvaluator, TuneStopped

    arms = _arms(["baseline", "x", "y"])
    journal = tmp_path / "journal.jsonl"
    node = FakeNode({"baseline": 10, "x": 12, "y": 11})
    with pytest.raises(TuneStopped, match="time limit"):
        run_tuner(arms, RecordingEvaluator(node, journal, stop_at=0.0), CFG)  # already past: nothing runs
    assert node.calls == [] and not journal.exists()
    full = run_tuner(arms, RecordingEvaluator(node, journal), CFG)
    ev = RecordingEvaluator(FakeNode({}), journal, stop_at=0.0)  # every deploy journaled: no stop
    assert run_tuner(arms, ev, CFG).engines[0].crowned == full.engines[0].crowned


def test_a_tight_budget_shrinks_the_final_and_skips_the_rung_so_a_crown_is_still_reached() -> None:
    # FakeNode: a screening deploy costs 70 s, a full one 80 s. Six arms screen for 420 s; 600 s are
    # left: the top-3 final (4 arms x 3 trials ~ 1,050 s) and the rung (3 x 70 s) cannot both fit.
    node = FakeNode({"baseline": 10, "a": 14, "b": 13, "c": 12, "d": 11, "e": 9})
    cfg = TuneConfig(**{**CFG.__dict__, "top_k": 3, "budget_gpu_s": 1020.0})
    res = run_tuner(_arms(["baseline", *"abcde"]), node, cfg)
    stages = [stage for *_x, stage in res.order]
    assert "halving" not in stages and stages.count("full") == 6  # the best challenger and the baseline
    assert not res.budget_exhausted and res.gpu_s <= 1020.0
    e = res.engines[0]
    assert e.crowned is not None and e.crowned.name == "a" and all(n >= 3 for _a, _s, n in e.top3)
    assert any("top 1 (not 3)" in n for n in res.notes) and any("rung skipped" in n for n in res.notes)
    # with room to spare, the same sweep keeps its top 3 and no note is written
    roomy = run_tuner(
        _arms(["baseline", *"abcde"]),
        FakeNode(node.quality),
        TuneConfig(**{**cfg.__dict__, "budget_gpu_s": 1e9}),
    )
    assert roomy.notes == [] and sum(1 for *_x, s in roomy.order if s == "full") == 12


def test_autotune_line_says_whether_the_crowned_change_is_inside_its_grid() -> None:
    from perftune.campaign.tuning import autotune_equivalent

    def crowned_by(levers: dict[str, object]) -> str:
        arms = [Arm(engine="vllm", name="baseline"), Arm(engine="vllm", name="x", levers=levers)]
        res = run_tuner(arms, FakeNode({"baseline": 10, "x": 13}), CFG)
        assert res.engines[0].crowned is not None and res.engines[0].crowned.name == "x"
        return autotune_equivalent(res, 2)

    assert "outside that grid: auto_tune could not have found it" in crowned_by({"kv-cache-dtype": "fp8"})
    assert "(--max-num-seqs 256) is inside that grid" in crowned_by({"batch-cap": 256})


def test_engines_tuned_side_by_side_must_share_the_prefix_cache_state() -> None:
    from perftune.tune.arms import prefix_cache_mismatch

    defaults = {"vllm": True, "sglang": True, "llamacpp": None}
    same = [Arm(engine="vllm", name="baseline"), Arm(engine="sglang", name="baseline")]
    assert prefix_cache_mismatch(same, defaults) is None
    off = [
        Arm(engine="vllm", name="baseline"),
        Arm(engine="sglang", name="baseline", levers={"prefix-cache": False}),
    ]
    assert prefix_cache_mismatch(off, defaults) == "baselines differ in prefix caching: sglang off, vllm on"
    # an engine whose state is unknown is not counted as a mismatch; a challenger's lever is not the baseline
    unknown = [
        *same[:1],
        Arm(engine="llamacpp", name="baseline"),
        Arm(engine="vllm", name="x", levers={"prefix-cache": False}),
    ]
    assert prefix_cache_mismatch(unknown, defaults) is None


def test_failure_classes_of_a_live_server_name_what_it_did() -> None:
    # a server that stays up but breaks streams or answers errors is not a "crash"
    assert classify("bench", "", True, 0, dropped=3) == "dropped"
    assert classify("bench", "", True, 0, http_errors=2) == "http-error"
    assert classify("bench", "", True, 1, dropped=3) == "wedge"
    assert classify("bench", "", False, 0, dropped=3) == "crash"


def test_the_journal_reports_every_deploy_and_the_budget_as_it_goes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # `perftune tune` printed nothing for minutes: every deploy now says what it is and what it cost
    from perftune.tune.evaluate import RecordingEvaluator

    lines: list[str] = []
    node = FakeNode({"baseline": 10, "x": 12}, failing={"y": "crash"})
    ev = RecordingEvaluator(node, tmp_path / "j.jsonl", observe=lines.append, budget_gpu_s=3600)
    res = run_tuner(_arms(["baseline", "x", "y"]), ev, CFG)
    starts = [ln for ln in lines if ln.startswith("tune: deploy ")]
    assert len(starts) == len(res.order) and "of 60 GPU-min spent" in starts[-1]
    assert any("sim/y failed: crash" in ln for ln in lines)
    assert any("tok/s" in ln for ln in lines)
