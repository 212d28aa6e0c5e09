"""Efficiency factors that turn roofline times into step times, per (GPU, engine version).

Fitted factors come from real measurements (`perftune sim calibrate`); the rest are physical priors
and are listed as such in the file, so nobody mistakes a prior for a measurement.
"""

from __future__ import annotations

import io
from functools import cache
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML

from perftune.errors import ConfigError
from perftune.hardware.ceilings import Gpu
from perftune.sim.errorbars import Residual
from perftune.util.atomic import write_text

# fitted only when the measurements hold that dtype (a factor no point constrains stays a prior)
# (FP8 weights have one factor per phase, the bandwidth of decode's weight reads and the FLOP rate of
# prefill's GEMMs, and the host time of their ungraphed steps)
DTYPE_FITTABLE = {
    "fp8w": ("fp8_weight_efficiency", "fp8_gemm_efficiency", "fp8_ungraphed_layer_us"),
    "fp8kv": ("fp8_kv_efficiency",),
    "nvfp4w": ("nvfp4_weight_efficiency", "nvfp4_gemm_efficiency"),
}
DTYPE_FACTORS = tuple(f for fs in DTYPE_FITTABLE.values() for f in fs)
MOE_FITTABLE = (  # fitted on MoE points
    "moe_routing_spread",
    "moe_gemm_efficiency",
    "moe_layer_overhead_us",
    "moe_ungraphed_layer_us",
    "moe_expert_pool",
)
# the API server's costs (`Frontend`); the first is also in FITTABLE
FRONTEND_FITTABLE = ("frontend_ms_per_request", "frontend_shared_ms_per_request", "frontend_us_per_token")
# physical priors of the engine, never fitted (the async-scheduling overlap: vLLM 0.26.0's default)
ENGINE_PRIORS = ("eager_launch_ms", "piecewise_launch_ms", "jitter_cv", "ungraphed_ahead")
FITTABLE = (
    "hbm_efficiency",
    "gemm_efficiency",
    "attn_efficiency",
    "step_overhead_ms",
    "per_seq_overhead_us",
    "api_latency_ms",
    "frontend_ms_per_request",
)


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: str = "perftune.sim.calibration/v1"
    gpu: str = Field(description="ceilings.yaml key the factors apply to")
    engine: str = Field("vllm", description="engine whose step times were measured")
    engine_version: str | None = Field(None, description="engine version measured")
    hbm_efficiency: float = Field(0.75, gt=0, le=1, description="achieved / peak HBM bandwidth (weights, KV)")
    gemm_efficiency: float = Field(0.6, gt=0, le=1, description="achieved / peak dense tensor FLOPS (GEMMs)")
    attn_efficiency: float = Field(0.4, gt=0, le=1, description="achieved / peak FLOPS in prefill attention")
    step_overhead_ms: float = Field(0.3, ge=0, description="fixed cost per step (scheduler, sampling, sync)")
    per_seq_overhead_us: float = Field(5.0, ge=0, description="cost per scheduled sequence per step")
    api_latency_ms: float = Field(
        5.0, ge=0, description="request arrival to engine admission, in parallel (HTTP, validation, IPC)"
    )
    frontend_ms_per_request: float = Field(
        0.5,
        ge=0,
        description="serial API-server work per request (handing it to the engine), one request after "
        "another: a burst of arrivals queues here",
    )
    frontend_shared_ms_per_request: float = Field(
        0.0,
        ge=0,
        description="API-server CPU per request shared with the other requests being admitted and the "
        "tokens being streamed (processor sharing): a burst of arrivals reaches the engine only after the "
        "burst's work. 0: none (calibrations before 2026-12-05)",
    )
    frontend_us_per_token: float = Field(
        0.0,
        ge=0,
        description="API-server CPU per streamed output token (detokenize, SSE chunk), on the CPU that "
        "admits requests: a large batch's streaming slows new admissions. 0: admissions alone use the "
        "CPU (calibrations before 2026-12-05)",
    )
    eager_launch_ms: float = Field(
        2.0, ge=0, description="extra per step without CUDA graphs (kernel launches of a ~32-layer model)"
    )
    piecewise_launch_ms: float = Field(
        0.3, ge=0, description="extra per step when only the non-attention parts are graphed (mixed batches)"
    )
    jitter_cv: float = Field(0.01, ge=0, le=0.5, description="lognormal step-time noise (seeded)")
    fp8_weight_efficiency: float = Field(
        1.0,
        gt=0,
        le=2,
        description="FP8 weights, decode: achieved / bf16-achieved bandwidth of reading FP8 weights "
        "(weight-read-bound steps; 1.0: half the bytes take half the time, the roofline ratio, a prior; "
        "fitted when the measurements include FP8 weights)",
    )
    fp8_gemm_efficiency: float | None = Field(
        None,
        gt=0,
        le=2,
        description="FP8 weights, prefill: achieved / bf16-achieved FLOP rate of the FP8 GEMMs (dynamic "
        "activation quantization and scaled matmuls on FLOP-bound steps). None: the same as "
        "fp8_weight_efficiency, one factor for both phases (as calibrations before 2026-12-04 were "
        "fitted). Fitted when the measurements include FP8 weights (vLLM 0.26.0, H200, Llama-3.1-8B: "
        "a lone prefill 1.65x faster than bf16's where GPU-bound, decode 1.52x)",
    )
    fp8_ungraphed_layer_us: float = Field(
        0.0,
        ge=0,
        description="FP8 weights: host (CPU) time per layer of a step run without CUDA graphs (more "
        "tokens than the largest captured graph, or eager): the activation-quantization and scaled-matmul "
        "ops launched one by one. It overlaps the GPU's work, so a step takes the longer of the two. 0 is "
        "a prior (launches hidden); fitted when the measurements include FP8 weights (vLLM 0.26.0, H200, "
        "Llama-3.1-8B: a lone 1024-token FP8 prefill 41 ms ungraphed, 24 ms graphed)",
    )
    nvfp4_weight_efficiency: float = Field(
        1.0,
        gt=0,
        le=2,
        description="NVFP4 weights, decode: achieved / bf16-achieved bandwidth of reading the 4-bit weights "
        "and their scales (1.0: the roofline ratio, a prior: no NVFP4 point has been measured; fitted when "
        "the measurements include NVFP4 weights)",
    )
    nvfp4_gemm_efficiency: float = Field(
        1.0,
        gt=0,
        le=2,
        description="NVFP4 weights, prefill: achieved / bf16-achieved rate of the GEMMs, against the FP4 "
        "peak where the GPU has FP4 tensor cores (Blackwell), else against the bf16 peak (Hopper runs "
        "NVFP4 checkpoints as 4-bit weights dequantized into bf16 GEMMs). 1.0 is a prior; fitted when the "
        "measurements include NVFP4 weights",
    )
    moe_routing_spread: float = Field(
        1.0,
        ge=0,
        le=1,
        description="MoE: how independently a step's tokens pick their experts. A step of T tokens "
        "reads experts as 1 + spread x (T - 1) independent tokens would (1.0: uniform, independent "
        "routing, a prior; 0: every token shares one set of experts). Fitted when the measurements are "
        "of a MoE model; dummy weights route correlated tokens, so a fit on them understates a trained "
        "router's spread",
    )
    moe_expert_pool: float = Field(
        1.0,
        gt=0,
        le=1,
        description="MoE: the share of a layer's routed experts the router reaches at all (1.0: every "
        "expert, a trained router's balanced load, a prior). Below 1 the router concentrates on a pool, "
        "so the experts a step reads grow fast over the first few tokens and then stop growing (dummy "
        "weights: TPOT up 25% from batch 1 to 4, flat from 4 to 16). Fitted when the measurements are of "
        "a MoE model",
    )
    moe_gemm_efficiency: float = Field(
        1.0,
        gt=0,
        le=1,
        description="MoE: the routed experts' GEMM FLOP rate relative to the dense GEMMs' (fused MoE "
        "kernels over uneven expert loads: prefill-heavy steps feel it, weight-read-bound decode does "
        "not). 1.0 is a prior; fitted when the measurements are of a MoE model",
    )
    moe_layer_overhead_us: float = Field(
        10.0,
        ge=0,
        description="MoE: fixed cost per MoE layer per step (the router's top-k, the token permute and "
        "align kernels, the shared experts' own launches): what makes a batch-1 MoE step slower than its "
        "bytes say. 10 us is a prior; fitted when the measurements are of a MoE model",
    )
    moe_ungraphed_layer_us: float = Field(
        0.0,
        ge=0,
        description="MoE: host (CPU) time per MoE layer of a step that runs without CUDA graphs (more "
        "tokens than the largest captured graph, or eager): the router, align, grouped-GEMM and "
        "shared-expert ops launched one by one. It overlaps the GPU's work, so a step takes the longer "
        "of the two. 0 is a prior (launches hidden); fitted when the measurements are of a MoE model "
        "(vLLM 0.26.0, H200, DeepSeek-V2-Lite: a lone 768-token prefill 93 ms ungraphed, 24 ms graphed)",
    )
    ungraphed_ahead: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the previous step's GPU time during which the CPU may already launch an "
        "ungraphed step's ops (vLLM's async scheduling: the next step is prepared while the GPU runs "
        "this one), so only host time beyond both steps' GPU time shows. 0: the step's own GPU time "
        "alone hides it (calibrations before 2026-12-05); 1: the whole previous step (vLLM 0.26.0, "
        "H200, DeepSeek-V2-Lite: a 768-token prefill after an idle engine pays 60-70 ms ungraphed, the "
        "same size after an 8,192-token step nothing). Above 0 the engine also launches a step before it "
        "hands out the previous step's tokens, which a host-bound step holds back by its launches",
    )
    fp8_kv_efficiency: float = Field(
        1.0,
        gt=0,
        le=2,
        description="FP8 KV cache: achieved / bf16-achieved efficiency of reading it (dequantizing in "
        "attention; 1.0 a prior, fitted when the measurements include FP8 KV)",
    )
    memory_bytes: float | None = Field(None, gt=0, description="device memory as the engine sees it")
    non_kv_reserve_bytes: float = Field(
        1.0e9, description="memory besides weights and KV (activations, graphs), per GPU"
    )
    fitted: list[str] = Field(default_factory=list, description="factors fitted to measurements")
    priors: list[str] = Field(default_factory=list, description="factors that are physical priors")
    sources: list[str] = Field(default_factory=list, description="measurement files it was fitted on")
    train_mape_pct: dict[str, float] = Field(
        default_factory=dict, description="fit error on its training set"
    )
    residuals: dict[str, dict[str, Residual]] = Field(
        default_factory=dict,
        description="per regime (concurrency band/dtype/workload), per metric: log(predicted/measured) "
        "of the training points; every prediction's interval comes from here",
    )
    note: str = ""

    @property
    def fp8_gemm(self) -> float:
        """The FP8 GEMMs' factor: its own where fitted, else the FP8 weights' one."""
        return self.fp8_weight_efficiency if self.fp8_gemm_efficiency is None else self.fp8_gemm_efficiency

    def device_bytes(self, g: Gpu) -> float:
        # Datasheet "80 GB" parts expose about 80 GiB; the engine sizes KV from what it sees.
        return self.memory_bytes or g.memory_gb * 2**30 * 0.995


def load_calibration(path: str | Path) -> Calibration:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"calibration file not found: {p}", hint="make one with `perftune sim calibrate`")
    try:
        return Calibration(**YAML(typ="safe").load(p.read_text()))
    except (ValidationError, TypeError) as e:
        raise ConfigError(f"{p}: not a simulator calibration ({e})", hint="regenerate it") from e


@cache
def builtin(gpu_key: str) -> Calibration | None:
    f = resources.files("perftune.sim").joinpath("calibrations", f"{gpu_key}.yaml")
    if not f.is_file():
        return None
    return Calibration(**YAML(typ="safe").load(f.read_text()))


def for_gpu(g: Gpu, path: str | Path | None = None) -> Calibration:
    """An explicit file, else the built-in calibration for this GPU, else priors only (labelled so)."""
    if path:
        cal = load_calibration(path)
        if cal.gpu != g.key:
            raise ConfigError(
                f"calibration is for {cal.gpu}, not {g.key}", hint="pass the matching --calibration"
            )
        return cal
    return builtin(g.key) or Calibration(
        gpu=g.key,
        priors=[
            *FITTABLE,
            *FRONTEND_FITTABLE[1:],
            *ENGINE_PRIORS,
            *DTYPE_FACTORS,
            *MOE_FITTABLE,
        ],
        note="no calibration for this GPU: every factor is a prior",
    )


def save_calibration(cal: Calibration, path: str | Path) -> None:
    buf = io.StringIO()
    y = YAML()
    y.default_flow_style = False
    buf.write(
        "# perftune simulator calibration. Fitted factors came from the measurements in `sources`;\n"
        "# `priors` are physical estimates, not measurements.\n"
    )
    y.dump(cal.model_dump(), buf)
    write_text(Path(path), buf.getvalue())
