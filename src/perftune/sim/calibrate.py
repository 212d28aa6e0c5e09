"""`perftune sim calibrate`: fit the simulator's efficiency factors to real measurements.

Measurements are perftune bench results (summary.json, or JSONL of summaries) with their context,
or a small YAML table of externally measured points that states its provenance. The fit minimizes the
squared log error of TPOT, TTFT and output tok/s over the points (Nelder-Mead on log factors): each
point is replayed in virtual time with the same request count and concurrency it was measured at.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML

from perftune.errors import ConfigError
from perftune.hardware.ceilings import Gpu, all_gpus
from perftune.models.card import WEIGHT_BYTES, ModelCard
from perftune.serving.levers import translate
from perftune.sim.calibration import (
    DTYPE_FACTORS,
    DTYPE_FITTABLE,
    ENGINE_PRIORS,
    FITTABLE,
    FRONTEND_FITTABLE,
    MOE_FITTABLE,
    Calibration,
)
from perftune.sim.config import VLLM_QUANTIZATION, SimConfig, parse_vllm_flags
from perftune.sim.core import EngineCore
from perftune.sim.errorbars import Residual, dtype_parts, regime, residuals
from perftune.sim.predict import replay_random


class Measurement(BaseModel):
    """One measured (concurrency, ISL, OSL) point with what was measured and how."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="file (and row) it came from")
    gpu: str = Field(description="ceilings.yaml key")
    engine: str
    engine_version: str | None
    flags: list[str] = Field(default_factory=list, description="engine flags of the measured server")
    kind: Literal["random"] = "random"
    isl: int
    osl: int
    concurrency: int
    num_requests: int
    trials: int
    tpot_ms: float
    tpot_stat: Literal["mean", "median"] = "mean"
    ttft_ms: float
    output_tok_s: float
    note: str = ""


def gpu_key_from_label(label: str) -> str | None:
    """'1xH100-80GB-HBM3' -> 'h100-sxm': the longest ceilings key or alias found in the label."""
    low = label.lower()
    best: tuple[int, str] | None = None
    for key, g in all_gpus().items():
        for name in (key, *g.aliases):
            if name in low and (best is None or len(name) > best[0]):
                best = (len(name), key)
    return best[1] if best else None


def _flags(ctx: dict[str, Any]) -> list[str]:
    """The engine flags a measurement ran with: its levers, plus the KV dtype and FP8 weights its context
    records when they were set outside the levers."""
    flags = translate(ctx.get("levers") or {}, "vllm")
    # a campaign writes "fp8 (lever kv-cache-dtype=fp8)", "fp8 weights (checkpoint ...)"; a bare bench "fp8"
    kv = str(ctx.get("kv_cache_dtype") or "").split(" ")[0]
    if kv.startswith("fp8") and "--kv-cache-dtype" not in flags:
        flags += ["--kv-cache-dtype", "fp8"]
    quant = str(ctx.get("quantization") or "").split(" ")[0].lower()
    vllm = {ours: name for name, ours in VLLM_QUANTIZATION.items()}
    if quant in vllm and "--quantization" not in flags:
        flags += ["--quantization", vllm[quant]]
    return flags


def _from_summary(d: dict[str, Any], src: str, gpu_override: str | None) -> Measurement:
    ctx, s = d["context"], d["summary"]
    w = ctx["workload"]
    if w["kind"] != "random" or not w.get("concurrency"):
        raise ConfigError(
            f"{src}: only closed-loop random-workload results calibrate", hint="bench --workload random"
        )
    key = gpu_override or gpu_key_from_label(ctx.get("hardware", ""))
    if key is None:
        raise ConfigError(f"{src}: cannot tell the GPU from '{ctx.get('hardware')}'", hint="pass --gpu")
    stack = ctx["stack"]
    if stack.get("simulated"):
        raise ConfigError(f"{src}: a simulated result cannot calibrate the simulator", hint="use real runs")
    return Measurement(
        source=src,
        gpu=key,
        engine=stack["engine"],
        engine_version=stack.get("engine_version"),
        flags=_flags(ctx),
        isl=w["isl"],
        osl=w["osl"],
        concurrency=w["concurrency"],
        num_requests=w["num_requests"],
        trials=ctx["trials"],
        tpot_ms=s["tpot_ms"]["mean"],
        ttft_ms=s["ttft_ms"]["mean"],
        output_tok_s=s["output_tok_s"]["mean"],
    )


def from_bundles(
    paths: Sequence[str | Path], gpu_override: str | None = None
) -> tuple[list[Measurement], dict[str, int]]:
    """Every bench result (`summary.json`) under the given campaign or tune folders that can calibrate:
    real (not simulated), closed loop, random workload. What it skips is counted by reason, so a bundle
    that gave nothing says why."""
    out: list[Measurement] = []
    skipped: dict[str, int] = {}
    for root in map(Path, paths):
        if not root.exists():
            raise ConfigError(
                f"bundle not found: {root}", hint="pass a campaign run folder or a results folder"
            )
        files = [root] if root.is_file() else sorted(root.rglob("summary.json"))
        for f in files:
            try:
                d = json.loads(f.read_text())
                if "context" not in d or "summary" not in d:
                    raise KeyError("context")
                out.append(_from_summary(d, str(f), gpu_override))
            except ConfigError as e:
                reason = e.message.split(": ", 1)[-1]
                skipped[reason] = skipped.get(reason, 0) + 1
            except (KeyError, TypeError, ValueError, ValidationError):
                skipped["not a bench result"] = skipped.get("not a bench result", 0) + 1
    if not out:
        raise ConfigError(
            f"no calibrating measurement in {', '.join(map(str, paths))} "
            f"(skipped: {skipped or 'nothing found'})",
            hint="calibration needs real closed-loop random-workload cells (phases 1, 3 and 8 have them)",
        )
    return out, skipped


def regime_of(m: Measurement) -> str:
    cfg = parse_vllm_flags(m.flags, SimConfig())
    return regime(m.concurrency, cfg.weight_dtype, cfg.kv_dtype, m.kind)


def _dtypes(m: Measurement) -> set[str]:
    """The dtype parts of a point's regime: {'bf16'}, {'fp8w'}, {'fp8w', 'fp8kv'}..."""
    return dtype_parts(regime_of(m))


def load_measurements(paths: Sequence[str | Path], gpu_override: str | None = None) -> list[Measurement]:
    out: list[Measurement] = []
    for p in map(Path, paths):
        if not p.is_file():
            raise ConfigError(
                f"measurement file not found: {p}", hint="pass perftune bench summary.json files"
            )
        text = p.read_text()
        try:
            if p.suffix in (".yaml", ".yml"):
                table = YAML(typ="safe").load(text)
                for i, row in enumerate(table["points"]):
                    out.append(Measurement(source=f"{p}#{i}", **{**table["context"], **row}))
            elif p.suffix == ".jsonl":
                for i, line in enumerate(text.splitlines()):
                    if line.strip():
                        out.append(_from_summary(json.loads(line), f"{p}#{i}", gpu_override))
            else:
                out.append(_from_summary(json.loads(text), str(p), gpu_override))
        except (KeyError, TypeError, ValueError, ValidationError) as e:
            raise ConfigError(f"{p}: not a measurement file ({e})", hint="perftune bench summary.json") from e
    if not out:
        raise ConfigError("no measurements", hint="pass at least one summary.json")
    return out


class PointPrediction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tpot_ms: float
    ttft_ms: float
    output_tok_s: float


def predict_point(
    card: ModelCard, g: Gpu, cal: Calibration, m: Measurement, trials: int = 1
) -> PointPrediction:
    """Replay one measured point in virtual time (same requests, concurrency, trials) and average."""
    cfg = parse_vllm_flags(m.flags, SimConfig(scheduler="sglang" if m.engine == "sglang" else "vllm"))
    core = EngineCore(card, g, cfg, cal)
    tpots, ttfts, rates = [], [], []
    t = 0.0
    # Closed-loop waves beyond 32 x concurrency only repeat the steady state: replaying them would
    # cost minutes per fit (c=1 x 1000 requests is 128k steps) and change no metric beyond noise.
    n = min(m.num_requests, max(32 * m.concurrency, 8))
    for k in range(trials):
        f = replay_random(core, isl=m.isl, osl=m.osl, n=n, salt=k + 1, concurrency=m.concurrency, t0=t)
        tpots.append(float(np.median(f.tpots_ms) if m.tpot_stat == "median" else np.mean(f.tpots_ms)))
        ttfts.append(f.ttft_ms)
        rates.append(f.output_tok_s)
        t = f.end_s + 1.0
    return PointPrediction(
        tpot_ms=float(np.mean(tpots)), ttft_ms=float(np.mean(ttfts)), output_tok_s=float(np.mean(rates))
    )


WEIGHTS = {"tpot_ms": 1.0, "output_tok_s": 1.0, "ttft_ms": 0.5}
# a dtype refit's bounds where they are not (0.1, the factor's upper bound): host times in microseconds
DTYPE_BOUNDS = {"fp8_ungraphed_layer_us": (1.0, 1e4)}
# the API server's refit bounds: ms per request (serial, shared), us per streamed token
FRONTEND_BOUNDS = {
    "frontend_ms_per_request": (0.01, 20.0),
    "frontend_shared_ms_per_request": (0.01, 20.0),
    "frontend_us_per_token": (1.0, 2000.0),
}
# fit_moe's bounds and starting points per MoE factor
MOE_BOUNDS = {
    "moe_routing_spread": (1e-3, 1.0),
    "moe_gemm_efficiency": (0.02, 1.0),
    "moe_layer_overhead_us": (0.1, 1000.0),
    "moe_ungraphed_layer_us": (1.0, 1e4),
    "moe_expert_pool": (0.1, 1.0),
}
MOE_START = {
    "moe_routing_spread": 0.3,
    "moe_gemm_efficiency": 0.3,
    "moe_layer_overhead_us": 20.0,
    "moe_ungraphed_layer_us": 1000.0,
    "moe_expert_pool": 0.5,
}


def ape(pred: PointPrediction, m: Measurement) -> dict[str, float]:
    """Absolute percentage error per metric."""
    return {k: abs(getattr(pred, k) - getattr(m, k)) / getattr(m, k) * 100 for k in WEIGHTS}


def fit(
    card: ModelCard,
    g: Gpu,
    points: Sequence[Measurement],
    base: Calibration | None = None,
    maxiter: int = 300,
) -> Calibration:
    from scipy.optimize import minimize

    base = base or Calibration(gpu=g.key)
    seen = {part for m in points for part in _dtypes(m)}
    # The API server's CPU costs show only where admissions meet a busy CPU (bursts, large batches
    # streaming). At concurrency 1 they only add to the fixed latency: points all at c=1 leave them be.
    front = FRONTEND_FITTABLE if any(m.concurrency > 1 for m in points) else ()
    keys = [*FITTABLE, *(f for d, fs in DTYPE_FITTABLE.items() if d in seen for f in fs)]
    if card.moe is not None:
        keys += MOE_FITTABLE
    joint = len(keys)  # the simplex's factors; the API server's shared costs are only refitted, below
    keys += FRONTEND_FITTABLE[1:]
    x0 = np.log([(base.fp8_gemm if k == "fp8_gemm_efficiency" else getattr(base, k)) or 1e-3 for k in keys])
    upper = {
        "hbm_efficiency": 1.0,
        "gemm_efficiency": 1.0,
        "attn_efficiency": 1.0,
        "fp8_weight_efficiency": 2.0,
        "fp8_gemm_efficiency": 2.0,
        "fp8_kv_efficiency": 2.0,
        "nvfp4_weight_efficiency": 2.0,
        "nvfp4_gemm_efficiency": 2.0,
        "moe_routing_spread": 1.0,
        "moe_gemm_efficiency": 1.0,
        "moe_expert_pool": 1.0,
    }

    def make(x: np.ndarray) -> Calibration:
        vals = {k: min(float(math.exp(v)), upper.get(k, math.inf)) for k, v in zip(keys, x, strict=True)}
        return base.model_copy(update=vals)

    def loss(x: np.ndarray) -> float:
        return points_loss(card, g, make(x), points)

    def refit_dtypes(x: np.ndarray) -> None:
        """A dtype's factors are ratios to the bf16 kernels, seen only in that dtype's points (often a
        few among many): the joint simplex barely moves them from their priors. So each is refitted (1-D,
        bounded; a dtype with one factor per phase in two coordinate-descent rounds) on the dtype's own
        points, the shared factors held, in place in `x`."""
        for dtype, fs in DTYPE_FITTABLE.items():
            if dtype not in seen:  # fitted only where the points hold that dtype
                continue
            mine = [m for m in points if dtype in _dtypes(m)]
            for _ in range(2 if len(fs) > 1 else 1):
                for k in fs:
                    i = keys.index(k)

                    def own(v: float, i: int = i, pts: list[Measurement] = mine) -> float:
                        y = x.copy()
                        y[i] = v
                        return points_loss(card, g, make(y), pts)

                    x[i] = _fit_one(own, *(DTYPE_BOUNDS[k] if k in DTYPE_BOUNDS else (0.1, upper[k])))

    # Before the simplex too: a dtype factor left at its prior (FP8 weights read in half the time) would
    # otherwise bend the shared factors (the step overhead) to make up for it on that dtype's points.
    x = x0.copy()
    refit_dtypes(x)
    opts = {"maxiter": maxiter, "xatol": 1e-3, "fatol": 1e-6}
    res = minimize(
        lambda xj: loss(np.concatenate([xj, x[joint:]])), x[:joint], method="Nelder-Mead", options=opts
    )
    x = np.concatenate([res.x, x[joint:]])
    # The API server's costs, seen in a few of the points: refitted one at a time (1-D, bounded) on every
    # point, the rest held.
    for k in front:
        i = keys.index(k)

        def whole(v: float, i: int = i) -> float:
            y = x.copy()
            y[i] = v
            return loss(y)

        x[i] = _fit_one(whole, *FRONTEND_BOUNDS[k], xatol=0.02)
    refit_dtypes(x)
    cal = make(x)
    fitted = keys if front else keys[:joint]
    if card.moe is not None:
        # the joint simplex barely moves factors whose priors sit on their bounds: refit them bounded
        cal = fit_moe(card, g, cal, points)
    preds = [predict_point(card, g, cal, m) for m in points]
    errs = [ape(p, m) for p, m in zip(preds, points, strict=True)]
    table = residual_table(points, preds)
    return cal.model_copy(
        update={
            "fitted": fitted,
            "priors": [
                k
                for k in (
                    *FRONTEND_FITTABLE[1:],
                    *ENGINE_PRIORS,
                    *DTYPE_FACTORS,
                    *MOE_FITTABLE,
                )
                if k not in fitted
            ],
            "sources": sorted({m.source.split("#")[0] for m in points}),
            "engine": points[0].engine,
            "engine_version": points[0].engine_version,
            "train_mape_pct": {k: round(float(np.mean([e[k] for e in errs])), 2) for k in WEIGHTS},
            "residuals": table,
        }
    )


def fit_moe(
    card: ModelCard, g: Gpu, cal: Calibration, points: Sequence[Measurement], factors: int = len(MOE_FITTABLE)
) -> Calibration:
    """The MoE factors fitted to measured MoE points, every other factor held: the routing spread (decode
    reads the experts its batch touches), the MoE GEMM efficiency (prefill is FLOP bound), the
    per-MoE-layer step overhead (a batch-1 step's router and permute kernels) and the host time per MoE
    layer of a step run without CUDA graphs. `factors` fits the first that many of MOE_FITTABLE, the rest
    as they are in `cal` (3: the model before the ungraphed host term, 2026-12-03). Bounded Powell on the
    log factors, from mid-range starts (the priors sit on bounds, where clamped steps see a flat loss),
    on `fit`'s own loss."""
    from scipy.optimize import minimize

    keys = MOE_FITTABLE[:factors]

    def make(x: np.ndarray) -> Calibration:
        return cal.model_copy(update={k: float(np.exp(v)) for k, v in zip(keys, x, strict=True)})

    res = minimize(
        lambda x: points_loss(card, g, make(x), points),
        np.log([MOE_START[k] for k in keys]),
        method="Powell",
        bounds=[(math.log(MOE_BOUNDS[k][0]), math.log(MOE_BOUNDS[k][1])) for k in keys],
        options={"maxiter": 40, "xtol": 1e-2},
    )
    return make(np.array(res.x))


def residual_table(
    points: Sequence[Measurement], preds: Sequence[PointPrediction]
) -> dict[str, dict[str, Residual]]:
    """Per regime, per metric: the residuals of `preds` against the measured `points` (every interval's
    source)."""
    return residuals(
        (regime_of(m), p.model_dump(), {k: getattr(m, k) for k in WEIGHTS})
        for p, m in zip(preds, points, strict=True)
    )


def points_loss(card: ModelCard, g: Gpu, cal: Calibration, points: Sequence[Measurement]) -> float:
    """The fit's loss: the weighted mean squared log ratio of predicted to measured, over the points."""
    total = 0.0
    for m in points:
        p = predict_point(card, g, cal, m)
        total += sum(w * math.log(getattr(p, k) / getattr(m, k)) ** 2 for k, w in WEIGHTS.items())
    return total / len(points)


def _fit_one(f: Callable[[float], float], lo: float, hi: float, xatol: float = 1e-3) -> float:
    """The log-scale value in [log lo, log hi] minimising f (bounded Brent, to `xatol` in log)."""
    from scipy.optimize import minimize_scalar

    r = minimize_scalar(f, bounds=(math.log(lo), math.log(hi)), method="bounded", options={"xatol": xatol})
    return float(r.x)


def base_calibration(
    card: ModelCard, g: Gpu, device_memory_mib: float | None = None, kv_tokens: int | None = None
) -> Calibration:
    """Starting point of a fit, with the memory model pinned to what the engine reported, when known:
    the KV size it logged at its default fraction (0.9) fixes the non-KV reserve. The API server's
    shared CPU (`Frontend`) starts from 1 ms per request and 50 us per streamed token."""
    base = Calibration(
        gpu=g.key, frontend_shared_ms_per_request=1.0, frontend_us_per_token=50.0, ungraphed_ahead=1.0
    )
    if device_memory_mib:
        base = base.model_copy(update={"memory_bytes": device_memory_mib * 2**20})
    if kv_tokens:
        weights = card.total_params * WEIGHT_BYTES["bf16"]
        reserve = base.device_bytes(g) * 0.9 - weights - kv_tokens * card.kv_bytes_per_token["bf16"]
        base = base.model_copy(update={"non_kv_reserve_bytes": max(0.0, reserve)})
    return base
