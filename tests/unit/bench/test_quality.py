"""Measurement-quality rules: warmup stability, outlier trials, high CV, engine-log compilation, tiers."""

from pathlib import Path

import pytest

from perftune.bench.load import assess_load
from perftune.bench.metrics import TrialResult, summarize_trial
from perftune.bench.records import Chunk
from perftune.bench.runner import (
    BenchConfig,
    BenchResult,
    EngineLog,
    WarmupReport,
    assemble,
    compile_flag,
    compile_markers,
    sim_flag,
    sol_inputs,
)
from perftune.bench.stats import across_trials, high_cv, outlier_trials, rel_diff, warmup_stable
from perftune.bench.workloads import WorkloadSpec, build_workload
from perftune.context import tier_for

from .factories import record

MS = 1_000_000


def _trial(i: int, tok_s: float, tpot_ms: float = 10.0) -> TrialResult:
    """A trial with the given output tok/s and per-request TPOT (what the quality rules read)."""
    chunks = [Chunk(50 * MS, 1, 1), Chunk(int((50 + tpot_ms) * MS), 1, 1)]
    rec = record(
        trial=i,
        t_end_ns=chunks[-1].t_ns,
        input_tokens=100,
        output_tokens=2,
        expected_input_tokens=100,
        chunks=chunks,
    )
    load = assess_load([0], [0], concurrency=1, requested_rate=None)
    t = summarize_trial(i, [rec], load, {})
    assert t.tpot_ms.p50 == pytest.approx(tpot_ms)
    return t.model_copy(update={"output_tok_s": float(tok_s)})


def _cfg(**kw: object) -> BenchConfig:
    base: dict[str, object] = {
        "endpoint": "http://127.0.0.1:1",
        "model": "m",
        "concurrency": 16,
        "baseline": "b",
        "workload": WorkloadSpec(kind="random", isl=8, osl=4, num_requests=4),
    }
    return BenchConfig.model_validate({**base, **kw})


def _assemble(cfg: BenchConfig, trials: list[TrialResult], warmup: WarmupReport | None = None) -> BenchResult:
    assert cfg.workload is not None
    wl = build_workload(cfg.workload)
    facts: dict[str, object] = {"owned_by": "vllm", "version": "0.26.0"}
    started = "2025-01-01T00:00:00+00:00"
    return assemble(cfg, wl, facts, 0, started, trials, 0, warmup=warmup, sol=sol_inputs(cfg))


# ---------------------------------------------------------------- pure rules


def test_warmup_stability_rule_compares_the_last_two_rounds_within_10_percent() -> None:
    assert not warmup_stable([])
    assert not warmup_stable([1000.0])
    assert not warmup_stable([745.0, 1066.0])  # cold then warm: 30% apart
    assert warmup_stable([745.0, 1066.0, 1050.0])  # two warm rounds: 1.5%
    assert warmup_stable([100.0, 91.0]) and not warmup_stable([100.0, 89.0])
    assert rel_diff(0.0, 0.0) == 0.0 and rel_diff(90.0, 100.0) == pytest.approx(0.1)


def test_outlier_rule_flags_the_cold_trial_and_only_it() -> None:
    # The reported case: trial 0 ran while the engine JIT-compiled a kernel.
    assert outlier_trials([745.0, 1066.0, 1050.0]) == [0]
    assert outlier_trials([1066.0, 1050.0, 1058.0]) == []
    assert outlier_trials([745.0, 1066.0]) == []  # two trials: neither can be told apart (CV covers it)
    assert outlier_trials([100.0, None, 100.0, 70.0]) == [3]
    assert outlier_trials([100.0, 116.0, 100.0]) == [1] and outlier_trials([100.0, 114.0, 100.0]) == []


def test_high_cv_rule() -> None:
    a = across_trials([745.0, 1066.0, 1050.0])
    assert a.cv is not None and 0.18 < a.cv < 0.20
    assert high_cv({"output_tok_s": a}) == {"output_tok_s": a.cv}
    assert high_cv({"output_tok_s": across_trials([1066.0, 1050.0, 1058.0])}) == {}
    assert high_cv({"x": across_trials([1.0])}) == {}  # one trial: no CV


def test_tier_reasons_name_outliers_high_cv_and_flags() -> None:
    assert tier_for(trials=3, same_node=True, baseline="b") == ("VERDICT", [])
    tier, why = tier_for(
        trials=3,
        same_node=True,
        baseline="b",
        outlier_trials=[0],
        high_cv={"output_tok_s": 0.19},
        flags=["engine log shows compilation during trial 0: Compiling"],
    )
    assert tier == "DRAFT"
    assert why[0].startswith("outlier trial(s) 0")
    assert why[1] == "high CV: output_tok_s 19.0% across trials"
    assert why[2].startswith("engine log shows compilation during trial 0")


# ---------------------------------------------------------------- engine-log scan

VLLM_LOG = """\
INFO 05-01 12:00:01 [loggers.py:116] Engine 000: Avg prompt throughput: 1024.0 tokens/s, Avg gen...
INFO:     127.0.0.1:53312 - "POST /v1/completions HTTP/1.1" 200 OK
INFO 05-01 12:00:02 [backends.py:135] Compiling a graph for dynamic shape takes 12.31 s
INFO 05-01 12:00:03 [gpu_model_runner.py:2000] Capturing CUDA graph shapes: 100%|##########| 67/67
WARNING 05-01 12:00:04 torch._dynamo hit config.recompile_limit (8)
INFO 05-01 12:00:05 Triton autotuning for function _fwd_kernel finished after 3.1s
INFO 05-01 12:00:06 [fused_moe.py:700] JIT kernel for shape (16, 4096) built
INFO 05-01 12:00:07 Prefix cache hit rate: 0.00%
"""


def test_compile_markers_find_compilation_lines_and_ignore_serving_lines() -> None:
    hits = compile_markers(VLLM_LOG)
    assert [label for label, _ in hits] == [
        "compiling",
        "CUDA graph capture",
        "torch.compile",
        "Triton",
        "JIT",
    ]
    assert all("throughput" not in line and "POST" not in line for _, line in hits)
    assert compile_markers("INFO request finished\nDEBUG scheduled 16 seqs\n") == []
    flag = compile_flag(2, hits)
    assert flag is not None and flag.startswith("engine log shows compilation during trial 2: INFO")
    assert "Compiling a graph" in flag and "(+4 more line(s))" in flag
    assert compile_flag(0, []) is None


def test_engine_log_reads_only_what_a_trial_added(tmp_path: Path) -> None:
    log = EngineLog(tmp_path / "engine.log")
    assert log.size() == 0 and log.since(0) == ""  # no file yet: nothing, no error
    (tmp_path / "engine.log").write_text("Compiling at startup\n")
    mark = log.size()
    with (tmp_path / "engine.log").open("a") as fh:
        fh.write("INFO serving\nCapturing CUDA graph shapes\n")
    assert compile_markers(log.since(mark)) == [("CUDA graph capture", "Capturing CUDA graph shapes")]
    (tmp_path / "engine.log").write_text("x\n")  # truncated (rotated): everything is new
    assert log.since(mark) == "x\n"


def test_sim_flag_only_when_the_simulator_says_it_was_not_faithful() -> None:
    assert sim_flag(0, None) is None
    assert sim_flag(0, {"faithful": True, "late_steps": 0}) is None
    f = sim_flag(1, {"faithful": False, "late_steps": 7, "schedule_lag_ms": {"p50": 0.1, "p99": 4.5}})
    assert f == "trial 1: simulator fell behind its virtual schedule (schedule lag p99 4.50 ms, 7 late steps)"


# ---------------------------------------------------------------- assembled summaries


def test_a_cold_first_trial_is_flagged_and_the_result_is_draft() -> None:
    run = _assemble(_cfg(), [_trial(0, 745), _trial(1, 1066), _trial(2, 1050)])
    s = run.summary
    assert [t.outlier for t in run.trials] == [True, False, False]
    flags = s.flags
    assert isinstance(flags, list) and len(flags) == 2
    assert flags[0].startswith("trial 0 is an outlier: output 745.0 tok/s is -29% off the median 1,050.0")
    assert flags[1].startswith("high CV across trials: output_tok_s 1")
    assert run.context.tier == "DRAFT"
    assert any(r.startswith("outlier trial(s) 0") for r in run.context.tier_reasons)
    assert any(r.startswith("high CV: output_tok_s") for r in run.context.tier_reasons)


def test_agreeing_trials_keep_verdict_and_median_tpot_is_summarized() -> None:
    run = _assemble(_cfg(), [_trial(0, 1066, 9.0), _trial(1, 1050, 10.0), _trial(2, 1058, 11.0)])
    assert run.summary.flags == []
    assert run.context.tier == "VERDICT", run.context.tier_reasons
    med = run.summary.tpot_median_ms
    assert not isinstance(med, bool | list | dict)
    assert med.trials == pytest.approx([9.0, 10.0, 11.0]) and med.mean == pytest.approx(10.0)


def test_high_cv_on_median_tpot_alone_is_flagged() -> None:
    run = _assemble(_cfg(), [_trial(0, 1000, 8.0), _trial(1, 1000, 10.0), _trial(2, 1000, 12.0)])
    assert run.summary.flags == ["high CV across trials: tpot_median_ms 20.0% > 10%"]
    assert run.context.tier == "DRAFT"


def test_per_trial_flags_and_an_unstable_warmup_make_it_draft() -> None:
    t1 = _trial(1, 1050).model_copy(update={"flags": ["engine log shows compilation during trial 1: JIT"]})
    warm = WarmupReport(
        rounds=3,
        requests=48,
        round_size=16,
        concurrency=16,
        metric="output_tok_s",
        round_values=[500.0, 800.0, 1000.0],
        until_stable=True,
        stabilized=False,
        stop="max_rounds",
        rule="r",
    )
    run = _assemble(_cfg(), [_trial(0, 1050), t1, _trial(2, 1050)], warmup=warm)
    flags = run.summary.flags
    assert isinstance(flags, list)
    assert flags == [
        "engine log shows compilation during trial 1: JIT",
        "warmup did not stabilize: the last two of 3 rounds' output_tok_s differ by 20% (> 10%; stopped on "
        "max_rounds)",
    ]
    assert run.context.tier_reasons == flags
    assert run.summary.warmup.stabilized is False


def test_decode_sol_is_analytical_and_needs_model_and_gpu() -> None:
    trials = [_trial(i, 1000, 20.0) for i in range(3)]
    assert _assemble(_cfg(gpu="h100"), trials).summary.sol is None
    sol = _assemble(_cfg(gpu="h100", model_card="llama-3.1-8b"), trials).summary.sol
    assert isinstance(sol, dict)
    assert sol["basis"].startswith("analytical") and sol["gpu"] == "h100-sxm" and sol["batch"] == 16
    assert sol["tpot_median_ms"] == pytest.approx(20.0)
    # 8B bf16 on one H100: the weights alone take ~5 ms per step, so 20 ms is well under the roofline.
    assert 10.0 < sol["decode_sol_pct"] < 60.0
    open_loop = _assemble(_cfg(concurrency=None, rate=5.0, gpu="h100", model_card="llama-3.1-8b"), trials)
    assert open_loop.summary.sol["decode_sol_pct"] is None
