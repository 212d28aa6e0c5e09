"""Phase 3 in the campaign: arms.tsv, the tuner over live engines, failures as findings."""

from __future__ import annotations

import json
from typing import Any

from perftune.campaign.pipeline import Ctx, Gate
from perftune.util.atomic import write_text


def run_phase3(ctx: Ctx) -> Gate:
    from perftune.campaign.phases import card_of
    from perftune.hardware.ceilings import gpu
    from perftune.sim.calibration import for_gpu
    from perftune.tune.arms import generate_arms, read_tsv, write_tsv
    from perftune.tune.evaluate import LiveEvaluator, RecordingEvaluator, feasibility
    from perftune.tune.search import TuneConfig, run_tuner

    i = ctx.intent
    d = ctx.run_dir / "phase3"
    card = card_of(ctx)
    tsv = d / "arms.tsv"
    if tsv.exists():  # the user's edits win
        arms = [a for a in read_tsv(tsv) if a.engine in i.engines]
    else:
        arms = generate_arms(card, i.engines, i.levers)
        write_tsv(arms, tsv)
    g = gpu(i.gpu)
    ladder = i.resolved_ladder()
    cfg = TuneConfig(
        ladder=ladder,
        slo_ttft_ms=i.slo_ttft_ms,
        slo_tpot_ms=i.slo_tpot_ms,
        trials=max(3, i.trials),
        budget_gpu_s=i.budget_gpu_min * 60,
    )
    # Journaled: a killed phase 3 (or one split across short GPU sessions) resumes without re-deploying.
    ev = RecordingEvaluator(
        LiveEvaluator(ctx, d, wedge_s=i.wedge_s, gpus=int(ctx.state.facts.get("tp", 1))), d / "journal.jsonl"
    )
    res = run_tuner(arms, ev, cfg, feasible=feasibility(card, g, for_gpu(g), max(ladder), i.isl + i.osl))
    tuned: dict[str, Any] = ctx.state.facts.setdefault("tuned", {})
    lines, heads = ["# Phase 3: tuning", ""], []
    for e in res.engines:
        lines += [f"## {e.engine}", ""]
        if e.crowned is None:
            lines += ["no arm completed the full treatment", ""]
            continue
        tuned[e.engine] = e.crowned.levers
        ratio = (
            f"{e.ratio:.3f} [{e.ratio_ci95[0]:.3f}, {e.ratio_ci95[1]:.3f}]"
            if e.ratio is not None and e.ratio_ci95 is not None
            else "n/a"
        )
        heads.append(f"{e.engine}: {e.crowned.name}, x{ratio} vs baseline")
        lines += [
            f"Crowned: **{e.crowned.name}** {e.crowned.levers}: {e.score:.0f} tok/s under the SLO; "
            f"champion/baseline {ratio} (95% CI, same node, interleaved, >= {cfg.trials} trials)",
            "",
            "| top 3 | tok/s under SLO | trials per concurrency |",
            "| --- | --- | --- |",
            *[f"| {n} | {s:.0f} | {k} |" for n, s, k in e.top3],
            "",
            "Pareto (tok/s vs median TPOT):",
            "",
            "| arm | c | tok/s | median TPOT ms |",
            "| --- | --- | --- | --- |",
            *[f"| {a} | {c} | {t:.0f} | {p:.2f} |" for a, c, t, p in e.pareto],
            "",
        ]
    proposals = [
        {
            "arm": f.arm,
            "failure": f.klass,
            "excerpt": f.excerpt[-600:],
            "log": f.log_path,
            "avoided_by": "the engine's baseline configuration (this arm's lever change triggered it)",
        }
        for f in res.failures
    ]
    lines += (
        ["## Failures (known-good registry candidates)", ""]
        + [f"- {p['arm']}: {p['failure']}" for p in proposals]
        + ["", "## Pruned (predicted infeasible)", ""]
        + [f"- {a}: {why}" for a, why in res.pruned]
    )
    lines += [
        "",
        f"GPU-minutes: {res.gpu_s / 60:.1f} ("
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in res.gpu_s_by_stage.items())
        + ")",
    ]
    write_text(d / "TUNE.md", "\n".join(lines) + "\n")
    write_text(d / "known-good-candidates.json", json.dumps(proposals, indent=2) + "\n")
    write_text(
        d / "tune.json",
        json.dumps(
            {
                "order": res.order,
                "pruned": res.pruned,
                "gpu_s": res.gpu_s,
                "gpu_s_by_stage": res.gpu_s_by_stage,
                "budget_exhausted": res.budget_exhausted,
                "measures": [m.__dict__ for m in res.measures],
                "engines": [
                    {
                        "engine": e.engine,
                        "crowned": e.crowned.model_dump() if e.crowned else None,
                        "score": e.score,
                        "ratio": e.ratio,
                        "ratio_ci95": e.ratio_ci95,
                        "top3": e.top3,
                        "pareto": e.pareto,
                    }
                    for e in res.engines
                ],
            },
            indent=2,
        )
        + "\n",
    )
    arts = ["phase3/TUNE.md", "phase3/arms.tsv", "phase3/tune.json", "phase3/known-good-candidates.json"]
    if not tuned:
        return Gate("red", "no arm of any engine completed the full treatment", artifacts=arts)
    return Gate(
        "green",
        f"{len(res.order)} deploys, {len(res.failures)} failure(s) recorded, {len(res.pruned)} pruned"
        + ("; budget exhausted" if res.budget_exhausted else ""),
        headline="; ".join(heads),
        tier="DRAFT",
        artifacts=arts,
    )
