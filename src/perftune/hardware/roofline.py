"""Roofline lower bounds for decode and prefill, KV capacity, and %SoL. Pure functions.

Decode step floor = max(bytes / HBM bandwidth, FLOPs / peak) + TP all-reduce time, where bytes are
the weights read per step on one GPU (all weights for dense models, as the standard bound counts them;
for MoE the non-expert weights plus the experts a batch of B tokens is expected to touch) plus the KV
cache the batch reads. Everything is per GPU at tensor parallelism TP.

The bytes are those of the dtypes really served (`effective_dtypes`): the checkpoint's own quantization
(FP8, NVFP4, INT4 AWQ/GPTQ, MXFP4: its mixed layout, see models/card.py), or the `quantization` lever's
online dtype on a 16-bit checkpoint, else the checkpoint's 16-bit dtype; and the KV-cache dtype lever
(`kv-cache-dtype`, llama.cpp's `kv-cache-type`), else the model's activation dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from perftune.errors import ConfigError
from perftune.hardware.ceilings import Gpu
from perftune.models.card import KV_BYTES, WEIGHT_BYTES, ModelCard

ACTIVATION_RESERVE_GB = 4.0  # CUDA graphs, activations, allocator slack per GPU (engines reserve similar)
ALLREDUCE_LATENCY_US = 8.0  # one small-message NCCL all-reduce over NVLink, order of magnitude


# Spellings of the same element type (engines' values, torch names) -> a WEIGHT_BYTES / KV_BYTES key.
DTYPE_ALIASES: dict[str, str] = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "f16": "fp16",
    "float32": "fp32",
    "f32": "fp32",
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
    "fp8-e4m3": "fp8",
    "fp8-e5m2": "fp8",
    "e4m3": "fp8",
}
QUANT_LEVER_VALUES = ("fp8", "awq", "gptq", "modelopt", "compressed-tensors")
KV_LEVER_VALUES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bf16", "bfloat16", "fp16", "float16")
KV_TYPE_LEVER_VALUES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")


class EffectiveDtypes(BaseModel):
    """The dtypes a deploy really reads per decode step, and why."""

    model_config = ConfigDict(extra="forbid")
    weight_dtype: str = Field(description="dtype of the quantized weight groups (a WEIGHT_BYTES key)")
    kv_dtype: str = Field(description="KV-cache element type (a KV_BYTES key)")
    weight_source: str = Field(description="why, e.g. 'checkpoint quantization_config: fp8 block [128, 128]'")
    kv_source: str = Field(
        description="why, e.g. 'lever kv-cache-dtype=fp8' or 'auto: the model's dtype (bf16)'"
    )


def _norm(value: Any) -> str:
    v = str(value).strip().lower()
    return DTYPE_ALIASES.get(v, v)


def _served_dtype(card: ModelCard) -> str:
    """The 16-bit dtype engines serve the checkpoint's unquantized weights and activations in
    (vLLM's --dtype auto: fp16 for fp32 checkpoints)."""
    return "fp16" if card.torch_dtype == "fp32" else card.torch_dtype


def _lever(levers: Mapping[str, Any], name: str) -> Any:
    for k, v in levers.items():
        if k.strip().lower().replace("_", "-") == name and v is not None:
            return v
    return None


def _weights(card: ModelCard, levers: Mapping[str, Any]) -> tuple[str, str]:
    q = card.quantization
    known = q is not None and q.weight_dtype in WEIGHT_BYTES
    raw = _lever(levers, "quantization")
    lever = None if raw is None else str(raw).strip().lower()
    if lever in ("", "none"):
        lever = None
    if lever is not None and lever not in QUANT_LEVER_VALUES:
        raise ConfigError(
            f"unknown quantization lever value '{raw}'",
            hint="one of " + ", ".join(QUANT_LEVER_VALUES) + " (or leave the lever out)",
        )
    if q is not None and lever is not None:
        wants = {"fp8": ("fp8",), "awq": ("int4", "int8"), "gptq": ("int4", "int8")}.get(lever)
        if wants is not None and q.weight_dtype not in wants:
            raise ConfigError(
                f"lever quantization={lever} on a checkpoint already quantized as {q.method} "
                f"({q.weight_dtype})",
                hint="an engine cannot re-quantize a quantized checkpoint: leave the lever out, or serve "
                "the 16-bit checkpoint",
            )
    if q is not None and known:
        why = q.describe()
        return q.weight_dtype, why + (f" (lever quantization={lever})" if lever else "")
    if q is not None:  # quantized with a dtype the card does not model
        d = _served_dtype(card)
        return (
            d,
            f"{q.describe()}: not modelled, counted at the checkpoint's {card.torch_dtype} (an upper bound)",
        )
    if lever == "fp8":
        return "fp8", "lever quantization=fp8 (online: fp8 weights from the 16-bit checkpoint)"
    if lever in ("awq", "gptq"):
        return "int4", f"lever quantization={lever} (int4 assumed: the config has no quantization_config)"
    if lever in ("modelopt", "compressed-tensors"):
        raise ConfigError(
            f"lever quantization={lever} but the checkpoint has no quantization config",
            hint="point at the quantized checkpoint (config.json quantization_config or "
            "hf_quant_config.json), or leave the lever out",
        )
    d = _served_dtype(card)
    cast = "" if d == card.torch_dtype else f", served as {d}"
    return d, f"checkpoint dtype: {card.torch_dtype}{cast} (not quantized)"


def _kv(card: ModelCard, levers: Mapping[str, Any]) -> tuple[str, str]:
    dtype_lever, type_lever = _lever(levers, "kv-cache-dtype"), _lever(levers, "kv-cache-type")
    if dtype_lever is not None and type_lever is not None:
        raise ConfigError(
            "both kv-cache-dtype and kv-cache-type are set",
            hint="kv-cache-dtype is vLLM's and SGLang's, kv-cache-type llama.cpp's: keep the engine's one",
        )
    auto = _served_dtype(card)
    if type_lever is not None:
        v = str(type_lever).strip().lower()
        if v not in KV_TYPE_LEVER_VALUES:
            raise ConfigError(
                f"unknown kv-cache-type lever value '{type_lever}'",
                hint="one of " + ", ".join(KV_TYPE_LEVER_VALUES),
            )
        return _norm(v), f"lever kv-cache-type={v} ({KV_BYTES[_norm(v)]:.3g} bytes/element)"
    if dtype_lever is None:
        return auto, f"auto: the model's dtype ({auto})"
    v = str(dtype_lever).strip().lower()
    if v not in KV_LEVER_VALUES:
        raise ConfigError(
            f"unknown kv-cache-dtype lever value '{dtype_lever}'", hint="one of " + ", ".join(KV_LEVER_VALUES)
        )
    if v == "auto":
        return auto, f"lever kv-cache-dtype=auto: the model's dtype ({auto})"
    return _norm(v), f"lever kv-cache-dtype={v}"


def effective_dtypes(
    card: ModelCard,
    levers: Mapping[str, Any] | None = None,
    *,
    weight_dtype: str | None = None,
    kv_dtype: str | None = None,
) -> EffectiveDtypes:
    """The weight and KV dtypes a deploy of `card` with `levers` reads per decode step, and why.

    Weights: the checkpoint's quantization (a lever cannot re-quantize it; a lever that contradicts it
    is a ConfigError), else the `quantization` lever (fp8: online fp8; awq/gptq: int4), else the
    checkpoint's 16-bit dtype. KV: `kv-cache-dtype` (auto | fp8 | bf16 | fp16) or llama.cpp's
    `kv-cache-type` (f16, q8_0, q4_0, ...), else the model's activation dtype. An explicit
    `weight_dtype` / `kv_dtype` overrides its half (a what-if). Unknown values raise ConfigError.
    """
    lv: Mapping[str, Any] = levers or {}
    if weight_dtype is not None:
        w = _norm(weight_dtype)
        if w not in WEIGHT_BYTES:
            raise ConfigError(
                f"unknown weight dtype '{weight_dtype}'", hint="one of " + ", ".join(WEIGHT_BYTES)
            )
        q = card.quantization
        held = f"; the checkpoint holds {q.weight_dtype}" if q is not None else ""
        w_why = f"explicit weight dtype {w}{held}"
    else:
        w, w_why = _weights(card, lv)
    if kv_dtype is not None:
        k = _norm(kv_dtype)
        if k not in KV_BYTES:
            raise ConfigError(f"unknown KV dtype '{kv_dtype}'", hint="one of " + ", ".join(KV_BYTES))
        k_why = f"explicit KV dtype {k}"
    else:
        k, k_why = _kv(card, lv)
    return EffectiveDtypes(weight_dtype=w, kv_dtype=k, weight_source=w_why, kv_source=k_why)


class Roofline(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpu: str
    ceiling_key: str = Field(
        description="which ceilings.yaml figures bound this (gpu:hbm / gpu:tflops.dtype)"
    )
    tp: int
    weight_dtype: str = Field(description="dtype of the quantized weight groups read per step")
    kv_dtype: str
    weight_source: str = Field(description="why this weight dtype (see effective_dtypes)")
    kv_source: str = Field(description="why this KV dtype")
    batch: int
    context: int
    weight_bytes_per_gpu: float
    weight_bytes_read_per_step: float = Field(description="weights one GPU reads per decode step")
    kv_bytes_read_per_step: float
    kv_capacity_tokens: int = Field(description="KV tokens that fit per replica at the memory fraction")
    max_concurrency_at_context: int = Field(description="sequences of `context` tokens that fit")
    fits: bool = Field(description="weights + reserve fit in the memory fraction")
    decode_memory_ms: float
    decode_compute_ms: float
    allreduce_ms: float
    decode_step_floor_ms: float = Field(description="lower bound of one decode step (= TPOT floor)")
    decode_bound: Literal["memory", "compute"]
    prefill_floor_ms: float = Field(description="lower bound of prefilling `context` tokens for one sequence")
    prefill_bound: Literal["memory", "compute"]
    output_tok_s_ceiling: float = Field(description="batch / decode floor: tok/s a replica cannot exceed")


def expected_experts_touched(experts: int, top_k: int, tokens: int) -> float:
    """E[unique experts] when `tokens` tokens each pick top_k of `experts` (uniform routing)."""
    if experts <= 0:
        return 0.0
    return experts * (1.0 - (1.0 - top_k / experts) ** max(tokens, 0))


def roofline(
    card: ModelCard,
    g: Gpu,
    *,
    tp: int = 1,
    weight_dtype: str | None = None,
    kv_dtype: str | None = None,
    levers: Mapping[str, Any] | None = None,
    batch: int = 1,
    context: int = 1024,
    mem_fraction: float = 0.9,
) -> Roofline:
    """The floors of `card` on `g`. Dtypes left None are the ones served (`effective_dtypes(card,
    levers)`: the checkpoint's own, or what the levers make of it); a given dtype is a what-if."""
    eff = effective_dtypes(card, levers, weight_dtype=weight_dtype, kv_dtype=kv_dtype)
    weight_dtype, kv_dtype = eff.weight_dtype, eff.kv_dtype
    if tp < 1 or batch < 1 or context < 1:
        raise ConfigError("tp, batch and context must be >= 1", hint="e.g. --tp 1 --batch 1")
    w_total = card.weight_bytes[weight_dtype]
    w_gpu = w_total / tp
    read = w_total
    if card.moe is not None:
        touched = expected_experts_touched(card.moe.experts, card.moe.top_k, batch)
        routed_bytes = card.params.routed_experts * card.group_bytes_per_param("routed_experts", weight_dtype)
        read = w_total - routed_bytes * (1.0 - touched / card.moe.experts)
    read_gpu = read / tp
    kv_tok = card.kv_bytes_per_token[kv_dtype]
    kv_read = batch * context * kv_tok / tp + batch * card.linear_state_bytes_per_seq / tp
    hbm = g.hbm_tb_s * 1e12
    mem_ms = (read_gpu + kv_read) / hbm * 1e3
    peak = g.peak_tflops(weight_dtype) * 1e12
    flops_decode = 2.0 * card.active_params * batch / tp
    attn_flops = 4.0 * card.attention_layers * card.heads * card.head_dim * context * batch / tp
    comp_ms = (flops_decode + attn_flops) / peak * 1e3
    # Two all-reduces of batch x hidden bf16 activations per layer (ring: 2 (TP-1)/TP of the bytes), each
    # with a fixed latency: at decode sizes the latency, not the bandwidth, dominates.
    link = g.interconnect_gb_s / 2 * 1e9  # one direction
    n_ar = 2 * card.layers
    ar_bytes = n_ar * batch * card.hidden_size * 2.0
    ar_ms = (2 * (tp - 1) / tp * ar_bytes / link * 1e3 + n_ar * ALLREDUCE_LATENCY_US / 1e3) if tp > 1 else 0.0
    floor = max(mem_ms, comp_ms) + ar_ms
    pf_flops = (
        2.0 * card.active_params * context
        + 2.0 * card.attention_layers * card.heads * card.head_dim * context * context
    ) / tp
    pf_comp = pf_flops / peak * 1e3
    pf_mem = w_gpu / hbm * 1e3
    budget = g.memory_gb * 1e9 * mem_fraction - w_gpu - ACTIVATION_RESERVE_GB * 1e9
    kv_cap = int(max(budget, 0) / (kv_tok / tp)) if kv_tok else 0
    return Roofline(
        gpu=g.key,
        ceiling_key=f"{g.key}:hbm_tb_s" if mem_ms >= comp_ms else f"{g.key}:tflops.{weight_dtype}",
        tp=tp,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        weight_source=eff.weight_source,
        kv_source=eff.kv_source,
        batch=batch,
        context=context,
        weight_bytes_per_gpu=w_gpu,
        weight_bytes_read_per_step=read_gpu,
        kv_bytes_read_per_step=kv_read,
        kv_capacity_tokens=kv_cap,
        max_concurrency_at_context=kv_cap // context,
        fits=budget > 0,
        decode_memory_ms=mem_ms,
        decode_compute_ms=comp_ms,
        allreduce_ms=ar_ms,
        decode_step_floor_ms=floor,
        decode_bound="memory" if mem_ms >= comp_ms else "compute",
        prefill_floor_ms=max(pf_comp, pf_mem),
        prefill_bound="compute" if pf_comp >= pf_mem else "memory",
        output_tok_s_ceiling=batch / floor * 1e3,
    )


def sol_pct(floor_ms: float, measured_ms: float) -> float:
    """Speed-of-light percentage of a measured step time: floor / measured."""
    if measured_ms <= 0:
        raise ConfigError("measured time must be > 0", hint="e.g. --measured-tpot-ms 6.46")
    return 100.0 * floor_ms / measured_ms
