"""Simulator accuracy against real vLLM 0.26.0 on one H100: calibrate on part, test on the rest.

The split is fixed in advance (not chosen by results): the calibration set is the table of
../shared/gpu/README.md (3 points), perftune's own c=1/16/64 run (3 points) and the even-indexed rows
of the 12-point sweep; the held-out set is the sweep's odd-indexed rows (6 points, never seen by the
fit). Each held-out point is replayed in virtual time with its measured request count, concurrency and
3 trials, and compared to the measured mean (the reference, measured on the GPU host the same day).

Prints one row per held-out point (predicted / measured ratio per metric) and ends with:
    held-out MAPE: tpot=X% output_tok_s=Y% ttft=Z% (n=N points)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from perftune.hardware.ceilings import gpu
from perftune.models.resolve import model_card
from perftune.sim.calibrate import ape, base_calibration, fit, load_measurements, predict_point

R = Path(__file__).resolve().parent / "results"
DEVICE_MIB = (
    81559  # nvidia-smi memory.total on the measuring H100 (results/2026-11-23-h100-vllm-0.26.0/gpu.txt)
)
KV_TOKENS = 464_816  # "GPU KV cache size" vLLM 0.26.0 logged at its defaults (sim-points/vllm-excerpt.log)


def main() -> int:
    card, g = model_card("llama-3.1-8b"), gpu("h100")
    shared = load_measurements([R / "2026-11-23-h100-vllm-0.26.0-shared-readme/points.yaml"])
    main_run = load_measurements(
        sorted((R / "2026-11-23-h100-vllm-0.26.0").glob("perftune-c*.summary.json")), "h100-sxm"
    )
    sweep = load_measurements([R / "2026-11-23-h100-vllm-0.26.0-sim-points/points.jsonl"], "h100-sxm")
    train, test = shared + main_run + sweep[0::2], sweep[1::2]
    base = base_calibration(card, g, DEVICE_MIB, KV_TOKENS)
    t0 = time.perf_counter()
    cal = fit(card, g, train, base)
    took = time.perf_counter() - t0
    print(f"calibrated on {len(train)} points in {took:.0f} s; train MAPE % {cal.train_mape_pct}")
    print("factors: " + ", ".join(f"{k}={getattr(cal, k):.4g}" for k in cal.fitted))
    head = f"{'c':>4} {'ISL':>5} {'OSL':>4} | {'TPOT ms sim/real':>17} | {'tok/s sim/real':>17} | "
    print(head + f"{'TTFT ms sim/real':>17} | ratio tpot tok/s ttft")
    errs = []
    for m in test:
        p = predict_point(card, g, cal, m, trials=3)
        errs.append(ape(p, m))
        print(
            f"{m.concurrency:>4} {m.isl:>5} {m.osl:>4} | {p.tpot_ms:7.2f} / {m.tpot_ms:7.2f} | "
            f"{p.output_tok_s:7.0f} / {m.output_tok_s:7.0f} | {p.ttft_ms:7.0f} / {m.ttft_ms:7.0f} | "
            f"{p.tpot_ms / m.tpot_ms:.3f} {p.output_tok_s / m.output_tok_s:.3f} {p.ttft_ms / m.ttft_ms:.3f}"
        )
    mape = {k: float(np.mean([e[k] for e in errs])) for k in ("tpot_ms", "output_tok_s", "ttft_ms")}
    print("all numbers are simulated predictions vs real vLLM 0.26.0 measurements (DRAFT, 1xH100)")
    print(
        f"held-out MAPE: tpot={mape['tpot_ms']:.1f}% output_tok_s={mape['output_tok_s']:.1f}% "
        f"ttft={mape['ttft_ms']:.1f}% (n={len(test)} points)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
