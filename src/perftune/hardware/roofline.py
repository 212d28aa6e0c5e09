"""Roofline lower bounds for decode and prefill, KV capacity, and %SoL. Pure functions.

Decode step floor = max(bytes / HBM bandwidth, FLOPs / peak) + TP all-reduce time, where bytes are
the weights read per step on one GPU (all weights for dense models, as the standard bound counts them;
for MoE the non-expert weights plus the experts a batch of B tokens is expected to touch) plus the KV
cache the batch reads. Everything is per GPU at tensor parallelism TP.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from perftune.errors import ConfigError
from perftune.hardware.ceilings import Gpu
from perftune.models.card import KV_BYTES, WEIGHT_BYTES, ModelCard

ACTIVATION_RESERVE_GB = 4.0  # CUDA graphs, activations, allocator slack per GPU (engines reserve similar)
ALLREDUCE_LATENCY_US = 8.0  # one small-message NCCL all-reduce over NVLink, order of magnitude


class Roofline(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpu: str
    ceiling_key: str = Field(
        description="which ceilings.yaml figures bound this (gpu:hbm / gpu:tflops.dtype)"
    )
    tp: int
    weight_dtype: str
    kv_dtype: str
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
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
    batch: int = 1,
    context: int = 1024,
    mem_fraction: float = 0.9,
) -> Roofline:
    if weight_dtype not in WEIGHT_BYTES:
        raise ConfigError(f"unknown weight dtype '{weight_dtype}'", hint="one of " + ", ".join(WEIGHT_BYTES))
    if kv_dtype not in KV_BYTES:
        raise ConfigError(f"unknown KV dtype '{kv_dtype}'", hint="one of " + ", ".join(KV_BYTES))
    if tp < 1 or batch < 1 or context < 1:
        raise ConfigError("tp, batch and context must be >= 1", hint="e.g. --tp 1 --batch 1")
    w_total = card.weight_bytes[weight_dtype]
    w_gpu = w_total / tp
    bpp = WEIGHT_BYTES[weight_dtype]
    read = w_total
    if card.moe is not None:
        touched = expected_experts_touched(card.moe.experts, card.moe.top_k, batch)
        routed_bytes = card.params.routed_experts * bpp
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
