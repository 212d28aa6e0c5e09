"""The simulator's speculative-decoding model against vLLM 0.26.0 on one H200 (ngram, measured).

Data: every spec trial of benchmarks/results/2026-12-03-h200-vllm-0.26.0-specdec (SmolLM2-135M-Instruct,
ngram K=1..5 on chat/code/random at c=1 and K=4 at c=32, and the dummy Llama-3.1-8B at K=4, c=1), each
paired with the standing (no speculation) TPOT measured on the same workload and concurrency in the same
run. From a trial's own engine counters: the tokens a request's decode step yielded (decode tokens /
(decode tokens - accepted)), the share of steps that carried a draft (drafts / steps), and the
per-position acceptance per draft.

What is tested is the spec part of perftune.sim.specdec (the base step is the measured standing TPOT,
not the simulator's: that is issue 21's benchmark): predicted spec TPOT = (standing TPOT + overhead(c))
/ (1 + coverage x sum(per_pos)), with overhead(c) = a + b x c. The overhead is fitted leave-one-out:
each trial is predicted by a fit on all the others (trials of the same arm and workload left out too),
and the reference in the same run is the model before this fit (15 us of host lookup per sequence,
every step drafted). Prints one row per trial and ends with
    held-out MAPE: spec_tpot=X% (reference Y%, ratio Z) (n=N trials)
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from perftune.sim.specdec import NGRAM_STEP_OVERHEAD_MS, NGRAM_STEP_OVERHEAD_MS_PER_SEQ

R = Path(__file__).resolve().parent / "results" / "2026-12-03-h200-vllm-0.26.0-specdec" / "trials"
OLD_LOOKUP_MS_PER_SEQ = 0.015  # the model before this fit: an assumed 15 us host lookup per sequence


def _trial(p: Path) -> dict[str, object]:
    t = json.loads(p.read_text())["trials"][0]
    name = p.parent.name  # vllm.<arm>.full.t<N>.<workload>.c<C>
    _, arm, _, trial, workload, conc = name.split(".")
    counts = t["counts"]
    return {
        "model": p.parent.parent.name,
        "arm": arm,
        "trial": trial,
        "workload": workload,
        "c": int(conc[1:]),
        "tpot_ms": float(t["tpot_ms"]["p50"]),
        "decode": int(counts["output_tokens"]) - int(counts["ok"]),
        "spec": (t.get("engine") or {}).get("spec"),
    }


def main() -> int:
    rows = [_trial(p) for p in sorted(R.glob("*/*/summary.json"))]
    standing: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in rows:
        if r["arm"] == "standing":
            standing[(str(r["model"]), str(r["workload"]), int(r["c"]))].append(float(r["tpot_ms"]))  # type: ignore[arg-type]
    pts = []
    for r in rows:
        sp = r["spec"]
        key = (str(r["model"]), str(r["workload"]), int(r["c"]))  # type: ignore[arg-type]
        if r["arm"] == "standing" or not isinstance(sp, dict) or not sp.get("drafts") or key not in standing:
            continue
        decode, acc, drafts = int(r["decode"]), float(sp["accepted"]), float(sp["drafts"])  # type: ignore[arg-type]
        steps = decode - acc
        tps = decode / steps
        cover = drafts / steps
        per_draft = sum(float(x) for x in sp["per_pos"])
        base = float(np.mean(standing[key]))
        pts.append(
            {
                **r,
                "base": base,
                "tps": tps,
                "cover": cover,
                "per_draft": per_draft,
                "k": len(sp["per_pos"]),
                "overhead": float(r["tpot_ms"]) * tps - base,  # type: ignore[arg-type]
                "group": (r["model"], r["arm"], r["workload"], r["c"]),
            }
        )
    if len(pts) < 6:
        print(f"only {len(pts)} spec trials found under {R}", file=sys.stderr)
        return 1
    c = np.array([p["c"] for p in pts], dtype=float)
    o = np.array([p["overhead"] for p in pts], dtype=float)
    a_all, b_all = np.linalg.lstsq(np.c_[np.ones_like(c), c], o, rcond=None)[0]
    print(
        f"spec trials: {len(pts)}; overhead fit on all: a={a_all:.2f} ms + b={b_all:.3f} ms x c "
        f"(in perftune.sim.specdec: {NGRAM_STEP_OVERHEAD_MS} + {NGRAM_STEP_OVERHEAD_MS_PER_SEQ} x c)"
    )
    print(
        "model           arm       wl      c  tok/step  cover  measured TPOT  predicted  (held out)  "
        "reference  speedup meas/pred"
    )
    errs, ref_errs = [], []
    for p in pts:
        keep = [j for j, q in enumerate(pts) if q["group"] != p["group"]]
        a, b = np.linalg.lstsq(np.c_[np.ones(len(keep)), c[keep]], o[keep], rcond=None)[0]
        e = 1.0 + p["cover"] * p["per_draft"]  # tokens per step from coverage and acceptance per draft
        pred = (p["base"] + a + b * p["c"]) / e
        ref = (p["base"] + OLD_LOOKUP_MS_PER_SEQ * p["c"]) / (1.0 + p["per_draft"])
        meas = float(p["tpot_ms"])
        errs.append(abs(pred - meas) / meas)
        ref_errs.append(abs(ref - meas) / meas)
        print(
            f"{p['model']:<15} {p['arm']:<9} {p['workload']:<6} {p['c']:>3}  {p['tps']:8.2f}  "
            f"{p['cover']:5.2f}  {meas:10.2f} ms  {pred:7.2f} ms            {ref:7.2f} ms  "
            f"{p['base'] / meas:5.2f}/{p['base'] / pred:4.2f}"
        )
    mape, ref_mape = 100 * float(np.mean(errs)), 100 * float(np.mean(ref_errs))
    print(
        f"held-out MAPE: spec_tpot={mape:.1f}% (reference {ref_mape:.1f}%, ratio {mape / ref_mape:.2f}) "
        f"(n={len(pts)} trials)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
