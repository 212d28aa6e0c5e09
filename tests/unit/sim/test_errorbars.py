"""Every prediction carries the simulator's own measured error: residuals per regime from a fit, and
the interval they give (own regime, nearest regime flagged as extrapolated, or none, said)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from perftune.errors import ConfigError
from perftune.sim.errorbars import NOISE_FLOOR, band, dtype_of, interval, regime, residuals, summarize

ROOT = Path(__file__).resolve().parents[3]


def test_regimes_split_concurrency_dtype_and_workload() -> None:
    assert [band(c) for c in (1, 4, 5, 48, 49, 256)] == ["c1-4", "c1-4", "c5-48", "c5-48", "c49+", "c49+"]
    assert dtype_of("bf16", "auto") == "bf16" and dtype_of("fp8", "fp8") == "fp8w+fp8kv"
    assert dtype_of("bf16", "fp8") == "fp8kv"
    assert regime(64, "fp8", "bf16", "random") == "c49+/fp8w/random"


def test_residuals_are_log_ratios_per_regime_and_metric() -> None:
    table = residuals(
        [
            ("c49+/bf16/random", {"tpot_ms": 18.6, "ttft_ms": 529.0}, {"tpot_ms": 15.6, "ttft_ms": 820.0}),
            ("c49+/bf16/random", {"tpot_ms": 20.0}, {"tpot_ms": 16.0}),
            ("c1-4/fp8w+fp8kv/random", {"tpot_ms": 3.43}, {"tpot_ms": 4.32}),
        ]
    )
    hi = table["c49+/bf16/random"]["tpot_ms"]
    assert hi.n == 2 and hi.mean == pytest.approx((math.log(18.6 / 15.6) + math.log(20 / 16)) / 2)
    assert table["c49+/bf16/random"]["ttft_ms"].n == 1
    assert table["c1-4/fp8w+fp8kv/random"]["tpot_ms"].mean == pytest.approx(math.log(3.43 / 4.32))


def test_an_interval_comes_from_its_regime_and_corrects_the_bias() -> None:
    # the simulator predicted TPOT 19% high at c=64 in three points: a new prediction of 18.6 ms means
    # a measurement near 15.6 ms, and the interval is centred there
    logs = [math.log(1.19), math.log(1.17), math.log(1.21)]
    table = {"c49+/bf16/random": {"tpot_ms": summarize(logs)}}
    iv = interval("tpot_ms", 18.6, "c49+/bf16/random", table)
    assert not iv.extrapolated and "n=3 points" in iv.basis
    assert iv.contains(15.6) and not iv.contains(18.6)
    assert iv.lo is not None and iv.hi is not None
    assert iv.hi / iv.lo == pytest.approx(math.exp(2 * max(2 * summarize(logs).sd, NOISE_FLOOR)))


def test_outside_calibrated_regimes_it_says_so_and_widens() -> None:
    table = {"c5-48/bf16/random": {"tpot_ms": summarize([0.01, -0.02, 0.0])}}
    own = interval("tpot_ms", 10.0, "c5-48/bf16/random", table)
    far = interval("tpot_ms", 10.0, "c49+/fp8w/random", table)
    assert far.extrapolated and "outside calibrated regimes, nearest c5-48/bf16/random" in far.describe()
    assert own.lo is not None and far.lo is not None and own.hi is not None and far.hi is not None
    assert far.hi - far.lo >= own.hi - own.lo
    none = interval("tpot_ms", 10.0, "c1-4/bf16/random", {})
    assert none.lo is None and "keeps no residuals" in none.describe()


def test_calibrate_from_a_committed_gpu_bundle_keeps_residuals(tmp_path: Path) -> None:
    """The H100 tune bundle (phase 1 and 3 cells of a real campaign): what cannot calibrate is counted and
    skipped, the fit keeps per-regime residuals, and its high-concurrency TPOT error is the one issue 21
    names (the simulator predicts TPOT high at c >= 64)."""
    from perftune import api
    from perftune.sim.calibration import load_calibration

    bundle = ROOT / "benchmarks/results/2026-11-23-h100-vllm-0.26.0-tune/campaign"
    skipped: dict[str, int] = {}
    cal = api.sim_calibrate(
        [], tmp_path / "cal.yaml", bundles=[bundle], gpu_name="h100", maxiter=3, skipped=skipped
    )
    assert skipped and all(n > 0 for n in skipped.values())
    assert {"c49+/bf16/random", "c5-48/bf16/random"} <= set(cal.residuals)
    assert cal.residuals["c49+/bf16/random"]["tpot_ms"].mean > 0.05
    assert load_calibration(tmp_path / "cal.yaml").residuals == cal.residuals  # kept in the file
    with pytest.raises(ConfigError, match="no calibrating measurement"):
        api.sim_calibrate([], tmp_path / "x.yaml", bundles=[ROOT / "docs"], gpu_name="h100")
    with pytest.raises(ConfigError, match="nothing to calibrate from"):
        api.sim_calibrate([], tmp_path / "x.yaml")


def test_a_cells_context_gives_its_regime() -> None:
    from perftune.sim.calibrate import _flags

    campaign = {
        "levers": {},
        "kv_cache_dtype": "fp8 (lever kv-cache-dtype=fp8)",
        "quantization": "fp8 weights (x)",
    }
    assert _flags(campaign) == ["--kv-cache-dtype", "fp8", "--quantization", "fp8"]
    assert (
        _flags({"levers": {"kv-cache-dtype": "fp8"}, "kv_cache_dtype": "fp8"}).count("--kv-cache-dtype") == 1
    )
    assert _flags({"levers": {}, "kv_cache_dtype": "bf16 (auto)", "quantization": "bf16 weights (c)"}) == []
    assert _flags({"levers": {}, "kv_cache_dtype": None}) == []


def test_fp8_kernel_factors_are_fitted_only_where_measured(tmp_path: Path) -> None:
    """Kernels by dtype: on the H200 capacity points (engine defaults and FP8 KV, 7 each), the FP8-KV
    factor is fitted and the FP8-weight one stays a prior (no point has FP8 weights); a model read
    with FP8 KV at a factor below 1 reads its KV slower than the roofline ratio says."""
    from perftune.hardware.ceilings import gpu
    from perftune.models.resolve import model_card
    from perftune.sim.calibrate import fit, from_bundles
    from perftune.sim.calibration import Calibration
    from perftune.sim.config import SimConfig
    from perftune.sim.timing import StepModel

    cap = ROOT / "benchmarks/results/2026-12-02-h200-vllm-0.26.0-slo-capacity"
    base, _ = from_bundles([cap / "baseline-closed"], "h200")
    fp8, _ = from_bundles([cap / "fp8kv-closed"], "h200")
    fp8 = [m.model_copy(update={"flags": ["--kv-cache-dtype", "fp8"]}) for m in fp8]
    card, g = model_card("llama-3.1-8b"), gpu("h200")
    cal = fit(card, g, base[:2] + fp8[:2], maxiter=2)
    assert "fp8_kv_efficiency" in cal.fitted and "fp8_weight_efficiency" in cal.priors
    assert {"c5-48/bf16/random", "c5-48/fp8kv/random"} <= set(cal.residuals)
    slow = Calibration(gpu="h200", fp8_kv_efficiency=0.5)
    fast = StepModel.build(card, g, SimConfig(kv_cache_dtype="fp8"), Calibration(gpu="h200"))
    half = StepModel.build(card, g, SimConfig(kv_cache_dtype="fp8"), slow)
    assert half.kv_read_s_per_token == pytest.approx(2 * fast.kv_read_s_per_token)
    bf16 = StepModel.build(card, g, SimConfig(), slow)  # the factor touches FP8 KV only
    assert bf16.kv_read_s_per_token == pytest.approx(
        StepModel.build(card, g, SimConfig(), Calibration(gpu="h200")).kv_read_s_per_token
    )


def test_fp8_factors_per_phase_are_recovered_by_their_own_refit() -> None:
    """FP8 weights have a factor per phase and a host time for their ungraphed steps. Three FP8 points
    among bf16 ones, made by the simulator itself at a decode factor of 0.75, a GEMM factor of 0.55 and
    1200 us per layer of an ungraphed step (38 ms over 32 layers; the GPU's share of the step is about
    25 ms): a c=8 decode-heavy point, a lone 4096-token prefill with graphs captured to 8192 (GPU-bound)
    and a lone 1024-token prefill on the default graphs (beyond 512 tokens: ungraphed, host-bound). The
    joint simplex alone (2 iterations here) leaves the factors near their priors; the refit on the FP8
    points recovers each, and the points are then predicted closely."""
    from perftune.hardware.ceilings import gpu
    from perftune.models.resolve import model_card
    from perftune.sim.calibrate import Measurement, fit, predict_point
    from perftune.sim.calibration import Calibration

    card, g = model_card("llama-3.1-8b"), gpu("h200")
    truth = Calibration(
        gpu="h200", fp8_weight_efficiency=0.75, fp8_gemm_efficiency=0.55, fp8_ungraphed_layer_us=1200.0
    )

    def point(c: int, flags: list[str], isl: int = 1024, osl: int = 128) -> Measurement:
        m = Measurement(
            source=f"synthetic c={c} {flags} {isl}", gpu="h200", engine="vllm", engine_version="0.26.0",
            flags=flags, isl=isl, osl=osl, concurrency=c, num_requests=max(2 * c, 4), trials=1,
            tpot_ms=1.0, tpot_stat="median", ttft_ms=1.0, output_tok_s=1.0,
        )  # fmt: skip
        p = predict_point(card, g, truth, m)
        return m.model_copy(
            update={"tpot_ms": p.tpot_ms, "ttft_ms": p.ttft_ms, "output_tok_s": p.output_tok_s}
        )

    fp8 = ["--quantization", "fp8"]
    graphs = [*fp8, "--max-cudagraph-capture-size", "8192"]
    mine = [point(8, fp8), point(1, graphs, 4096, 8), point(1, fp8, 1024, 8)]
    pts = [point(1, []), point(8, []), point(16, []), *mine]
    cal = fit(card, g, pts, Calibration(gpu="h200"), maxiter=2)
    assert {"fp8_weight_efficiency", "fp8_gemm_efficiency", "fp8_ungraphed_layer_us"} <= set(cal.fitted)
    assert cal.fp8_weight_efficiency == pytest.approx(0.75, rel=0.1)
    assert cal.fp8_gemm == pytest.approx(0.55, rel=0.1)
    assert cal.fp8_ungraphed_layer_us == pytest.approx(1200.0, rel=0.15)
    for m in mine:
        p = predict_point(card, g, cal, m)
        assert p.tpot_ms == pytest.approx(m.tpot_ms, rel=0.05)
        assert p.ttft_ms == pytest.approx(m.ttft_ms, rel=0.1)


def test_fp8_phase_factors_touch_their_own_phase_and_an_old_calibration_keeps_one_factor() -> None:
    """The FP8 decode factor scales the weight reads, the GEMM factor the FLOPs; a calibration without a
    GEMM factor (fitted before the split) uses its one FP8 factor for both; bf16 is untouched. An ungraphed
    FP8 step pays its host time where it exceeds the GPU's: a lone 1024-token prefill beyond the 512
    captured tokens, not the same prefill with graphs captured to 2048."""
    from perftune.hardware.ceilings import gpu
    from perftune.models.resolve import model_card
    from perftune.sim.calibration import Calibration
    from perftune.sim.config import SimConfig
    from perftune.sim.timing import StepModel

    card, g = model_card("llama-3.1-8b"), gpu("h200")
    fp8 = SimConfig(quantization="fp8")
    one = StepModel.build(card, g, fp8, Calibration(gpu="h200", fp8_weight_efficiency=0.5))
    split = StepModel.build(
        card, g, fp8, Calibration(gpu="h200", fp8_weight_efficiency=0.5, fp8_gemm_efficiency=1.0)
    )
    roof = StepModel.build(card, g, fp8, Calibration(gpu="h200"))
    assert one.weight_read_s == pytest.approx(2 * roof.weight_read_s) == pytest.approx(split.weight_read_s)
    assert one.flop_s_per_token == pytest.approx(2 * roof.flop_s_per_token)  # one factor for both phases
    assert split.flop_s_per_token == pytest.approx(roof.flop_s_per_token)  # its own GEMM factor
    bf16 = StepModel.build(card, g, SimConfig(), Calibration(gpu="h200", fp8_gemm_efficiency=0.1))
    assert bf16.flop_s_per_token == pytest.approx(
        StepModel.build(card, g, SimConfig(), Calibration(gpu="h200")).flop_s_per_token
    )

    host = Calibration(gpu="h200", fp8_ungraphed_layer_us=1000.0)  # 32 layers: 32 ms per ungraphed step
    lone = StepModel.build(card, g, fp8, host)
    wide = StepModel.build(card, g, SimConfig(quantization="fp8", max_cudagraph_capture_size=2048), host)
    assert lone.ungraphed_host_s == pytest.approx(0.032)
    assert StepModel.build(card, g, SimConfig(), host).ungraphed_host_s == 0.0  # bf16: no FP8 host time
    pairs = 1024 * 512.5  # a lone 1024-token prefill attends over 1024 x 1025 / 2 (query, key) pairs
    gpu_s = sum(lone.parts(1, 1024, 0, pairs, False)[:3])
    assert gpu_s < 0.032  # the GPU's share of the lone prefill is shorter than the host's launches
    base = lone.fixed_s + lone.per_seq_s + lone.launch_s(False, 1024)
    assert lone.step_s(1, 1024, 0, pairs, False) == pytest.approx(0.032 + base)  # the host bounds it
    assert wide.step_s(1, 1024, 0, pairs, False) == pytest.approx(
        gpu_s + wide.fixed_s + wide.per_seq_s + wide.piecewise_s
    )


def test_a_dtype_no_calibrated_point_has_is_said_to_run_on_priors_and_widened() -> None:
    """NVFP4 weights against a calibration of bf16 and FP8 points: the nearest regime's interval,
    flagged, and widened by UNCALIBRATED_DTYPE on each side (its factors are priors); a dtype the
    calibration has, in another band, is only extrapolated."""
    from perftune.sim.errorbars import UNCALIBRATED_DTYPE

    res = summarize([0.01, -0.02, 0.0])
    table = {"c5-48/bf16/random": {"tpot_ms": res}, "c1-4/fp8w/random": {"tpot_ms": res}}
    fp8 = interval("tpot_ms", 10.0, "c5-48/fp8w/random", table)
    fp4 = interval("tpot_ms", 10.0, "c5-48/nvfp4w/random", table)
    assert fp8.extrapolated and "priors" not in fp8.basis
    assert fp4.extrapolated and "no calibrated point has nvfp4w: its factors are priors" in fp4.describe()
    assert fp8.lo is not None and fp8.hi is not None and fp4.lo is not None and fp4.hi is not None
    assert math.log(fp4.hi / fp4.lo) == pytest.approx(math.log(fp8.hi / fp8.lo) + 2 * UNCALIBRATED_DTYPE)
