"""Simulator accuracy against real vLLM 0.26.0, leave one regime out.

Real points (all committed under benchmarks/results, every one a closed-loop random-workload bench of the
dense Llama-3.1-8B with dummy weights, 3 trials each):
- H100 (run 1, 2026-11-23): the shared README table (3 points), perftune's c=1/16/64 run (3), the
  12-point ISL/OSL/concurrency sweep, and the phase 1 and 3 cells of the tune campaign (`--from`);
- H200 (run 2, 2026-12-02): the SLO capacity search's closed-loop points, engine defaults (7) and FP8 KV
  cache (7; the bundle's README says `--kv-cache-dtype fp8`: its cells' context does not, so it is set
  here);
- H200 (run 3, 2026-12-03): `perftune tune` bf16 vs FP8 weights (`--quantization fp8`) at c=1 and c=24,
  3 deploys each (averaged into one 3-trial point), and its phase 1 bf16 c=16 cell (5 points). With
  FP8 weights at two concurrencies, holding one out leaves the other to fit the FP8-weight factor.
Regimes (perftune.sim.errorbars): concurrency band (c1-4, c5-48, c49+) x dtype x workload, per GPU.
Each regime is held out in turn: the simulator is calibrated on that GPU's other points and predicts the
held-out ones (3 trials in virtual time), so every point is predicted once by a fit that never saw its
regime. The held-out point's interval (from the fit's residuals, flagged as extrapolated: its regime is
by construction not calibrated) is checked too. The MoE cell (DeepSeek-V2-Lite, H200, c=16, dummy
weights) is predicted by the H200 dense fit and shown apart, at the MoE priors and with its two MoE
factors (routing spread, MoE GEMM efficiency) fitted to it: one point is a check, not a regime.

Prints the per-regime table and ends with
    held-out MAPE: tpot=X% output_tok_s=Y% ttft=Z% (n=N points)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
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
    from_bundles,
    load_measurements,
    predict_point,
    regime_of,
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


def h200_points(fresh: bool = True) -> list[Measurement]:
    """Run 2's 14 closed-loop points, and (fresh) run 3's 5: the 2026-12-03 tune of bf16 vs FP8 weights
    at c=1 and c=24 (3 deploys each) and its phase 1 bf16 c=16 cell."""
    cap = R / "2026-12-02-h200-vllm-0.26.0-slo-capacity"
    base, _ = from_bundles([cap / "baseline-closed"], "h200")
    fp8, _ = from_bundles([cap / "fp8kv-closed"], "h200")
    run2 = base + [m.model_copy(update={"flags": [*m.flags, "--kv-cache-dtype", "fp8"]}) for m in fp8]
    if not fresh:
        return run2
    run3, _ = from_bundles([R / "2026-12-03-h200-vllm-0.26.0-fp8-moe/fp8-ab/campaign"], "h200")
    return run2 + merged(run3)


def bisect(f: Callable[[float], float], target: float, lo: float = 0.0, hi: float = 1.0) -> float:
    """The x in [lo, hi] where f(x) meets target, f above target meaning x is too small (12 halvings)."""
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > target else (lo, mid)
    return lo


def fit_moe_point(card: ModelCard, g: Gpu, cal: Calibration, m: Measurement) -> Calibration:
    """The two MoE factors fitted to one measured point, the dense factors held: the routing spread to
    its TPOT (decode reads the experts its batch touches) and the MoE GEMM efficiency to its TTFT
    (prefill is FLOP bound), alternated twice since each moves the other metric a little."""

    def tpot_at(spread: float) -> float:  # grows with the spread: negated, so "above" means go right
        return -predict_point(card, g, cal.model_copy(update={"moe_routing_spread": spread}), m).tpot_ms

    def ttft_at(eff: float) -> float:  # falls as the MoE GEMM rate rises: above the target, go right
        return predict_point(card, g, cal.model_copy(update={"moe_gemm_efficiency": eff}), m).ttft_ms

    for _ in range(2):
        cal = cal.model_copy(update={"moe_routing_spread": bisect(tpot_at, -m.tpot_ms)})
        cal = cal.model_copy(update={"moe_gemm_efficiency": bisect(ttft_at, m.ttft_ms, lo=0.05)})
    return cal


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


def main() -> int:
    h100, h200 = h100_points(), h200_points()
    print(f"real points: {len(h100)} on H100 (run 2026-11-23), {len(h200)} on H200 (runs 2026-12-02/03)")
    print("GPU   held-out regime          points                       | held-out APE per metric (mean)")
    e1, in1 = held_out("H100", h100, {"device_memory_mib": H100_MIB, "kv_tokens": H100_KV})
    e2, in2 = held_out("H200", h200, {})
    errs = e1 + e2
    # the MoE check: DeepSeek-V2-Lite on the H200 (dummy weights), predicted by the H200 dense fit (all
    # its points) at the MoE priors (independent uniform routing, the dense GEMM rate) and with the two
    # MoE factors fitted to it (bisection: fitted to this one point, so not a held-out figure)
    moe, _ = from_bundles([R / "2026-12-02-h200-vllm-0.26.0-first-contact/optimize/campaign"], "h200")
    card, g = model_card("deepseek-v2-lite"), gpu("h200")
    cal = fit(model_card("llama-3.1-8b"), g, h200, base_calibration(card, g), maxiter=MAXITER)
    for m in moe:
        fitted = fit_moe_point(card, g, cal, m)
        for label, c in (
            ("priors (uniform routing, dense GEMM rate)", cal),
            (
                f"spread {fitted.moe_routing_spread:.3f}, MoE GEMM {fitted.moe_gemm_efficiency:.3f} "
                "(fitted here)",
                fitted,
            ),
        ):
            p = predict_point(card, g, c, m, trials=3)
            a = ape(p, m)
            print(
                f"MoE check (not in the MAPE): DeepSeek-V2-Lite c={m.concurrency} H200, {label} | TPOT "
                f"{p.tpot_ms:.2f} / {m.tpot_ms:.2f} ms, tok/s {p.output_tok_s:.0f} / {m.output_tok_s:.0f}, "
                f"TTFT {p.ttft_ms:.0f} / {m.ttft_ms:.0f} ms (sim / real) | "
                + " ".join(f"{k}={a[k]:.1f}%" for k in METRICS)
            )
    mape = {k: float(np.mean([e[k] for e in errs])) for k in METRICS}
    n = len(errs)
    print(
        f"held-out values inside the extrapolated interval: {in1 + in2} of {3 * n} "
        "(simulated predictions vs real vLLM 0.26.0, DRAFT)"
    )
    print(
        f"held-out MAPE: tpot={mape['tpot_ms']:.1f}% output_tok_s={mape['output_tok_s']:.1f}% "
        f"ttft={mape['ttft_ms']:.1f}% (n={n} points)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
