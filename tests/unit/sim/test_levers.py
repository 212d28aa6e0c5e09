"""The simulator's levers move results the physically right way (virtual time, deterministic)."""

from __future__ import annotations

import pytest

from perftune.bench.workloads import WorkloadSpec
from perftune.hardware.ceilings import gpu
from perftune.models.resolve import model_card
from perftune.sim.calibration import Calibration
from perftune.sim.config import SimConfig, parse_vllm_flags
from perftune.sim.core import EngineCore, SimRequest, kv_capacity_blocks
from perftune.sim.predict import PredictSpec, predict

CARD = model_card("llama-3.1-8b")
H100 = gpu("h100")
CAL = Calibration(gpu=H100.key, jitter_cv=0.0)


def run(flags: list[str], wl: WorkloadSpec, concurrency: int, trials: int = 1) -> dict[str, float]:
    cfg = parse_vllm_flags(flags)
    res = predict(CARD, H100, cfg, CAL, PredictSpec(workload=wl, concurrency=concurrency, trials=trials))
    t = res.trials[0]
    return {
        "tok_s": t.output_tok_s,
        "ttft": t.ttft_ms.mean,
        "tpot": t.tpot_ms.mean,
        "itl_p99": t.itl_ms.p99,
        "hit": t.engine_prefix_cache_hit_rate or 0.0,
    }


def util_for_kv_tokens(tokens: int) -> float:
    """The gpu_memory_utilization that leaves about `tokens` of KV on the simulated H100."""
    weights = CARD.total_params * 2.0
    return (weights + CAL.non_kv_reserve_bytes + tokens * CARD.kv_bytes_per_token["bf16"]) / CAL.device_bytes(
        H100
    )


def test_more_max_num_seqs_raises_throughput_until_kv_bound() -> None:
    wl = WorkloadSpec(kind="random", isl=512, osl=128, num_requests=128)
    rising = [run(["--max-num-seqs", str(n)], wl, 64)["tok_s"] for n in (1, 4, 16, 64)]
    assert rising == sorted(rising) and rising[-1] > 8 * rising[0], rising
    # KV for ~16 sequences of 640 tokens: beyond that, more seqs cannot run at once (preemption churn).
    util = f"{util_for_kv_tokens(16 * 640):.4f}"
    capped = [
        run(["--max-num-seqs", str(n), "--gpu-memory-utilization", util, "--max-model-len", "2048"], wl, 64)[
            "tok_s"
        ]
        for n in (16, 64)
    ]
    assert capped[1] < capped[0] * 1.15, capped  # no gain past the KV bound
    assert capped[1] < rising[-1] * 0.6  # and far below the unbounded throughput


def test_fp8_kv_doubles_kv_capacity() -> None:
    bf16 = kv_capacity_blocks(CARD, H100, SimConfig(), CAL)
    fp8 = kv_capacity_blocks(CARD, H100, parse_vllm_flags(["--kv-cache-dtype", "fp8"]), CAL)
    assert fp8 / bf16 == pytest.approx(2.0, rel=0.01)


def test_prefix_caching_lowers_ttft_on_the_prefix_workload() -> None:
    wl = WorkloadSpec(kind="prefix", isl=2048, osl=32, num_requests=64, prefix_groups=4)
    on = run(["--enable-prefix-caching"], wl, 16)
    off = run(["--no-enable-prefix-caching"], wl, 16)
    assert on["hit"] > 0.5 and off["hit"] == 0.0
    assert on["ttft"] < 0.7 * off["ttft"], (on, off)


def test_smaller_batched_tokens_lowers_tpot_tail_and_raises_ttft() -> None:
    # 256 tokens per step no longer saturate the GEMMs (a step is then weight-read bound), so prefill
    # takes more, slower steps; decodes, in turn, never wait behind an 8k-token chunk.
    wl = WorkloadSpec(kind="random", isl=2048, osl=128, num_requests=128)
    big = run(["--max-num-batched-tokens", "8192"], wl, 32)
    small = run(["--max-num-batched-tokens", "256"], wl, 32)
    assert small["itl_p99"] < big["itl_p99"], (small, big)
    assert small["ttft"] > big["ttft"], (small, big)


def test_cuda_graphs_beat_eager_at_small_batch() -> None:
    wl = WorkloadSpec(kind="random", isl=128, osl=64, num_requests=8)
    assert run(["--enforce-eager"], wl, 1)["tpot"] > run([], wl, 1)["tpot"] + 1.0


def test_fp8_weights_and_tp_cut_memory_bound_decode() -> None:
    wl = WorkloadSpec(kind="random", isl=128, osl=64, num_requests=8)
    base = run([], wl, 1)["tpot"]
    fp8 = run(["--quantization", "fp8"], wl, 1)["tpot"]
    tp2 = run(["--tensor-parallel-size", "2"], wl, 1)["tpot"]
    assert 0.45 * base < fp8 < 0.75 * base
    assert 0.45 * base < tp2 < 0.8 * base  # all-reduce keeps TP=2 above half


def test_predict_is_deterministic_for_a_seed() -> None:
    cal = Calibration(gpu=H100.key, jitter_cv=0.02)
    spec = PredictSpec(workload=WorkloadSpec(kind="random", isl=256, osl=32, num_requests=32), concurrency=8)
    a = predict(CARD, H100, SimConfig(seed=3), cal, spec).summary.tpot_ms
    b = predict(CARD, H100, SimConfig(seed=3), cal, spec).summary.tpot_ms
    c = predict(CARD, H100, SimConfig(seed=4), cal, spec).summary.tpot_ms
    assert a == b and a != c


def test_preemption_frees_everything_and_finishes_all() -> None:
    cfg = parse_vllm_flags(
        ["--gpu-memory-utilization", f"{util_for_kv_tokens(4000):.4f}", "--max-model-len", "3000"]
    )
    core = EngineCore(CARD, H100, cfg, CAL)
    reqs = [
        SimRequest(rid=i, prompt_len=500, max_tokens=900, prompt_ids=list(range(i, i + 500)))
        for i in range(8)
    ]
    for r in reqs:
        core.add(r)
    steps = 0
    while core.has_work() and steps < 100_000:
        core.step()
        steps += 1
    assert all(r.finished and r.output == 900 for r in reqs)
    assert core.counters.preemptions > 0
    assert core.used == 0 and not core.running


def test_unknown_flags_are_refused_by_name() -> None:
    from perftune.errors import ConfigError

    with pytest.raises(ConfigError, match="the simulator's live server does not speculate"):
        parse_vllm_flags(["--speculative-config", "{}"])
    with pytest.raises(ConfigError, match="--enable-dbo"):
        parse_vllm_flags(["--enable-dbo"])  # dual-batch overlap: not modelled, refused by name
    assert parse_vllm_flags(["--enable-expert-parallel"]).enable_expert_parallel
    with pytest.raises(ConfigError, match="compilation-config key"):
        parse_vllm_flags(["--compilation-config", '{"level": 3}'])
    assert (
        parse_vllm_flags(["--compilation-config", '{"cudagraph_mode": "piecewise"}']).cudagraph_mode
        == "PIECEWISE"
    )
    assert parse_vllm_flags(["--enforce-eager"]).cudagraph_mode == "NONE"
    assert parse_vllm_flags(["--load-format", "dummy"]) == SimConfig()
    # vLLM's largest captured graph, set inside --compilation-config or by its own flag (which wins)
    size = '{"max_cudagraph_capture_size": 2048}'
    assert parse_vllm_flags(["--compilation-config", size]).max_cudagraph_capture_size == 2048
    both = ["--compilation-config", size, "--max-cudagraph-capture-size", "1024"]
    assert parse_vllm_flags(both).max_cudagraph_capture_size == 1024
    with pytest.raises(ConfigError, match="max_cudagraph_capture_size must be a positive integer"):
        parse_vllm_flags(["--compilation-config", '{"max_cudagraph_capture_size": "big"}'])


def test_nvfp4_weights_read_4_5_bits_and_run_fp4_gemms_only_where_the_gpu_has_them() -> None:
    """`--quantization modelopt_fp4` (vLLM's name for a ModelOpt NVFP4 checkpoint): 4-bit weights and an
    FP8 scale per 16 (0.5625 bytes), so a weight-read-bound decode step reads 0.5625 / 2 of bf16's bytes
    everywhere; prefill's GEMMs run at the FP4 peak on a B200 (2x its FP8, 4x its bf16) but at the bf16
    rate on an H100/H200 (4-bit weights dequantized into bf16 GEMMs, vLLM's Marlin path)."""
    from perftune.errors import ConfigError
    from perftune.sim.timing import StepModel

    cfg = parse_vllm_flags(["--quantization", "modelopt_fp4"])
    assert cfg.quantization == "nvfp4" and cfg.weight_dtype == "nvfp4"
    for g, gemm_ratio in ((gpu("b200"), 0.25), (gpu("h200"), 1.0), (H100, 1.0)):
        cal = Calibration(gpu=g.key)
        bf16, fp4 = (StepModel.build(CARD, g, c, cal) for c in (SimConfig(), cfg))
        assert fp4.weight_read_s / bf16.weight_read_s == pytest.approx(0.5625 / 2)
        assert fp4.flop_s_per_token / bf16.flop_s_per_token == pytest.approx(gemm_ratio)
    assert gpu("b200").native_fp4 and not gpu("h200").native_fp4
    # the decode factor scales the reads alone, the GEMM factor the FLOPs alone (priors until fitted)
    b200 = gpu("b200")
    half = Calibration(gpu=b200.key, nvfp4_weight_efficiency=0.5, nvfp4_gemm_efficiency=0.8)
    base, slow = (StepModel.build(CARD, b200, cfg, c) for c in (Calibration(gpu=b200.key), half))
    assert slow.weight_read_s == pytest.approx(2 * base.weight_read_s)
    assert slow.flop_s_per_token == pytest.approx(base.flop_s_per_token / 0.8)
    # a smaller footprint leaves more KV; a bf16-only flag value is still refused by name
    assert kv_capacity_blocks(CARD, H100, cfg, CAL) > kv_capacity_blocks(
        CARD, H100, parse_vllm_flags([]), CAL
    )
    wl = WorkloadSpec(kind="random", isl=128, osl=64, num_requests=8)
    assert (
        run(["--quantization", "modelopt_fp4"], wl, 1)["tpot"] < run(["--quantization", "fp8"], wl, 1)["tpot"]
    )
    with pytest.raises(ConfigError, match="invalid choice: 'awq'"):
        parse_vllm_flags(["--quantization", "awq"])
