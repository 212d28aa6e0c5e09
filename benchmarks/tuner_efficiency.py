"""Tuner efficiency on the simulator, where the optimum of a search space is known exhaustively.

Space (vLLM levers on the simulated H100, Llama-3.1-8B, random 1024/128, throughput under the
campaign's default SLO: mean TTFT <= 2000 ms, median TPOT <= 50 ms, over the ladder 16/64/128):
batch-cap x prefill-chunk x kv-cache-dtype x cuda-graphs x prefix-cache. Exhaustive = every point,
3 interleaved trials at every concurrency. Budget is GPU-seconds on the (simulated) node: each
deploy costs a modelled 60 s boot (vLLM 0.26.0's warm restart measured on the H100 was ~45-60 s) plus
the virtual span of every trial. The tuner's crowned config is scored with the exhaustive table (its
own noisy trials do not grade it), so the ratio compares like with like. All numbers are simulated.

The same exhaustive table (same measures) is scored a second time under latency focus (median TPOT
at the target concurrency 16, the SLO still in force, as `perftune tune` scores a latency campaign),
and the tuner is run again with that focus: its crowned config's exhaustive TPOT against the best TPOT
of any config, budget against the same exhaustive budget.

Ends with: tuner: X% of optimum throughput using Y% of exhaustive budget
      then: tuner (latency focus): X% of optimum TPOT speed (best TPOT / crowned TPOT at c=16) using
            Y% of exhaustive budget
"""

from __future__ import annotations

import itertools
import sys
import time

from perftune.hardware.ceilings import gpu
from perftune.models.resolve import model_card
from perftune.sim.calibration import for_gpu
from perftune.tune.arms import Arm, grid_arms
from perftune.tune.evaluate import PredictEvaluator, feasibility
from perftune.tune.search import Measure, TuneConfig, interleave, run_tuner, score

SPACE: dict[str, list[object]] = {
    "batch-cap": [16, 64, 256],
    "prefill-chunk": [512, 2048, 8192, 16384],
    "kv-cache-dtype": ["auto", "fp8"],
    "cuda-graphs": [True, False],
    "prefix-cache": [True, False],
}
BASE = {
    "batch-cap": 64,
    "prefill-chunk": 2048,
    "kv-cache-dtype": "auto",
    "cuda-graphs": True,
    "prefix-cache": True,
}


def main() -> int:
    card, g = model_card("llama-3.1-8b"), gpu("h100")
    cal = for_gpu(g)
    cfg = TuneConfig(ladder=[16, 64, 128], slo_ttft_ms=2000.0, slo_tpot_ms=50.0, trials=3, top_k=3)
    ev = PredictEvaluator(card, g, cal, isl=1024, osl=128)

    t0 = time.perf_counter()
    grid = [
        Arm(
            engine="sim",
            name=";".join(f"{k}={v}" for k, v in zip(SPACE, combo, strict=True)),
            levers=dict(zip(SPACE, combo, strict=True)),
        )
        for combo in itertools.product(*SPACE.values())
    ]
    table: dict[str, float | None] = {}
    exhaustive_s = 0.0
    measures: dict[str, list[Measure]] = {}
    for arm, t in interleave(grid, range(cfg.trials)):
        out = ev.run(arm, cfg.ladder, t, screening=False)
        exhaustive_s += out.gpu_s
        measures.setdefault(arm.key, []).extend(out.measures)
    for arm in grid:
        table[arm.key] = score(measures[arm.key], cfg)[0]
    best_key = max((k for k in table if table[k] is not None), key=lambda k: table[k] or 0.0)
    optimum = table[best_key] or 0.0
    took = time.perf_counter() - t0
    print(f"exhaustive: {len(grid)} configs x {cfg.trials} trials x c={cfg.ladder} in {took:.0f} s wall")
    print(f"  optimum {optimum:.0f} tok/s (simulated) at {best_key.removeprefix('sim/')}")
    print(f"  exhaustive budget: {exhaustive_s / 60:.1f} GPU-min (simulated node)")

    arms = grid_arms("sim", BASE, SPACE)
    res = run_tuner(arms, ev, cfg, feasible=feasibility(card, g, cal, max(cfg.ladder), 1024 + 128))
    e = res.engines[0]
    assert e.crowned is not None, "the tuner crowned nothing"
    key = "sim/" + ";".join(f"{k}={e.crowned.levers[k]}" for k in SPACE)
    found = table[key] or 0.0
    base_key = "sim/" + ";".join(f"{k}={BASE[k]}" for k in SPACE)
    print(
        f"tuner: {len(arms)} round-1 arms, {len(res.order)} deploys, stages (GPU-min): "
        + ", ".join(f"{k}={v / 60:.1f}" for k, v in res.gpu_s_by_stage.items())
    )
    print(
        f"  crowned {e.crowned.name} ({e.top3[0][2]} trials per concurrency): "
        f"exhaustive score {found:.0f} tok/s; baseline {table[base_key] or 0:.0f} tok/s"
    )
    if e.ratio is not None and e.ratio_ci95 is not None:
        print(
            f"  champion / baseline (tuner's own trials): {e.ratio:.3f} "
            f"[{e.ratio_ci95[0]:.3f}, {e.ratio_ci95[1]:.3f}] 95% CI"
        )
    print(f"  pruned: {len(res.pruned)}; failures: {len(res.failures)}")
    print(
        f"  tuner budget: {res.gpu_s / 60:.1f} GPU-min vs exhaustive {exhaustive_s / 60:.1f} GPU-min "
        "(simulated)"
    )
    print(
        f"tuner: {100 * found / optimum:.1f}% of optimum throughput using "
        f"{100 * res.gpu_s / exhaustive_s:.1f}% of exhaustive budget"
    )

    # latency focus: the same exhaustive measures, scored as median TPOT at the target concurrency
    lat = TuneConfig(**{**cfg.__dict__, "focus": "latency", "target_concurrency": 16})
    at = lat.judged_concurrency
    speed = {arm.key: score(measures[arm.key], lat)[0] for arm in grid}  # 1000 / TPOT ms, higher is better
    best_lat = max((k for k in speed if speed[k] is not None), key=lambda k: speed[k] or 0.0)
    best_tpot = 1000.0 / (speed[best_lat] or 1.0)
    print(
        f"exhaustive (latency focus): best median TPOT {best_tpot:.2f} ms at c={at} (simulated) at "
        f"{best_lat.removeprefix('sim/')}"
    )
    res_l = run_tuner(arms, ev, lat, feasible=feasibility(card, g, cal, max(cfg.ladder), 1024 + 128))
    el = res_l.engines[0]
    assert el.crowned is not None, "the latency tuner crowned nothing"
    key_l = "sim/" + ";".join(f"{k}={el.crowned.levers[k]}" for k in SPACE)
    found_l = speed[key_l]
    found_tpot = 1000.0 / found_l if found_l else float("inf")
    base_tpot = 1000.0 / (speed[base_key] or float("nan"))
    print(
        f"tuner (latency focus): {len(res_l.order)} deploys, stages (GPU-min): "
        + ", ".join(f"{k}={v / 60:.1f}" for k, v in res_l.gpu_s_by_stage.items())
    )
    print(
        f"  crowned {el.crowned.name}: exhaustive median TPOT {found_tpot:.2f} ms at c={at}; "
        f"baseline {base_tpot:.2f} ms"
    )
    if el.ratio is not None and el.ratio_ci95 is not None:
        print(
            f"  TPOT speedup, best challenger over baseline (tuner's own trials): {el.ratio:.3f} "
            f"[{el.ratio_ci95[0]:.3f}, {el.ratio_ci95[1]:.3f}] 95% CI; {el.verdict}"
        )
    print(
        f"tuner (latency focus): {100 * best_tpot / found_tpot:.1f}% of optimum TPOT speed "
        f"(best {best_tpot:.2f} ms / crowned {found_tpot:.2f} ms median TPOT at c={at}) using "
        f"{100 * res_l.gpu_s / exhaustive_s:.1f}% of exhaustive budget"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
