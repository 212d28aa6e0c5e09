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


def test_a_dtype_factor_seen_in_one_point_is_recovered_by_its_own_refit() -> None:
    """One FP8-weight point among bf16 ones, made by the simulator itself at a factor of 0.75: the joint
    simplex alone (2 iterations here) leaves the factor near its prior of 1.0; the 1-D refit on the
    dtype's own points recovers 0.75, and the point is then predicted to within a few percent."""
    from perftune.hardware.ceilings import gpu
    from perftune.models.resolve import model_card
    from perftune.sim.calibrate import Measurement, fit, predict_point
    from perftune.sim.calibration import Calibration

    card, g = model_card("llama-3.1-8b"), gpu("h200")
    truth = Calibration(gpu="h200", fp8_weight_efficiency=0.75)

    def point(c: int, flags: list[str]) -> Measurement:
        m = Measurement(
            source=f"synthetic c={c} {flags}", gpu="h200", engine="vllm", engine_version="0.26.0",
            flags=flags, isl=1024, osl=128, concurrency=c, num_requests=2 * c, trials=1,
            tpot_ms=1.0, tpot_stat="median", ttft_ms=1.0, output_tok_s=1.0,
        )  # fmt: skip
        p = predict_point(card, g, truth, m)
        return m.model_copy(
            update={"tpot_ms": p.tpot_ms, "ttft_ms": p.ttft_ms, "output_tok_s": p.output_tok_s}
        )

    pts = [point(1, []), point(8, []), point(16, []), point(8, ["--quantization", "fp8"])]
    cal = fit(card, g, pts, Calibration(gpu="h200"), maxiter=2)
    assert "fp8_weight_efficiency" in cal.fitted
    assert cal.fp8_weight_efficiency == pytest.approx(0.75, rel=0.05)
    fp8 = predict_point(card, g, cal, pts[-1])
    assert fp8.tpot_ms == pytest.approx(pts[-1].tpot_ms, rel=0.05)
