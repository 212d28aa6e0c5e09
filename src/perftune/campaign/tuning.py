"""Phase 3 in the campaign: arms.tsv, the tuner over live engines, failures as findings."""

from __future__ import annotations

import json
import time
from typing import Any

from perftune.bench.stats import across_trials
from perftune.campaign.base import Ctx, Gate
from perftune.campaign.cells import card_of, serving_context, speed_of_light
from perftune.campaign.live_eval import LiveEvaluator
from perftune.campaign.report import tune_md
from perftune.campaign.state import Cell, TunedConfig
from perftune.context import metric_isolation, tier_for
from perftune.hardware.ceilings import gpu
from perftune.serving.levers import translate
from perftune.serving.registry import engine as engine_info
from perftune.serving.registry import prefix_cache_defaults
from perftune.sim.calibration import for_gpu
from perftune.tune.arms import (
    generate_arms,
    prefix_cache_mismatch,
    read_tsv,
    write_tsv,
)
from perftune.tune.evaluate import RecordingEvaluator, TuneStopped, feasibility, safe_name
from perftune.tune.search import TuneConfig, TuneResult, run_tuner
from perftune.util.atomic import write_text


def run_phase3(ctx: Ctx) -> Gate:

    i = ctx.intent
    d = ctx.run_dir / "phase3"
    card = card_of(ctx)
    tsv = d / "arms.tsv"
    if tsv.exists():  # the user's edits win
        arms = [a for a in read_tsv(tsv) if a.engine in i.serving.engines]
    else:
        arms = generate_arms(card, i.serving.engines, i.serving.levers, ctx.state.facts.ledger_arms)
        write_tsv(arms, tsv)
    if why := prefix_cache_mismatch(arms, prefix_cache_defaults()):  # before any deploy
        return Gate(
            "red",
            f"{why}: engines tuned side by side must start from the same prefix-cache state "
            "(set prefix-cache=... in each engine's baseline row of phase3/arms.tsv)",
            artifacts=["phase3/arms.tsv"],
        )
    g = gpu(i.hardware.gpu)
    ladder = i.resolved_ladder()
    cfg = TuneConfig(
        ladder=ladder,
        slo_ttft_ms=i.slo.ttft_ms,
        slo_tpot_ms=i.slo.tpot_ms,
        trials=max(3, i.suite.trials),
        top_k=i.tuning.top_k,
        budget_gpu_s=i.tuning.budget_gpu_min * 60,
        workloads=list(i.tuning.workloads),
        focus=i.slo.focus,
        target_concurrency=i.slo.target_concurrency,
    )
    # Journaled: a killed phase 3 (or one split across short GPU sessions) resumes without re-deploying.
    ev = RecordingEvaluator(
        LiveEvaluator(ctx, d, wedge_s=i.tuning.wedge_s, gpus=ctx.state.facts.tp, workloads=cfg.workloads),
        d / "journal.jsonl",
        stop_at=time.monotonic() + i.tuning.stop_after_s if i.tuning.stop_after_s else None,
        observe=ctx.observe,
        budget_gpu_s=i.tuning.budget_gpu_min * 60,
    )
    try:
        res = run_tuner(
            arms, ev, cfg, feasible=feasibility(card, g, for_gpu(g), max(ladder), i.suite.isl + i.suite.osl)
        )
    except TuneStopped as stop:
        return Gate(
            "red", f"{stop.message}; {stop.hint}", artifacts=["phase3/arms.tsv", "phase3/journal.jsonl"]
        )
    for cell in tune_cells(ctx, res):
        ctx.state.cells[cell.cell_id] = cell
    ctx.save()
    tuned = ctx.state.facts.tuned
    for e in res.engines:
        if e.crowned is not None:
            tuned[e.engine] = e.crowned.levers
        ctx.state.facts.tuned_top[e.engine] = tuned_top(e, res.arm_levers)
    proposals = failure_proposals(res)
    auto = (
        autotune_equivalent(res, len(i.tuning.workloads)) if "vllm" in i.serving.engines and res.order else ""
    )
    md, heads = tune_md(res, cfg.workloads, cfg.trials, proposals, prefix_cache_defaults(), auto)
    write_text(d / "TUNE.md", md)
    write_text(d / "known-good-candidates.json", json.dumps(proposals, indent=2) + "\n")
    write_text(d / "tune.json", json.dumps(tune_json(res), indent=2) + "\n")
    arts = ["phase3/TUNE.md", "phase3/arms.tsv", "phase3/tune.json", "phase3/known-good-candidates.json"]
    if not tuned:
        return Gate(
            "red",
            "no arm of any engine completed the full treatment",
            artifacts=arts,
            gpu_minutes=res.gpu_s / 60,
        )
    return Gate(
        "green",
        f"{len(res.order)} deploys, {len(res.failures)} failure(s) recorded, {len(res.pruned)} pruned"
        + ("; budget exhausted" if res.budget_exhausted else ""),
        headline="; ".join(heads),
        tier="DRAFT",
        artifacts=arts,
        gpu_minutes=res.gpu_s / 60,
    )


def autotune_equivalent(res: Any, workloads: int) -> str:
    """What vLLM's auto_tune grid would have covered in the GPU time this tune spent, priced with this
    run's own measured cost of one deploy plus one screening run per workload, and whether the lever
    vLLM's crowned arm changed is inside that grid at all."""
    mine = [(stage, s) for engine, stage, s in res.outcomes if engine == "vllm"]
    screens = [s for stage, s in mine if stage == "screen"]
    priced = (
        "mean screening deploy"
        if screens
        else "mean full-treatment deploy (no screening ran; a full deploy runs the whole ladder, so this "
        "over-prices a point)"
    )
    screens = screens or [s for stage, s in mine if stage == "full"]
    per_point = sum(screens) / len(screens) if screens else 0.0
    if per_point <= 0:
        return ""
    spent = sum(s for _stage, s in mine)  # vLLM's own share when several engines were tuned
    grid_levers = engine_info("vllm").autotune_grid
    points = 1
    for _lever, values in grid_levers:
        points *= len(values)
    n = int(spent // per_point)
    grid = " x ".join(f"{lever} {{{', '.join(map(str, v))}}}" for lever, v in grid_levers)
    cover = (
        f"its whole default {points}-point grid ({grid}) fits, with room for {n - points} more runs"
        if n >= points
        else f"{n} of the {points} points of its default grid ({grid})"
    )
    line = (
        f"vLLM auto_tune in the same {spent / 60:.1f} GPU-min: priced at this run's {priced} "
        f"({per_point:.0f} s: one server start plus one run of each of {workloads} "
        f"workload(s)), {cover}; one run per point (no repeat trials, no interval), over 2 levers."
    )

    for e in res.engines:
        if e.engine != "vllm" or e.crowned is None or not e.crowned.levers:
            continue
        argv = translate(e.crowned.levers, "vllm")
        flags = " ".join(argv)
        inside = {a.split("=")[0] for a in argv if a.startswith("--")} <= {
            f"--{lv}" for lv, _v in grid_levers
        }
        line += (
            f" The crowned change ({flags}) is {'inside' if inside else 'outside'} that grid"
            + ("" if inside else ": auto_tune could not have found it")
            + "."
        )
    return line


def tuned_top(e: Any, arm_levers: dict[str, dict[str, Any]]) -> list[TunedConfig]:
    """An engine's challengers that completed the full treatment, best first (phase 8 benches the top
    X of them): the crowned one is `tuned`, the others `top2`, `top3`, ... by rank."""
    out: list[TunedConfig] = []
    crowned = f"{e.engine}/{e.crowned.name}" if e.crowned is not None else None
    for key, score, _n in e.ranked:
        if key == e.baseline:
            continue
        name = "tuned" if key == crowned else f"top{len(out) + 1}"
        out.append(
            TunedConfig(
                name=name,
                arm=key.split("/", 1)[1],
                levers=dict(arm_levers.get(key, {})),
                score=score,
                crowned=key == crowned,
            )
        )
    return out


def failure_proposals(res: TuneResult) -> list[dict[str, Any]]:
    """Every failing arm as a known-good registry candidate, with the levers it was deployed with."""
    return [
        {
            "arm": f.arm,
            "levers": res.arm_levers.get(f.arm, {}),
            "failure": f.klass,
            "excerpt": f.excerpt[-600:],
            "log": f.log_path,
            "avoided_by": "the engine's baseline configuration (this arm's lever change triggered it)",
        }
        for f in res.failures
    ]


def tune_json(res: TuneResult) -> dict[str, Any]:
    """The tuner's full result as plain data (phase3/tune.json)."""
    return {
        "order": res.order,
        "pruned": res.pruned,
        "gpu_s": res.gpu_s,
        "gpu_s_by_stage": res.gpu_s_by_stage,
        "budget_exhausted": res.budget_exhausted,
        "notes": res.notes,
        "measures": [m.__dict__ for m in res.measures],
        "engines": [
            {
                "engine": e.engine,
                "crowned": e.crowned.model_dump() if e.crowned else None,
                # what crowned: the focus, the metric in words, and (latency) the judged concurrency
                "focus": e.focus,
                "metric": e.metric,
                "concurrency": e.concurrency,
                # the score is higher-is-better: tok/s, or (latency) tok/s per stream = 1000 / TPOT ms
                "score": e.score,
                "score_unit": "tok/s per stream (1000 / median TPOT ms)"
                if e.focus == "latency"
                else "output tok/s",
                "ci95": e.ci95,
                "baseline_score": e.baseline_score,
                # latency focus: the crowned arm's and the baseline's median TPOT in ms
                "tpot_ms": e.tpot_ms,
                "baseline_tpot_ms": e.baseline_tpot_ms,
                "verdict": e.verdict,
                "challenger": e.challenger,
                "ratio": e.ratio,
                "ratio_ci95": e.ratio_ci95,
                "top3": e.top3,
                **(
                    {"top3_tpot_ms": [(n, 1000.0 / s, k) for n, s, k in e.top3]}
                    if e.focus == "latency"
                    else {}
                ),
                "pareto": e.pareto,
                "by_workload": {w: v.__dict__ for w, v in e.by_workload.items()},
            }
            for e in res.engines
        ],
    }


def tune_cells(ctx: Ctx, res: Any) -> list[Any]:
    """One cell per (engine, arm, workload, concurrency) of the full treatment: its trials are separate
    deploys (one bench folder each, interleaved with the other arms), aggregated here; published to the
    lake with the other phases' cells, tagged by engine and arm."""

    d = ctx.run_dir / "phase3"
    groups: dict[tuple[str, str, int], list[Any]] = {}
    for m in res.full_measures:
        groups.setdefault((m.arm, m.workload, m.concurrency), []).append(m)
    cells = []
    for (arm_key, workload, c), ms in sorted(groups.items()):
        engine, _, name = arm_key.partition("/")
        safe = safe_name(name)
        ms = sorted(ms, key=lambda m: m.trial)
        # journals written before Measure.path existed: the folder name of that version
        folders = [d / (m.path or f"trials/{engine}.{safe}.t{m.trial}.{workload}.c{c}") for m in ms]
        if not all((f / "summary.json").exists() for f in folders):
            continue  # an evaluator without bench folders (the simulator in virtual time)
        summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
        ts = [t for s in summaries for t in s["trials"]]
        tok = across_trials([t["output_tok_s"] for t in ts])
        med = across_trials([t["tpot_ms"]["p50"] for t in ts])
        ok = sum(t["counts"]["ok"] for t in ts)
        in_tok = sum(t["counts"]["input_tokens"] for t in ts)
        levers = dict(res.arm_levers.get(arm_key, {}))
        sol, key = speed_of_light(
            ctx,
            med.mean,
            c,
            round(in_tok / ok + ctx.intent.suite.osl / 2) if ok else 1,
            levers,
            engine=engine,
        )
        baseline = None if name == "baseline" else f"{engine}/baseline (phase 3, interleaved)"
        claim = ctx.intent.slo.focus
        isolated, metric, why = metric_isolation(
            claim, num_requests=int(summaries[0]["context"]["workload"]["num_requests"]), concurrency=c
        )
        tier, reasons = tier_for(
            trials=len(ts),
            same_node=True,
            baseline=baseline,
            metric_isolated=isolated is not False,
            isolation=why,
        )
        if summaries[0]["context"]["stack"]["simulated"]:  # a simulated number is never a VERDICT
            tier, reasons = "DRAFT", [*reasons, "simulated server"]
        context = {
            **summaries[0]["context"],
            **serving_context(ctx, levers),
            "trials": len(ts),
            "same_node": True,
            "baseline": baseline,
            "claim": claim,
            "claim_metric": metric,
            "metric_isolated": isolated,
            "tier": tier,
            "tier_reasons": reasons,
        }
        prefix = levers.get("prefix-cache", prefix_cache_defaults().get(engine))
        cells.append(
            Cell(
                cell_id=f"p3.{engine}.{safe}.{workload}.c{c}",
                phase="3",
                engine=engine,
                config=name,
                levers=levers,
                workload=workload,
                concurrency=c,
                gpus=ctx.state.facts.tp,
                path=ctx.rel(folders[0]),
                trial_paths=[ctx.rel(f) for f in folders],
                output_tok_s=tok.mean or 0.0,
                output_tok_s_std=tok.std,
                output_tok_s_ci95=list(tok.ci95) if tok.ci95 else None,
                tpot_median_ms=med.mean,
                tpot_ci95=list(med.ci95) if med.ci95 else None,
                ttft_mean_ms=across_trials([t["ttft_ms"]["mean"] for t in ts]).mean,
                trials=len(ts),
                sol_pct=sol,
                ceiling_key=key,
                tier=tier,
                simulated=bool(summaries[0]["context"]["stack"].get("simulated")),
                prefix_cache=None if prefix is None else bool(prefix),
                context=context,
            )
        )
    return cells
