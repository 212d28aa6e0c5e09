"""Each profiler parser against a real capture recorded on the GPU host (vLLM 0.26.0, dummy
Llama-3.1-8B, one H200, 2026-12-02; benchmarks/results/2026-12-02-h200-vllm-0.26.0-profile) and
committed trimmed under tests/fixtures/profile/."""

import json
import math
import statistics
from pathlib import Path

import pytest

from perftune.profile import host, kernels, ncu
from perftune.profile.base import Capture, check
from perftune.profile.synthesis import Evidence, synthesize
from perftune.telemetry.gpu import Sample, summarize

F = Path(__file__).parents[2] / "fixtures" / "profile"


def test_vllm_torch_profiler_trace() -> None:
    """13 consecutive engine steps at c=1: vLLM's own step annotations give the decode step budget;
    GEMMs (weight reads) dominate the kernel time; the decode step's wall matches the measured TPOT
    (5.05 ms median in that window's bench)."""
    s = kernels.summarize(kernels.load_trace(F / "vllm-0.26.0-h200-c1.trace.json.gz"))
    assert s["kernels"] > 5000
    assert s["step_source"] == "engine annotations"
    assert s["steps"] == 13 and s["decode_steps"] == 12
    assert s["step_wall_ms_median"] == pytest.approx(5.05, rel=0.05)
    assert 0.85 < s["step_kernel_ms_median"] / s["step_wall_ms_median"] < 1.0
    assert s["step_budget"] == "kernel-bound"
    assert s["family_shares"]["gemm"] > 0.8
    assert 0.05 < s["family_shares"]["attention"] < 0.15
    assert sum(s["family_shares"].values()) == pytest.approx(1.0)
    top = s["top_kernels"][0]
    assert top["family"] == "gemm" and top["name"].startswith("nvjet_sm90")
    assert check(Capture(layer="l2", engine="vllm", concurrency=1, status="ok", figures=s)).status == "ok"


def test_vllm_pyspy_capture_at_c64() -> None:
    """py-spy on vLLM's process tree at c=64: the engine core's sampling path (logits + sampler),
    the API server and the detokenizer are all seen; the shares are of 459 active samples."""
    h = host.classify((F / "vllm-0.26.0-h200-c64.pyspy.collapsed.txt").read_text())
    assert h["samples"] == 459
    sh = h["shares"]
    assert sum(sh.values()) == pytest.approx(1.0)
    assert sh["sampling"] > 0.25  # compute_logits' lm_head launch and the sampler
    assert sh["api_server"] > 0.1 and sh["tokenization"] > 0.03 and sh["gpu_wait"] > 0.05
    assert sh["model_compute"] == 0.0  # a GPU engine: no CPU model compute
    assert sh["profiler"] < 0.01  # no L2 window at c=64: no trace export in the samples
    assert any("vllm" in p for p in h["processes"])


def test_ncu_raw_export() -> None:
    """`ncu --import R --csv --page raw` of the three decode GEMMs L2 found: DRAM-bound (56-84% of the
    DRAM peak, ~9% SM), durations in microseconds from the units row ("us")."""
    n = ncu.parse_raw_csv((F / "vllm-0.26.0-h200-ncu-raw.csv").read_text())
    ks = n["kernels"]
    assert [k["launches"] for k in ks] == [2, 2, 2]
    assert all(k["name"].startswith("nvjet_sm90_tst_") for k in ks)
    assert [round(k["duration_us"], 1) for k in ks] == [59.4, 33.6, 19.4]
    assert all(50 < k["memory_pct_of_peak"] < 90 and k["sm_pct_of_peak"] < 15 for k in ks)
    assert n["memory_metric"] == "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed"
    # memory-bound, not "neither": the engine-source rule stays silent on these kernels
    cap = Capture(layer="l4", engine="vllm", concurrency=1, status="ok", artifacts=["l4.csv"], figures=n)
    assert not [r for r in synthesize([Evidence("vllm", [cap], [])]) if r.rule == "kernel-underuses-hbm"]


def test_gpm_samples_from_the_h200() -> None:
    """GPM samples read by NvmlSampler during a 3 s copy: the summary leaves out the first sample of
    the window (NaN: no full interval) and reproduces the host's figure, 85.3% (ramp-up included),
    and the steady samples (88.4%) put GPM's 100% at the datasheet's 4.8 TB/s."""
    d = json.loads((F / "h200-gpm-copy-samples.json").read_text())
    samples = [
        Sample(
            t_s=0.2 * k,
            gpu=0,
            sm_mhz=1980.0,
            mem_mhz=3201.0,
            power_w=500.0,
            temp_c=50.0,
            util_pct=100.0,
            reasons=0,
            dram_pct=v,
        )
        for k, v in enumerate(d["dram_pct"])
    ]
    st = summarize(samples, [{"index": 0, "sm_clock_max_mhz": 1980.0}], 0.2, None)
    assert st.gpm_samples == len(samples) - 1
    assert st.dram_bw_util_pct == pytest.approx(d["host_summary_dram_bw_util_pct"])
    steady = statistics.median(v for v in d["dram_pct"] if v is not None)
    implied_peak = d["copy_tb_s"] / (steady / 100)
    assert implied_peak == pytest.approx(4.8, rel=0.02)
    assert not math.isnan(st.dram_bw_util_pct or math.nan)
