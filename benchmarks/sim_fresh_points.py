"""The simulator against real points its fit never saw: predicted value with interval vs measured.

The H200 fit is the one `benchmarks/sim_accuracy.py` uses (the 14 committed closed-loop points of
2026-12-02: engine defaults and FP8 KV cache). The fresh points are the 2026-12-03 H200 run
(`results/2026-12-03-h200-vllm-0.26.0-fp8-moe`, vLLM 0.26.0, dummy Llama-3.1-8B, random 1024/128):
- phase 3 of `perftune tune`: bf16 (engine defaults) and FP8 weights (`--quantization fp8`, a lever no
  committed bundle has) at c=1 and c=24 (a concurrency no committed bundle has), 3 trials each, every
  trial a fresh deploy with a cache reset (the three deploys of a point are averaged here);
- phase 1: bf16 at c=16, 3 trials in one deploy;
- the MoE: DeepSeek-V2-Lite (MLA + MoE, dummy weights), phase 1 at c=16, 3 trials, predicted with the
  three MoE factors (routing spread, MoE GEMM efficiency, per-MoE-layer overhead) fitted to the
  2026-12-02 run's c=16 point (the same regime measured again on another machine: a repeat check, not a
  new regime);
- the MoE ladder (`results/2026-12-03-h200-vllm-0.26.0-moe-ladder`, a later machine): the same
  DeepSeek-V2-Lite folder, one deploy, `perftune bench run` at c=1, 16 and 64, 3 trials each with a cache
  reset: c=1 and c=64 are MoE concurrencies no fit has seen (the MoE factors come from one c=16 point);
- the MoE prefill run (`results/2026-12-04-h200-vllm-0.26.0-moe-prefill`, a later machine): c=1 at
  prompts of 256 to 8192 tokens and c=32 1024/128 on engine defaults, c=1 and c=64 with CUDA graphs
  captured up to 2048 tokens (a lever no committed bundle has), 3 trials each, predicted with the four
  MoE factors fitted to the five MoE points before it. The model's fourth factor (host time per MoE
  layer of an ungraphed step) was added after this run showed the cost; its value comes from the
  earlier points only, so this checks the fit, not the model's form;
- the FP8 phase run (`results/2026-12-04-h200-vllm-0.26.0-fp8-phase`, dense, a later machine): bf16 and
  FP8 weights at c=1 with prompts of 512 to 4096 tokens, c=64 (both) and c=128 (FP8), and FP8 with
  graphs up to 2048 tokens at c=1, predicted by the calibration committed there before the run (the H200
  fit on its 19 points at the time, one FP8 factor for both phases: a calibration without
  `fp8_gemm_efficiency` keeps that meaning).
- the ladder run (`results/2026-12-05-h200-vllm-0.26.0-fp8-ladder`, dense, a later machine): FP8
  weights at c=1, 4, 8, 16, 24, 32, 48, 96 1024/128 and c=16 512/256, bf16 at c=1, 4, 48, 96, 128,
  predicted by the calibration committed there before the run (the H200 fit on all 32 committed H200
  points, with the API server's shared CPU; c=1 and FP8 c=24 repeat 2026-12-03's points).
Before the 2026-12-03 run no point had FP8 weights, so that section's FP8-weight kernel factor stays at
its prior (the roofline ratio): its FP8 rows show what an unfitted dtype costs. `sim_accuracy.py` adds
every run's points to its H200 set.

Every section but the last three refits with today's `fit()` on the points that existed before its run
(since 2026-12-05 that includes the API server's shared CPU, `Frontend`), so it asks what today's model
would have predicted then; the last three read the calibration files committed before their runs, which
predict exactly as they did (a calibration without the front end's shared costs admits first come
first served). `results/sim_fresh_points-DATE.txt` keeps each day's output.

Ends with `fresh points: K of N values inside the predicted intervals (...)`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from perftune.hardware.ceilings import gpu
from perftune.models.resolve import model_card
from perftune.sim.calibrate import (
    Measurement,
    base_calibration,
    fit,
    fit_moe,
    from_bundles,
    predict_point,
    regime_of,
)
from perftune.sim.calibration import MOE_FITTABLE, Calibration, load_calibration, save_calibration
from perftune.sim.errorbars import interval

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sim_accuracy import (
    FP8,
    FP8_LADDER,
    FRESH2,
    MAXITER,
    METRICS,
    R,
    fp8_points,
    fresh2_points,
    h200_points,
    ladder_points,
    merged,
    moe_points,
    prefill_points,
    with_residuals,
)

RUN = R / "2026-12-03-h200-vllm-0.26.0-fp8-moe"
LADDER = R / "2026-12-03-h200-vllm-0.26.0-moe-ladder"


def show(label: str, m: Measurement, card_name: str, cal: Calibration) -> tuple[int, int]:
    card, g = model_card(card_name), gpu("h200")
    p = predict_point(card, g, cal, m, trials=3)
    reg = regime_of(m)
    inside = 0
    far = False
    cells = []
    for k in METRICS:
        b = interval(k, getattr(p, k), reg, cal.residuals)
        ok = b.contains(getattr(m, k))
        inside += ok
        far = far or b.extrapolated
        lo = f"{b.lo:.4g}" if b.lo is not None else "?"
        hi = f"{b.hi:.4g}" if b.hi is not None else "?"
        cells.append(f"{k} {getattr(p, k):.4g} [{lo}, {hi}] vs {getattr(m, k):.4g} {'in' if ok else 'OUT'}")
    flag = " (extrapolated)" if far else ""
    print(f"{label:34s} c={m.concurrency:<3d} {reg}{flag} | " + " | ".join(cells))
    return inside, len(METRICS)


def moe_calibration(full: Calibration) -> Calibration:
    """The H200 calibration for DeepSeek-V2-Lite on vLLM 0.26.0: the dense fit `full` with the four MoE
    factors fitted on all 18 MoE points (through the 2026-12-04 prefill run) and their residuals, which
    give every interval. Written by --calibration-out before the second 2026-12-04 run; that run's points
    are predicted with it (`perftune sim predict --calibration` reads the same file)."""
    card, g, pts = model_card("deepseek-v2-lite"), gpu("h200"), moe_points()
    cal = with_residuals(card, g, fit_moe(card, g, full, pts, factors=4), pts)  # the model then
    return cal.model_copy(
        update={
            "fitted": [*full.fitted, *MOE_FITTABLE[:4]],
            "priors": [k for k in full.priors if k not in MOE_FITTABLE[:4]],
            "sources": [*full.sources, *sorted({m.source.split("#")[0] for m in pts})],
            "note": "dense factors: the H200 fit on 19 Llama-3.1-8B points; MoE factors: DeepSeek-V2-Lite's "
            "18 points (benchmarks/sim_fresh_points.py --calibration-out)",
        }
    )


def main() -> int:
    if "--calibration-out" in sys.argv:
        g, dense = gpu("h200"), model_card("llama-3.1-8b")
        full = fit(dense, g, h200_points(phase=False), base_calibration(dense, g), maxiter=MAXITER)
        out = Path(sys.argv[sys.argv.index("--calibration-out") + 1])
        save_calibration(moe_calibration(full), out)
        print(f"wrote {out}")
        return 0
    g = gpu("h200")
    dense = model_card("llama-3.1-8b")
    committed = h200_points(fresh=False)
    cal = fit(dense, g, committed, base_calibration(dense, g), maxiter=MAXITER)
    print(
        f"H200 fit on {len(committed)} committed points; FP8-weight factor "
        f"{cal.fp8_weight_efficiency:.3f} (the prior: no committed point has FP8 weights)"
    )
    print("point                              c   regime | predicted [interval] vs real (sim vs vLLM 0.26.0)")
    fresh, _ = from_bundles([RUN / "fp8-ab/campaign"], "h200")
    tot = [0, 0]
    for m in merged(fresh):
        label = "FP8 weights (--quantization fp8)" if "--quantization" in m.flags else "bf16"
        i, n = show(label, m, "llama-3.1-8b", cal)
        tot[0] += i
        tot[1] += n
    old, _ = from_bundles([R / "2026-12-02-h200-vllm-0.26.0-first-contact/optimize/campaign"], "h200")
    moe_card = model_card("deepseek-v2-lite")
    # the dense fit, its MoE factors fitted on 12-02's c=16, the model as it was then (three MoE factors)
    mcal = fit_moe(moe_card, g, cal, old[:1], factors=3)
    moe, _ = from_bundles([RUN / "moe-ladder/campaign"], "h200")
    ladder, _ = from_bundles([LADDER], "h200")  # c=1 and c=64: MoE concurrencies never measured before
    for m in [*moe, *sorted(ladder, key=lambda x: x.concurrency)]:
        i, n = show("DeepSeek-V2-Lite (MoE fit 12-02)", m, "deepseek-v2-lite", mcal)
        tot[0] += i
        tot[1] += n
    # 2026-12-04: the four MoE factors (with the ungraphed step's host time) fitted on every MoE point
    # before that day (5), the H200 fit on all the dense H200 points; the prefill run's points are new
    full = fit(dense, g, h200_points(phase=False), base_calibration(dense, g), maxiter=MAXITER)
    before = moe_points(prefill=False)
    mcal4 = with_residuals(moe_card, g, fit_moe(moe_card, g, full, before, factors=4), before)  # as then

    def graphed(m: Measurement) -> bool:
        return "--max-cudagraph-capture-size" in m.flags

    def moe_row(
        m: Measurement, fitted_to: str, cal: Calibration
    ) -> tuple[str, Measurement, str, Calibration]:
        graphs = "graphs<=2048, " if graphed(m) else ""
        return f"DSv2-Lite {graphs}{m.isl}/{m.osl} (fit to {fitted_to})", m, "deepseek-v2-lite", cal

    rows = [moe_row(m, "12-03", mcal4) for m in prefill_points()]
    if (FRESH2 / "defaults").exists():  # predicted before measured, by the calibration committed there
        cal2 = load_calibration(FRESH2 / "calibration.yaml")
        rows += [moe_row(m, "12-04", cal2) for m in fresh2_points()]
    if (FP8 / "bf16").exists():  # dense, predicted before measured by the calibration committed there
        fp8_cal = load_calibration(FP8 / "calibration.yaml")
        for m in fp8_points():
            arm = "FP8 weights" if "--quantization" in m.flags else "bf16"
            graphs = ", graphs<=2048" if graphed(m) else ""
            rows.append((f"{arm}{graphs} {m.isl}/{m.osl} (fit to 12-03)", m, "llama-3.1-8b", fp8_cal))
    if (FP8_LADDER / "fp8").exists():  # dense, predicted before measured by the calibration committed there
        ladder_cal = load_calibration(FP8_LADDER / "calibration.yaml")
        for m in ladder_points():
            arm = "FP8 weights" if "--quantization" in m.flags else "bf16"
            rows.append((f"{arm} {m.isl}/{m.osl} (fit to 12-04)", m, "llama-3.1-8b", ladder_cal))
    for label, m, card_name, point_cal in rows:
        i, n = show(label, m, card_name, point_cal)
        tot[0] += i
        tot[1] += n
    print(
        f"fresh points: {tot[0]} of {tot[1]} values inside the predicted intervals "
        "(simulated predictions vs real vLLM 0.26.0 on 1x H200, DRAFT)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
