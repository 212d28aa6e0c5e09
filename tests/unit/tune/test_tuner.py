"""The tuner's order, crowning rule and failure handling, on deterministic fake and simulated nodes."""

from __future__ import annotations

from collections.abc import Sequence

from perftune.hardware.ceilings import gpu
from perftune.models.resolve import model_card
from perftune.sim.calibration import for_gpu
from perftune.tune.arms import Arm, generate_arms, grid_arms, read_tsv, write_tsv
from perftune.tune.evaluate import PredictEvaluator, classify, feasibility
from perftune.tune.search import Failure, Measure, Outcome, TuneConfig, interleave, run_tuner

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


def _arms(names: list[str]) -> list[Arm]:
    return [
        Arm(engine="sim", name=n, levers={} if n == "baseline" else {"batch-cap": 64 + i})
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
