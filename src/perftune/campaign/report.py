"""Markdown of the bundle: SOURCE.md, summary.md, CHAMPION.md, TUNE.md. Pure; no number appears bare."""

from __future__ import annotations

from typing import Any

from perftune.campaign.champion import ChampionSelection
from perftune.campaign.state import CampaignState, Cell, Ranked
from perftune.tune.arms import prefix_cache_states
from perftune.tune.search import TuneResult, WorkloadVerdict


def cell_line(c: Cell) -> str:
    """A cell's headline with its context: engine, hardware, workload, load, trials, tier."""
    ctx = c.context
    stack = ctx.get("stack", {})
    sim = " SIMULATED" if c.simulated else ""
    std = f" ± {c.output_tok_s_std:,.0f}" if c.output_tok_s_std is not None else ""
    tpot = f", median TPOT {c.tpot_median_ms:.2f} ms" if c.tpot_median_ms is not None else ""
    ttft = f", mean TTFT {c.ttft_mean_ms:.0f} ms" if c.ttft_mean_ms is not None else ""
    sol = f", {c.sol_pct:.0f}% SoL ({c.ceiling_key})" if c.sol_pct is not None else ""
    if c.sol_bytes_pct is not None and c.dram_tb_s is not None:
        sol += f", DRAM {c.dram_tb_s:.2f} TB/s = {c.sol_bytes_pct:.0f}% of peak ({c.sol_rigor})"
    wl = ctx.get("workload", {})
    shape = f" {wl.get('isl')}/{wl.get('osl')}" if wl.get("isl") else ""
    par = ",".join(f"{k.upper()}={v}" for k, v in (ctx.get("parallelism") or {}).items())
    weights = str(ctx.get("quantization") or "").split(" (")[0]
    kv = str(ctx.get("kv_cache_dtype") or "").split(" (")[0]
    serving = ", ".join(x for x in (par, weights, f"KV {kv}" if kv else "") if x)
    levers = ", ".join(f"{k}={v}" for k, v in c.levers.items()) or "engine defaults"
    return (
        f"{c.output_tok_s:,.0f}{std} output tok/s{tpot}{ttft}{sol} — {c.engine} "
        f"{stack.get('engine_version') or ''} {c.config} ({levers}) on {ctx.get('hardware')}"
        + (f" [{serving}]" if serving else "")
        + f"{sim}, {c.workload}{shape}, c={c.concurrency}, {c.trials} trials, {c.tier}"
    )


def source_md(state: CampaignState, decisions: list[tuple[str, str]], advice: dict[str, Any]) -> str:
    i = state.intent
    lines = [
        f"# SOURCE: campaign {state.run_id}",
        "",
        "The intent, stated back, and every decision with its rationale.",
        "",
        "## Intent",
        f"- model: `{i.model.ref}`" + (f" (weights from `{i.model.path}`)" if i.model.path else ""),
        f"- hardware: {i.hardware.gpus} x {i.hardware.gpu}",
        f"- engines: {', '.join(i.serving.engines)}",
        f"- focus: {i.slo.focus}"
        + (
            f" (SLO: mean TTFT <= {i.slo.ttft_ms:g} ms, median TPOT <= {i.slo.tpot_ms:g} ms)"
            if i.slo.focus == "throughput"
            else f" (median TPOT at concurrency {i.slo.target_concurrency})"
        ),
        f"- phase 8 suite: {', '.join(i.suite.workloads)} at concurrency {i.resolved_ladder()}, {i.suite.trials} trials per cell",
        "",
        "## Advisors",
    ]
    for name, text in advice.items():
        lines.append(f"- **{name}**: {text}")
    lines += ["", "## Decisions"]
    for what, why in decisions:
        lines.append(f"- {what} — {why}")
    return "\n".join(lines) + "\n"


def summary_md(state: CampaignState) -> str:
    i = state.intent
    simulated = any(c.simulated for c in state.cells.values()) or "sim" in i.serving.engines
    lines = [
        f"# Campaign {state.run_id}",
        "",
        f"{i.model.ref} on {i.hardware.gpus} x {i.hardware.gpu}; engines {', '.join(i.serving.engines)}; focus {i.slo.focus}."
        + (" **Numbers from the simulated engine are SIMULATED.**" if simulated else ""),
        "",
        "| phase | name | gate | reason | headline | tier | GPU-min | artifacts |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in state.phases.values():
        arts = ", ".join(f"`{a}`" for a in p.artifacts[:4]) + (" …" if len(p.artifacts) > 4 else "")
        lines.append(
            f"| {p.id} | {p.name} | {p.status} | {p.reason} | {p.headline} | {p.tier} | {p.gpu_minutes:.1f} | {arts} |"
        )
    red = [p for p in state.phases.values() if p.status == "red" and p.hint]
    lines += [f"\nHint for phase {p.id}: {p.hint}" for p in red]
    lines += suite_table(state)
    lines += capacity_table(state)
    lines += champion_record(state)
    return "\n".join(lines) + "\n"


def capacity_table(state: CampaignState) -> list[str]:
    """Phase 8.3: each config's SLO capacity, the search's size and where its points are."""
    caps = list(state.facts.capacity.values())
    if not caps:
        return []
    sim = any(c.simulated for c in caps)
    lines = [
        "",
        "## Phase 8.3: SLO capacity",
        "",
        f"{'Open loop (Poisson)' if caps[0].mode == 'open' else 'Closed loop'}, random workload, "
        f"{state.intent.suite.trials} trials per point; SLO {caps[0].slo}"
        + (", **SIMULATED**" if sim else "")
        + ". The true capacity lies in [highest pass, lowest fail).",
        "",
        "| engine | config | levers | capacity | interval | output tok/s there | points | tier | search |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in caps:
        unit = " req/s" if c.mode == "open" else ""
        cap = "none" if c.capacity is None else (">= " if c.at_least else "") + f"{c.capacity:g}{unit}"
        lo, hi = [*c.interval, None, None][:2]
        iv = f"[{'-' if lo is None else f'{lo:g}'}, {'-' if hi is None else f'{hi:g}'})"
        lev = ", ".join(f"{k}={v}" for k, v in c.levers.items()) or "engine defaults"
        tier = c.tier + (" SIMULATED" if c.simulated and c.tier != "SIMULATED" else "")
        lines.append(
            f"| {c.engine} | {c.config} | {lev} | {cap} | {iv} | {_num(c.output_tok_s)} | {c.points} | "
            f"{tier} | `{c.path}/capacity.md` |"
        )
    return lines


def champion_record(state: CampaignState) -> list[str]:
    """The champion as SOURCE.md and summary.md record it once phase 8.4 has run: what won, on which
    metric, its lake row, what it was compared to, and the command that deploys it."""
    ch = state.facts.champion
    if ch is None:
        return []
    i = state.intent
    cell = state.cells.get(str(ch.cell_id)) if ch.cell_id else None
    sim = " SIMULATED" if cell is not None and cell.simulated else ""
    unit = "tok/s/GPU" if i.slo.focus == "throughput" else "ms median TPOT"
    levers = ", ".join(f"{k}={v}" for k, v in ch.levers.items()) or "engine defaults"
    base = state.facts.baseline_source.get(ch.engine, "the engine defaults (no standing champion used)")
    return [
        "",
        "## Champion",
        "",
        f"- **{ch.engine}/{ch.config}** ({levers}): {ch.value or 0:,.1f} {unit} at {ch.where()}{sim}, "
        f"{ch.tier}; metric: {ch.metric}",
        f"- failing production gates: {'; '.join(ch.failing_gates) or 'none'}",
        f"- lake row: `champions WHERE campaign_id = '{state.run_id}' AND recommended` (cell `{ch.cell_id}`)",
        f"- compared against: {base}",
        f"- recommendation: `{deploy_command(state, ch.engine, ch.levers)}`"
        + (" (DRAFT: a candidate to confirm, not a production claim)" if ch.tier != "VERDICT" else ""),
    ]


def deploy_command(state: CampaignState, engine: str, levers: dict[str, Any]) -> str:
    """A config as the command that deploys it with perftune (the same levers, the campaign's TP)."""
    i = state.intent
    argv = [f"perftune deploy --engine {engine} --model {i.model.path or i.model.ref}"]
    argv += [f"--tp {state.facts.tp}"] if state.facts.tp > 1 else []
    argv += [f"--lever {k}={v}" for k, v in levers.items()]
    return " ".join(argv)


def with_champion(source: str, state: CampaignState) -> str:
    """SOURCE.md with its champion section replaced by the current one (phase 8.4 may run again)."""
    head = source.split("\n## Champion\n", 1)[0].rstrip("\n")
    return head + "\n" + "\n".join(champion_record(state)) + "\n"


def _num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def suite_table(state: CampaignState) -> list[str]:
    """Every phase 8 cell, one row per workload x concurrency x config: the numbers behind the champion."""
    cells = sorted(
        (c for c in state.cells.values() if c.phase == "8"),
        key=lambda c: (SUITE_ORDER.get(c.workload, 99), c.workload, c.concurrency, c.engine, c.config),
    )
    if not cells:
        return []
    sim = any(c.simulated for c in cells)
    c0 = cells[0].context
    lines = [
        "",
        "## Phase 8: the workload suite",
        "",
        f"{state.intent.model.ref} on {c0.get('hardware')}, {cells[0].trials} trials per cell (mean ± std over "
        "trials; TPOT is the per-trial median)" + (", **SIMULATED**" if sim else "") + ".",
        "",
        "| workload | c | engine | config | output tok/s | median TPOT ms | mean TTFT ms | %SoL | tier | flags |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in cells:
        std = f" ± {c.output_tok_s_std:,.0f}" if c.output_tok_s_std is not None else ""
        sol = f"{c.sol_pct:.0f}% ({c.ceiling_key})" if c.sol_pct is not None else "-"
        lines.append(
            f"| {c.workload} | {c.concurrency} | {c.engine} | {c.config} | {_num(c.output_tok_s)}{std} "
            f"| {_num(c.tpot_median_ms, 2)} | {_num(c.ttft_mean_ms)} | {sol} | {c.tier}{' SIMULATED' if c.simulated else ''} "
            f"| {'; '.join(c.flags) or '-'} |"
        )
    return lines


SUITE_ORDER = {w: k for k, w in enumerate(("random", "prefix", "chat", "code", "long"))}


def _ranked_line(r: Ranked, metric_unit: str) -> str:
    if r.value is None:
        return f"| {r.engine} | {r.config} | {r.gpus} | - | - | - | not eligible: {r.reason} |"
    ci = f"[{r.ci95[0]:.2f}, {r.ci95[1]:.2f}]" if r.ci95 else "-"
    tie = "tied with leader" if r.tied_with_leader else ""
    return (
        f"| {r.engine} | {r.config} | {r.gpus} | {r.value:.2f} {metric_unit} | {ci} | {r.where()} | {tie} |"
    )


def champion_md(state: CampaignState, sel: ChampionSelection, cells: dict[str, Cell]) -> str:
    unit = "tok/s/GPU" if sel.focus == "throughput" else "ms"
    lines = [f"# CHAMPION — campaign {state.run_id}", ""]
    ch = sel.champion
    if ch is not None and sel.tier == "VERDICT":
        lines += ["**RECOMMENDED FOR PRODUCTION** (VERDICT: every production gate passed)", ""]
    elif ch is not None:
        lines += ["**DRAFT — not a production recommendation.** Failing gates:", ""]
        lines += [f"- {g}" for g in sel.failing_gates] + [""]
    else:
        lines += (
            ["No champion: no candidate was eligible.", ""] + [f"- {g}" for g in sel.failing_gates] + [""]
        )
    if ch is not None and ch.cell_id:
        lines += [
            f"Champion: **{ch.engine} / {ch.config}** on {ch.gpus} GPU(s), levers {ch.levers or '{} (engine defaults)'}",
            "",
            f"Metric: {sel.metric}. Value: {ch.value:.2f} {unit} at {ch.where()}.",
            "",
            f"Evidence cell: {cell_line(cells[ch.cell_id])}",
            "",
        ]
        if (method := ch.levers.get("spec-method")) is not None:
            sp = state.facts.spec.get(ch.engine, {}).get(str(method), {})
            acc = sp.get("accept_length") or {}
            said = ", ".join(f"{w} {a:.2f}" if a is not None else f"{w} not reported" for w, a in acc.items())
            lines += [
                f"Speculative decoding: {method}, K={ch.levers.get('spec-k')}; mean acceptance length "
                f"(phase 7, c={sp.get('concurrency')}): {said or 'not measured'}.",
                "",
            ]
    lines += [
        "## Ranking",
        "",
        "| engine | config | GPUs | value | 95% CI | at | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [_ranked_line(r, unit) for r in sel.ranking]
    if sel.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in sel.notes]
    return "\n".join(lines) + "\n"


def _verdict_row(w: str, v: WorkloadVerdict) -> str:
    def cell(x: float | None, c: int | None) -> str:
        return f"{x:.0f} (c={c})" if x is not None else "no c met the SLO"

    r = (
        f"{v.ratio:.3f} [{v.ratio_ci95[0]:.3f}, {v.ratio_ci95[1]:.3f}]"
        if v.ratio is not None and v.ratio_ci95 is not None
        else "n/a"
    )
    return (
        f"| {w} | {cell(v.score, v.concurrency)} | {cell(v.baseline_score, v.baseline_concurrency)} | {r} |"
    )


def tune_md(
    res: TuneResult,
    workloads: list[str],
    trials: int,
    proposals: list[dict[str, Any]],
    prefix_defaults: dict[str, bool | None],
    autotune_line: str,
) -> tuple[str, list[str]]:
    """phase3/TUNE.md and the per-engine headlines, in the metric that crowned (latency focus: median
    TPOT in ms at the judged concurrency, the ratio a TPOT speedup; throughput: tok/s). Pure."""
    lines, heads = ["# Phase 3: tuning", ""], []

    def row(w: str, v: WorkloadVerdict, lat: bool, at: int | None) -> str:
        if not lat:
            return _verdict_row(w, v)

        def cell(x: float | None) -> str:
            return f"{x:.2f}" if x is not None else f"not eligible at c={at} (SLO)"

        r = (
            f"{v.ratio:.3f} [{v.ratio_ci95[0]:.3f}, {v.ratio_ci95[1]:.3f}]"
            if v.ratio is not None and v.ratio_ci95 is not None
            else "n/a"
        )
        return f"| {w} | {cell(v.tpot_ms)} | {cell(v.baseline_tpot_ms)} | {r} |"

    for e in res.engines:
        lines += [f"## {e.engine}", ""]
        if e.crowned is None:
            lines += ["no arm completed the full treatment", ""]
            continue
        lat = e.focus == "latency"
        ratio = (
            f"{e.ratio:.3f} [{e.ratio_ci95[0]:.3f}, {e.ratio_ci95[1]:.3f}]"
            if e.ratio is not None and e.ratio_ci95 is not None
            else "n/a"
        )
        ch = e.challenger or "none"
        if lat:
            heads.append(
                f"{e.engine}: {e.crowned.name} (median TPOT {e.show(e.score)} at c={e.concurrency} vs "
                f"baseline {e.show(e.baseline_score)}; {e.verdict}; {ch} TPOT speedup x{ratio})"
            )
        else:
            heads.append(f"{e.engine}: {e.crowned.name} ({e.verdict}; {ch}/baseline x{ratio})")
        unit = f"median TPOT ms at c={e.concurrency}" if lat else "tok/s"
        ratio_name = f"TPOT speedup (baseline TPOT / {ch} TPOT)" if lat else f"{ch} / baseline"

        lines += [
            f"Crowned by: {e.metric or 'output tok/s under the SLO'}.",
            "",
            *(
                [
                    "TPOT figures below: each trial's median TPOT, combined over trials as 1000 / the "
                    "mean per-stream decode speed (their harmonic mean), the quantity the speedup and "
                    "its interval are computed on; output tok/s plays no part in the crown.",
                    "",
                ]
                if lat
                else []
            ),
            f"Crowned: **{e.crowned.name}** {e.crowned.levers}: "
            + (
                f"median TPOT {e.show(e.score)} at c={e.concurrency} (95% CI {e.show_ci(e.ci95)}; "
                f"baseline {e.show(e.baseline_score)})"
                if lat
                else f"score {e.score:.0f} "
                f"(tok/s under the SLO{', geometric mean over ' + ' x '.join(workloads) if len(workloads) > 1 else ''})"
            )
            + f"; {e.verdict}.",
            "",
            f"Best challenger {ratio_name}: {ratio} (95% CI; same node, interleaved, >= {trials} "
            "trials, cache reset before each)",
            "",
            f"| workload | {ch} {unit}{'' if lat else ' (c)'} | baseline {unit}{'' if lat else ' (c)'} "
            f"| {ratio_name} [95% CI] |",
            "| --- | --- | --- | --- |",
            *[row(w, v, lat, e.concurrency) for w, v in e.by_workload.items()],
            "",
            f"| top 3 | {'median TPOT ms' if lat else 'score'} | trials per workload and concurrency |",
            "| --- | --- | --- |",
            *[
                f"| {n} | {1000.0 / s:.2f} | {k} |" if lat else f"| {n} | {s:.0f} | {k} |"
                for n, s, k in e.top3
            ],
            "",
            (
                f"Pareto per workload at c={e.concurrency} (median TPOT vs mean TTFT, both lower is better; "
                "tok/s shown, not compared):"
                if lat
                else "Pareto per workload (tok/s vs median TPOT):"
            ),
            "",
            "| workload | arm | c | tok/s | median TPOT ms | mean TTFT ms |",
            "| --- | --- | --- | --- | --- | --- |",
            *[f"| {w} | {a} | {c} | {t:.0f} | {p:.2f} | {f:.0f} |" for w, a, c, t, p, f in e.pareto],
            "",
        ]
    crowned = [e for e in res.engines if e.crowned is not None]
    if len(crowned) >= 2:
        states = prefix_cache_states([e.crowned for e in crowned if e.crowned], prefix_defaults)
        same = len(set(states.values())) == 1
        lines += [
            "## Across engines",
            "",
            "| engine | crowned | score | prefix cache |",
            "| --- | --- | --- | --- |",
            *[
                f"| {e.engine} | {e.crowned.name} | "
                + (f"{e.show(e.score)} median TPOT" if e.focus == "latency" else f"{e.score or 0:.0f}")
                + " | "
                f"{ {True: 'on', False: 'off', None: 'unknown'}[states[e.engine]] } |"
                for e in crowned
                if e.crowned
            ],
            "",
            "Same client, same node, same workloads, cache reset before every trial; prefix caching is "
            + (
                "in the same state in every crowned config."
                if same
                else "NOT in the same state across "
                "the crowned configs: their scores are not comparable (the cache, not the engine, differs)."
            ),
            "",
        ]
    if res.notes:
        lines += ["## Budget plan", "", *[f"- {n}" for n in res.notes], ""]
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
    if autotune_line:
        lines += ["", autotune_line]
    return "\n".join(lines) + "\n", heads
