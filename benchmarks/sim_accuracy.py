"""Simulator accuracy against real vLLM 0.26.0, leave one regime out.

Real points (all committed under benchmarks/results, every one a closed-loop random-workload bench of the
dense Llama-3.1-8B with dummy weights, 3 trials each):
- H100 (run 1, 2026-11-23): the shared README table (3 points), perftune's c=1/16/64 run (3), the
  12-point ISL/OSL/concurrency sweep, and the phase 1 and 3 cells of the tune campaign (`--from`);
- H200 (run 2, 2026-12-02): the SLO capacity search's closed-loop points, engine defaults (7) and FP8 KV
  cache (7; the bundle's README says `--kv-cache-dtype fp8`: its cells' context does not, so it is set
  here);
- H200 (run 3, 2026-12-03): `perftune tune` bf16 vs FP8 weights (`--quantization fp8`) at c=1 and c=24,
  3 deploys each (averaged into one 3-trial point), and its phase 1 bf16 c=16 cell (5 points);
- H200 (run 4, 2026-12-04, predicted before it was measured in `sim_fresh_points.py`): bf16 and FP8
  weights at c=1 with prompts of 512 to 4096 tokens (8 out), c=64 (both) and c=128 (FP8), FP8 with graphs
  up to 2048 tokens at c=1 (13 points). FP8 weights then hold three regimes (c1-4, c5-48, c49+): each
  held out leaves the others to fit the three FP8 factors (decode, prefill GEMMs, ungraphed host time).
- H200 (run 5, 2026-12-05, predicted before it was measured in `sim_fresh_points.py`): the concurrency
  ladder, FP8 weights at c=1, 4, 8, 16, 24, 32, 48, 96 (1024/128) and c=16 512/256, bf16 at c=1, 4, 48,
  96, 128 (14 points). FP8 weights now have mid-band decode points, and bf16 three points above c=48.
Regimes (perftune.sim.errorbars): concurrency band (c1-4, c5-48, c49+) x dtype x workload, per GPU.
Each regime is held out in turn: the simulator is calibrated on that GPU's other points and predicts the
held-out ones (3 trials in virtual time), so every point is predicted once by a fit that never saw its
regime. The held-out point's interval (from the fit's residuals, flagged as extrapolated: its regime is
by construction not calibrated) is checked too. The MoE (DeepSeek-V2-Lite, H200, dummy weights: c=16 on
2026-12-02 and 2026-12-03, the 2026-12-03 ladder at c=1, 16, 64, and the 2026-12-04 prefill run: c=1 at
prompts of 256 to 8192 tokens and c=32 on engine defaults, c=1 and c=64 with graphs captured up to 2048
tokens) is held out by concurrency band: the H200 dense fit (all its points) with the five MoE factors
(routing spread, MoE GEMM efficiency, per-MoE-layer step overhead, host time per MoE layer of an
ungraphed step, the share of experts the router reaches) fitted to the other bands' MoE points
predicts the held-out band; its errors count in the MAPE. The second 2026-12-04 run (c=4, 8, 48, 128
on defaults; c=1 1536/8 and c=16 with graphs to 2048) joins them: predicted before it was measured in
`sim_fresh_points.py`, held out by band here, and so does the 2026-12-05 MoE run (c=8 768/32 and 384/32,
c=16 640/16 on defaults, measured after the dense ladder on its machine, not predicted first).
SGLang 0.5.16 on the H100 (c=1, 16, 64) is held out as an engine: the fit on every vLLM H100 point
predicts it with SGLang's scheduler.

Prints the per-regime table and ends with
    held-out MAPE: tpot=X% output_tok_s=Y% ttft=Z% (n=N points)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from perftune.hardware.ceilings import Gpu, gpu
from perftune.models.card import ModelCard
from perftune.models.resolve import model_card
from perftune.sim.calibrate import (
    Measurement,
    ape,
    base_calibration,
    fit,
    fit_moe,
    from_bundles,
    load_measurements,
    predict_point,
    regime_of,
    residual_table,
)
from perftune.sim.calibration import Calibration
from perftune.sim.errorbars import interval

R = Path(__file__).resolve().parent / "results"
H100_MIB, H100_KV = 81559, 464_816  # the H100 run's nvidia-smi and vLLM's logged KV tokens
MAXITER = 60
METRICS = ("tpot_ms", "output_tok_s", "ttft_ms")


def h100_points() -> list[Measurement]:
    shared = load_measurements([R / "2026-11-23-h100-vllm-0.26.0-shared-readme/points.yaml"])
    main = load_measurements(
        sorted((R / "2026-11-23-h100-vllm-0.26.0").glob("perftune-c*.summary.json")), "h100-sxm"
    )
    sweep = load_measurements([R / "2026-11-23-h100-vllm-0.26.0-sim-points/points.jsonl"], "h100-sxm")
    tune, _ = from_bundles([R / "2026-11-23-h100-vllm-0.26.0-tune/campaign"], "h100-sxm")
    return shared + main + sweep + tune


def merged(ms: list[Measurement]) -> list[Measurement]:
    """The per-deploy trials of one (flags, concurrency) point (a tune's full treatment: one trial per
    fresh deploy), averaged into one point of that many trials."""
    groups: dict[tuple[tuple[str, ...], int], list[Measurement]] = {}
    for m in ms:
        groups.setdefault((tuple(m.flags), m.concurrency), []).append(m)
    out = []
    for g in groups.values():
        avg = {k: float(np.mean([getattr(m, k) for m in g])) for k in METRICS}
        src = g[0].source if len(g) == 1 else f"{len(g)} deploys: {g[0].source.rsplit('/', 2)[0]}"
        out.append(g[0].model_copy(update={"source": src, "trials": sum(m.trials for m in g), **avg}))
    return sorted(out, key=lambda m: (m.flags, m.concurrency))


def h200_points(fresh: bool = True, phase: bool = True) -> list[Measurement]:
    """Run 2's 14 closed-loop points, (fresh) run 3's 5: the 2026-12-03 tune of bf16 vs FP8 weights at
    c=1 and c=24 (3 deploys each) and its phase 1 bf16 c=16 cell, (phase) run 4's 13, `fp8_points`, and
    (phase) run 5's 14, `ladder_points`."""
    cap = R / "2026-12-02-h200-vllm-0.26.0-slo-capacity"
    base, _ = from_bundles([cap / "baseline-closed"], "h200")
    fp8, _ = from_bundles([cap / "fp8kv-closed"], "h200")
    run2 = base + [m.model_copy(update={"flags": [*m.flags, "--kv-cache-dtype", "fp8"]}) for m in fp8]
    if not fresh:
        return run2
    run3, _ = from_bundles([R / "2026-12-03-h200-vllm-0.26.0-fp8-moe/fp8-ab/campaign"], "h200")
    return run2 + merged(run3) + (fp8_points() + ladder_points() if phase else [])


FP8 = R / "2026-12-04-h200-vllm-0.26.0-fp8-phase"


def fp8_points() -> list[Measurement]:
    """The 2026-12-04 FP8 phase run (3 trials per point, one deploy per arm): bf16 at c=1 with prompts of
    512 to 4096 tokens (8 out) and c=64 1024/128; FP8 weights (--quantization fp8) at the same c=1
    prompts, c=64 and c=128; FP8 weights with graphs up to 2048 tokens at c=1 1024/8 and 2048/8."""
    fp8 = ["--quantization", "fp8"]
    out = arms(FP8, {"bf16": [], "fp8": fp8, "fp8-graphs2048": [*fp8, *GRAPHS_2048]})
    return sorted(out, key=lambda m: (m.flags, m.concurrency, m.isl))


FP8_LADDER = R / "2026-12-05-h200-vllm-0.26.0-fp8-ladder"


def ladder_points() -> list[Measurement]:
    """The 2026-12-05 ladder run (3 trials per point, one deploy per arm), predicted before it was
    measured: FP8 weights at c=1, 4, 8, 16, 24, 32, 48, 96 1024/128 and c=16 512/256; bf16 at c=1, 4,
    48, 96, 128 1024/128 (c=1 and FP8 c=24 repeat 2026-12-03's points on another machine)."""
    out = arms(FP8_LADDER, {"fp8": ["--quantization", "fp8"], "bf16": []})
    return sorted(out, key=lambda m: (m.flags, m.concurrency, m.isl))


def with_residuals(card: ModelCard, g: Gpu, cal: Calibration, points: list[Measurement]) -> Calibration:
    """`cal` with its residual table (the source of every interval) from its own training points."""
    table = residual_table(points, [predict_point(card, g, cal, m) for m in points])
    return cal.model_copy(update={"residuals": table})


PREFILL = R / "2026-12-04-h200-vllm-0.26.0-moe-prefill"


def moe_points(prefill: bool = True) -> list[Measurement]:
    """DeepSeek-V2-Lite (MLA + MoE, dummy weights) on the H200: c=16 on 2026-12-02 and on 2026-12-03
    (phase 1, 3 trials each), the 2026-12-03 ladder at c=1, 16 and 64 (one deploy, 3 trials each), and
    (prefill) the 2026-12-04 run's points, `prefill_points`."""
    ms, _ = from_bundles(
        [
            R / "2026-12-02-h200-vllm-0.26.0-first-contact/optimize/campaign",
            R / "2026-12-03-h200-vllm-0.26.0-fp8-moe/moe-ladder/campaign",
            R / "2026-12-03-h200-vllm-0.26.0-moe-ladder",
        ],
        "h200",
    )
    return sorted(ms + (prefill_points() if prefill else []), key=lambda m: (m.concurrency, m.flags, m.isl))


GRAPHS_2048 = ["--max-cudagraph-capture-size", "2048"]


def arms(run: Path, flags: dict[str, list[str]] | None = None) -> list[Measurement]:
    """A run's arms, one deploy each, in the order given: arm folder -> the deploy's flags, which the
    cells' context does not record, so they are set here. By default a 2026-12-04 MoE run's two arms:
    engine defaults (`defaults/`), then CUDA graphs captured up to 2048 tokens (`graphs2048/`)."""
    out: list[Measurement] = []
    for arm, extra in (flags or {"defaults": [], "graphs2048": GRAPHS_2048}).items():
        ms, _ = from_bundles([run / arm], "h200")
        out += [m.model_copy(update={"flags": [*m.flags, *extra]}) for m in ms]
    return out


def prefill_points() -> list[Measurement]:
    """The 2026-12-04 MoE prefill run (3 trials per point): on engine defaults, c=1 with prompts of 256
    to 8192 tokens (8 out) and c=32 1024/128; with graphs up to 2048 tokens, c=1 around the graph
    boundary and c=64 1024/128."""
    return arms(PREFILL)


FRESH2 = R / "2026-12-04-h200-vllm-0.26.0-moe-fresh"


def fresh2_points() -> list[Measurement]:
    """The second 2026-12-04 MoE run, predicted before it was measured: c=4, 8, 48, 128 on engine
    defaults; c=1 1536/8 and c=16 1024/128 with graphs up to 2048 tokens."""
    return sorted(arms(FRESH2), key=lambda m: (m.flags, m.concurrency, m.isl))


MID = R / "2026-12-05-h200-vllm-0.26.0-moe-mid"


def mid_points() -> list[Measurement]:
    """The 2026-12-05 MoE run on engine defaults (3 trials per point, not predicted first): c=8 768/32
    and 384/32, c=16 640/16, prompts either side of the largest captured graph."""
    return sorted(arms(MID, {"defaults": []}), key=lambda m: (m.concurrency, m.isl))


def held_out(
    name: str, points: list[Measurement], base_kw: dict[str, float]
) -> tuple[list[dict[str, float]], int]:
    card, g = model_card("llama-3.1-8b"), gpu(points[0].gpu)
    regimes = sorted({regime_of(m) for m in points})
    errs: list[dict[str, float]] = []
    inside = 0
    for reg in regimes:
        train = [m for m in points if regime_of(m) != reg]
        test = [m for m in points if regime_of(m) == reg]
        if not train:
            print(f"{name} {reg}: the only regime, nothing to fit on; not held out")
            continue
        t0 = time.perf_counter()
        cal = fit(card, g, train, base_calibration(card, g, **base_kw), maxiter=MAXITER)  # type: ignore[arg-type]
        e = []
        for m in test:
            p = predict_point(card, g, cal, m, trials=3)
            e.append(ape(p, m))
            bars = [interval(k, getattr(p, k), reg, cal.residuals) for k in METRICS]
            inside += sum(b.contains(getattr(m, k)) for b, k in zip(bars, METRICS, strict=True))
        errs += e
        mape = {k: float(np.mean([x[k] for x in e])) for k in METRICS}
        took = time.perf_counter() - t0
        print(
            f"{name:5s} {reg:22s} n={len(test):2d} (fit on {len(train):2d}, {took:4.0f} s) | "
            + " ".join(f"{k}={mape[k]:5.1f}%" for k in METRICS)
        )
    return errs, inside


def moe_held_out(h200: list[Measurement]) -> tuple[list[dict[str, float]], int]:
    """DeepSeek-V2-Lite, leave one concurrency band out: the H200 dense fit (all its points) with the
    five MoE factors fitted to the other bands' MoE points predicts the held-out band (3 trials in
    virtual time), its interval from the MoE training points' residuals."""
    moe, card, g = moe_points() + fresh2_points() + mid_points(), model_card("deepseek-v2-lite"), gpu("h200")
    cal = fit(model_card("llama-3.1-8b"), g, h200, base_calibration(card, g), maxiter=MAXITER)
    errs: list[dict[str, float]] = []
    inside = 0
    for reg in sorted({regime_of(m) for m in moe}):
        t0 = time.perf_counter()
        train = [m for m in moe if regime_of(m) != reg]
        mcal = with_residuals(card, g, fit_moe(card, g, cal, train), train)
        table = mcal.residuals
        e = []
        for m in (m for m in moe if regime_of(m) == reg):
            p = predict_point(card, g, mcal, m, trials=3)
            e.append(ape(p, m))
            inside += sum(interval(k, getattr(p, k), reg, table).contains(getattr(m, k)) for k in METRICS)
        errs += e
        mape = {k: float(np.mean([x[k] for x in e])) for k in METRICS}
        print(
            f"MoE   {reg:22s} n={len(e):2d} (fit on {len(train):2d}, {time.perf_counter() - t0:4.0f} s) | "
            + " ".join(f"{k}={mape[k]:5.1f}%" for k in METRICS)
            + f" | spread {mcal.moe_routing_spread:.3f}, MoE GEMM {mcal.moe_gemm_efficiency:.3f}, "
            f"{mcal.moe_layer_overhead_us:.0f} us/MoE layer, ungraphed {mcal.moe_ungraphed_layer_us:.0f} us"
        )
    return errs, inside


SGLANG = R / "2026-11-23-h100-sglang-0.5.16-perftune-deploy-bench"


def sglang_held_out(h100: list[Measurement]) -> tuple[list[dict[str, float]], int]:
    """SGLang 0.5.16 on the H100 (run 2026-11-23: dummy Llama-3.1-8B, random 1024/128 at c=1, 16, 64, 3
    trials each), the engine held out: the fit on every vLLM H100 point predicts them with SGLang's
    scheduler (prefill first), intervals from the vLLM residuals of the same band (the regimes do not
    split by engine, so these intervals are not widened for it)."""
    card, g = model_card("llama-3.1-8b"), gpu("h100-sxm")
    sg, _ = from_bundles([SGLANG], "h100-sxm")
    t0 = time.perf_counter()
    cal = fit(card, g, h100, base_calibration(card, g, H100_MIB, H100_KV), maxiter=MAXITER)
    errs: list[dict[str, float]] = []
    inside = 0
    for m in sorted(sg, key=lambda m: m.concurrency):
        p = predict_point(card, g, cal, m, trials=3)
        errs.append(ape(p, m))
        inside += sum(
            interval(k, getattr(p, k), regime_of(m), cal.residuals).contains(getattr(m, k)) for k in METRICS
        )
    mape = {k: float(np.mean([x[k] for x in errs])) for k in METRICS}
    print(
        f"SGLang c1,16,64 (engine held out)  n={len(errs):2d} (fit on {len(h100):2d}, "
        f"{time.perf_counter() - t0:4.0f} s) | " + " ".join(f"{k}={mape[k]:5.1f}%" for k in METRICS)
    )
    return errs, inside


def main() -> int:
    h100, h200 = h100_points(), h200_points()
    print(
        f"real points: {len(h100)} on H100 (run 2026-11-23), {len(h200)} on H200 (runs 2026-12-02 to 12-05)"
    )
    print("GPU   held-out regime          points                       | held-out APE per metric (mean)")
    e1, in1 = held_out("H100", h100, {"device_memory_mib": H100_MIB, "kv_tokens": H100_KV})
    e2, in2 = held_out("H200", h200, {})
    errs = e1 + e2
    e3, in3 = moe_held_out(h200)
    e4, in4 = sglang_held_out(h100)
    errs = errs + e3 + e4
    inside = in1 + in2 + in3 + in4
    mape = {k: float(np.mean([e[k] for e in errs])) for k in METRICS}
    n = len(errs)
    print(
        f"held-out values inside the extrapolated interval: {inside} of {3 * n} "
        "(simulated predictions vs real vLLM 0.26.0 and SGLang 0.5.16, DRAFT)"
    )
    print(
        f"held-out MAPE: tpot={mape['tpot_ms']:.1f}% output_tok_s={mape['output_tok_s']:.1f}% "
        f"ttft={mape['ttft_ms']:.1f}% (n={n} points)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
