"""TP right-size: the lowest tensor parallelism that fits, without spreading few active params thin.

A small-active MoE (30B total, 3B active) at a TP higher than memory needs spreads ~3B active
parameters over near-idle GPUs: measured at about 2.7x worse tok/s/GPU. OVER-PROVISIONED is flagged
only when active/current_TP < 3B (a 13B-active model at TP4 is not flagged).

Sizing is at the dtypes really served (`effective_dtypes`): an FP8 checkpoint is sized at FP8, not bf16.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from perftune.hardware.ceilings import Gpu
from perftune.hardware.roofline import effective_dtypes, roofline
from perftune.models.card import ModelCard

TP_CHOICES = (1, 2, 4, 8, 16)
MIN_ACTIVE_PER_GPU = 3e9
EXTRAPOLATE_ABOVE = 40e9
HOURS_PER_MONTH = 730.0


class TpOption(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tp: int
    fits: bool
    kv_capacity_tokens: int
    needed_kv_tokens: int
    active_params_per_gpu: float
    decode_step_floor_ms: float
    output_tok_s_ceiling: float = Field(description="roofline tok/s of one replica at the target concurrency")
    tok_s_per_gpu_ceiling: float
    usd_per_replica_month: float


class TpAdvice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    gpu: str
    dtype: str = Field(description="weight dtype sized at (the quantized groups; see models/card.py)")
    kv_dtype: str
    dtype_source: str = Field(description="why this weight dtype (checkpoint, lever or explicit)")
    kv_source: str = Field(description="why this KV dtype")
    target_concurrency: int
    target_context: int
    recommended_tp: int | None
    current_tp: int | None
    over_provisioned: bool
    confidence: Literal["measured", "extrapolated"]
    rationale: list[str]
    options: list[TpOption]
    usd_per_gpu_hour: float
    usd_per_month_at_matched_throughput: dict[str, float] = Field(
        description="cost to serve the current TP's roofline throughput with current vs recommended TP"
    )


def advise_tp(
    card: ModelCard,
    g: Gpu,
    *,
    dtype: str | None = None,
    kv_dtype: str | None = None,
    levers: Mapping[str, Any] | None = None,
    current_tp: int | None = None,
    concurrency: int = 64,
    context: int = 4096,
    mem_fraction: float = 0.9,
    usd_per_gpu_hour: float = 2.5,
) -> TpAdvice:
    """Dtypes left None are the ones served: the checkpoint's own, or what `levers` make of it."""
    eff = effective_dtypes(card, levers, weight_dtype=dtype, kv_dtype=kv_dtype)
    dtype, kv_dtype = eff.weight_dtype, eff.kv_dtype
    options: list[TpOption] = []
    for tp in TP_CHOICES:
        r = roofline(
            card,
            g,
            tp=tp,
            weight_dtype=dtype,
            kv_dtype=kv_dtype,
            batch=concurrency,
            context=context,
            mem_fraction=mem_fraction,
        )
        need = concurrency * context
        options.append(
            TpOption(
                tp=tp,
                fits=r.fits and r.kv_capacity_tokens >= need,
                kv_capacity_tokens=r.kv_capacity_tokens,
                needed_kv_tokens=need,
                active_params_per_gpu=card.active_params / tp,
                decode_step_floor_ms=r.decode_step_floor_ms,
                output_tok_s_ceiling=r.output_tok_s_ceiling,
                tok_s_per_gpu_ceiling=r.output_tok_s_ceiling / tp,
                usd_per_replica_month=tp * usd_per_gpu_hour * HOURS_PER_MONTH,
            )
        )
    fitting = [o for o in options if o.fits]
    rec = fitting[0] if fitting else None
    why: list[str] = []
    gb = card.weight_bytes[dtype] / 1e9
    if rec is None:
        why.append(
            f"no TP up to {TP_CHOICES[-1]} fits {gb:.1f} GB of {dtype} weights ({eff.weight_source}) plus "
            f"{kv_dtype} KV ({eff.kv_source}) for {concurrency} x {context} tokens on {g.name}: use more "
            "nodes, a smaller dtype or less context"
        )
    else:
        why.append(
            f"TP {rec.tp} is the lowest that fits {gb:.1f} GB of {dtype} weights ({eff.weight_source}; "
            f"{gb / rec.tp:.1f} GB/GPU) plus {kv_dtype} KV ({eff.kv_source}) for {concurrency} x {context} "
            f"tokens ({rec.needed_kv_tokens:,} of {rec.kv_capacity_tokens:,} tokens) in {mem_fraction:.0%} "
            f"of {g.memory_gb:g} GB"
        )
        if rec.active_params_per_gpu < MIN_ACTIVE_PER_GPU:
            why.append(
                f"{card.active_params / 1e9:.1f}B active params: already below 3B/GPU at TP {rec.tp}; "
                "more TP "
                "only adds idle GPUs"
            )
    over = False
    if current_tp is not None:
        per = card.active_params / current_tp
        if rec is not None and current_tp > rec.tp and per < MIN_ACTIVE_PER_GPU:
            over = True
            cur = next((o for o in options if o.tp == current_tp), None)
            ratio = (rec.tok_s_per_gpu_ceiling / cur.tok_s_per_gpu_ceiling) if cur else float("nan")
            why.append(
                f"OVER-PROVISIONED: TP {current_tp} spreads {card.active_params / 1e9:.1f}B active params to "
                f"{per / 1e9:.2f}B/GPU (< 3B). GEMMs that small run far below the roofline (field "
                f"measurements of this trap: about 2.7x worse tok/s/GPU); the bandwidth roofline alone, "
                f"which cannot see kernel efficiency, gives TP {rec.tp} {ratio:.2f}x the tok/s/GPU of TP "
                f"{current_tp}. Confirm with a same-node TP A/B"
            )
        elif rec is not None and current_tp > rec.tp:
            why.append(
                f"TP {current_tp} is above the memory minimum but keeps {per / 1e9:.1f}B active/GPU (>= 3B): "
                "not flagged; a higher TP can still buy latency"
            )
        elif rec is not None and current_tp < rec.tp:
            why.append(f"TP {current_tp} does not fit the target: weights or KV run out")
    conf: Literal["measured", "extrapolated"] = (
        "extrapolated" if card.total_params > EXTRAPOLATE_ABOVE else "measured"
    )
    if conf == "extrapolated":
        why.append(
            f"{card.total_params / 1e9:.0f}B total > 40B: extrapolated; verify with a same-node TP A/B"
        )
    costs: dict[str, float] = {}
    if current_tp is not None and rec is not None:
        cur = next((o for o in options if o.tp == current_tp), None)
        if cur is not None:
            target = cur.output_tok_s_ceiling
            costs[f"tp{current_tp}"] = cur.usd_per_replica_month
            costs[f"tp{rec.tp}"] = (
                math.ceil(target / rec.output_tok_s_ceiling - 1e-9) * rec.usd_per_replica_month
            )
    return TpAdvice(
        model=card.name,
        gpu=g.key,
        dtype=dtype,
        kv_dtype=kv_dtype,
        dtype_source=eff.weight_source,
        kv_source=eff.kv_source,
        target_concurrency=concurrency,
        target_context=context,
        recommended_tp=rec.tp if rec else None,
        current_tp=current_tp,
        over_provisioned=over,
        confidence=conf,
        rationale=why,
        options=options,
        usd_per_gpu_hour=usd_per_gpu_hour,
        usd_per_month_at_matched_throughput=costs,
    )


def tp_markdown(a: TpAdvice) -> str:
    lines = [
        f"# TP right-size: {a.model} on {a.gpu} ({a.dtype}, KV {a.kv_dtype})",
        "",
        f"Weights at {a.dtype}: {a.dtype_source}. KV cache at {a.kv_dtype}: {a.kv_source}.",
        "",
        f"Recommended TP: **{a.recommended_tp}**" + (f" (current {a.current_tp})" if a.current_tp else ""),
        f"Over-provisioned: **{a.over_provisioned}**; confidence: **{a.confidence}** (roofline estimate, "
        f"not a measurement)",
        "",
        "## Rationale",
        "",
    ]
    lines += [f"- {r}" for r in a.rationale]
    lines += [
        "",
        f"Target: {a.target_concurrency} concurrent x {a.target_context} tokens; "
        f"${a.usd_per_gpu_hour}/GPU-hour",
        "",
        "| TP | fits | KV capacity (tokens) | active/GPU (B) | decode floor ms | tok/s/GPU ceiling "
        "| $/replica/month |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {o.tp} | {o.fits} | {o.kv_capacity_tokens:,} | {o.active_params_per_gpu / 1e9:.2f} | "
        f"{o.decode_step_floor_ms:.2f} | {o.tok_s_per_gpu_ceiling:,.0f} | {o.usd_per_replica_month:,.0f} |"
        for o in a.options
    ]
    if a.usd_per_month_at_matched_throughput:
        lines += [
            "",
            "At matched (roofline) throughput: "
            + ", ".join(f"{k} ${v:,.0f}/month" for k, v in a.usd_per_month_at_matched_throughput.items()),
        ]
    return "\n".join(lines) + "\n"
