"""The built phases: 0 resolve + scaffold, 1 baselines, 8 suite, 8.4 champion, 8.5 ratchet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from perftune.advisors.loader import advise_loader
from perftune.advisors.tp import advise_tp
from perftune.bench.workloads import WorkloadSpec, build_workload
from perftune.campaign.base import Ctx, Gate, Phase
from perftune.campaign.cells import (
    bench_cell,
    card_of,
    failed_share,
    hardware_label,
    live_server,
    suite_configs,
    suite_weights,
)
from perftune.campaign.champion import production_gates, select_champion
from perftune.campaign.learnt import Learnt, learnt_flags
from perftune.campaign.profiling import cell_grounding, load_captures, phase2, phase25, runnable
from perftune.campaign.quantize import accuracy_evidence, llamacpp_gguf, phase4, phase5
from perftune.campaign.report import cell_line, champion_md, deploy_command, source_md, with_champion
from perftune.campaign.slo_capacity import phase83
from perftune.campaign.specdec import phase6, phase7
from perftune.campaign.state import SUITE, ChampionFact, Intent
from perftune.campaign.tuning import run_phase3
from perftune.engines.adapters import llamacpp_launcher
from perftune.errors import ConfigError, PerftuneError
from perftune.hardware.ceilings import gpu
from perftune.profile.synthesis import Evidence, synthesize
from perftune.registry import findings
from perftune.registry.store import (
    BANNER,
    is_shipped_or_repo_registry,
    load_registry,
    record_entry,
    resolve_registry,
    sim_registry_path,
    user_registry_path,
)
from perftune.report.render import write_html_report
from perftune.tune.arms import read_tsv
from perftune.util.atomic import write_text

# Levers the ratchet proposes next, in order, with a value rule and why.
NEXT_LEVERS: list[tuple[str, str, str]] = [
    ("prefill-chunk", "16384", "larger chunks cut TTFT at high concurrency when prefill dominates"),
    ("batch-cap", "512", "more sequences per step while decode is memory-bound raises tok/s"),
    ("kv-cache-dtype", "fp8", "fp8 KV doubles KV capacity: more concurrency before preemption"),
    ("cuda-graph-max-bs", "1024", "graph the largest decode batches the ladder reaches"),
    ("memory-fraction", "0.95", "a larger KV pool where the node has headroom"),
]


# ------------------------------------------------------------------ phase 0


def serial_engines_only(i: Intent) -> bool:
    """Every engine is llama-cpp-python's one-request-at-a-time server and the user chose neither the
    ladder nor the baseline concurrency."""
    return (
        set(i.serving.engines) == {"llamacpp"}
        and llamacpp_launcher() == "llama-cpp-python"
        and not i.suite.ladder
        and "baseline_concurrency" not in i.suite.model_fields_set
    )


def serial_suite(i: Intent, max_context: int, decisions: list[tuple[str, str]]) -> Intent:
    """The suite a one-request-at-a-time CPU server can run in minutes, where the user left it to
    perftune: ladder [1] (more concurrency only queues), no long-context workload (minutes of prefill
    per request), and the model's own context window instead of llama-cpp-python's 2,048 (the chat
    corpus has longer prompts). Each change is a SOURCE.md decision; the flags override it."""
    suite = {"ladder": [1], "baseline_concurrency": 1}
    decisions.append(
        (
            "concurrency ladder [1], baseline c=1",
            "llama-cpp-python's server runs one request at a time: more concurrency only queues "
            "(--ladder overrides; llama-server on PATH batches)",
        )
    )
    if i.suite.workloads == SUITE:
        suite["workloads"] = [w for w in SUITE if w != "long"]
        decisions.append(("workloads without long", "minutes of CPU prefill per request (--workloads long)"))
    levers = dict(i.serving.levers)
    if "max-model-len" not in levers.get("llamacpp", {}):
        levers["llamacpp"] = {**levers.get("llamacpp", {}), "max-model-len": min(max_context, 8192)}
        decisions.append(
            (
                f"llama.cpp context {levers['llamacpp']['max-model-len']} tokens",
                "the model's window (at most 8,192), not llama-cpp-python's default 2,048",
            )
        )
    return i.model_copy(
        update={
            "suite": i.suite.model_copy(update=suite),
            "serving": i.serving.model_copy(update={"levers": levers}),
        }
    )


def phase0(ctx: Ctx) -> Gate:

    i = ctx.intent
    d = ctx.run_dir / "phase0"
    card = card_of(ctx)
    g = gpu(i.hardware.gpu)
    missing = missing_workload_data(i.suite.workloads)
    if missing:
        write_text(
            ctx.run_dir / "SOURCE.md",
            source_md(ctx.state, [], {"workload data": "; ".join(m for m, _ in missing)}),
        )
        return Gate(
            "red",
            "workload data missing before anything ran: " + "; ".join(m for m, _ in missing),
            hint="; ".join(dict.fromkeys(h for _, h in missing))
            + "; or leave the workload out with --workloads",
            artifacts=["SOURCE.md"],
        )
    decisions: list[tuple[str, str]] = []
    if serial_engines_only(i):
        i = ctx.state.intent = serial_suite(i, card.max_context, decisions)
    ladder = i.resolved_ladder()
    tp = advise_tp(card, g, concurrency=max(ladder), context=i.suite.isl + i.suite.osl)
    loader = advise_loader(
        model_gb=card.native_weight_bytes / 1e9, hub_egress=not Path(i.model.path or i.model.ref).is_dir()
    )
    write_text(d / "model_card.json", card.model_dump_json(indent=2) + "\n")
    write_text(d / "tp_advice.json", tp.model_dump_json(indent=2) + "\n")
    write_text(d / "loader_advice.json", loader.model_dump_json(indent=2) + "\n")
    # Registry and ledger: explicit paths, created here, so every deploy is checked against one file.
    # One resolution order everywhere (--registry, $PERFTUNE_KNOWN_GOOD_REGISTRY, configs/ walking up,
    # the per-user file); the entries shipped with perftune are consulted on top of it by every check.
    reg = resolve_registry(i.registry)
    if not reg.exists():
        write_text(reg, BANNER)
    fpath = Path(i.findings) if i.findings else findings.default_path()
    ctx.state.facts.registry_explicit = i.registry is not None
    ctx.state.intent = i.model_copy(update={"registry": str(reg), "findings": str(fpath)})
    decisions.append(
        (
            f"known-good registry: `{reg}` (+ the entries shipped with perftune)",
            "checked, fail-closed, before every deploy",
        )
    )
    decisions.append((f"value-findings ledger: `{fpath}`", "the ratchet records the next lever here"))
    if fpath.exists():
        prior = findings.load(fpath).get(i.model.ref)
        if prior is not None:
            ctx.state.facts.prior_baseline = prior.baseline
            decisions += champion_as_baseline(ctx, prior.baseline)
    if tp.recommended_tp is None:
        write_text(
            ctx.run_dir / "SOURCE.md", source_md(ctx.state, decisions, {"tp": "; ".join(tp.rationale)})
        )
        return Gate(
            "red",
            f"{card.name} does not fit on {i.hardware.gpus} x {g.key} at any TP",
            artifacts=["SOURCE.md"],
        )
    use_tp = min(tp.recommended_tp, i.hardware.gpus)
    if use_tp < tp.recommended_tp:
        why = f"needs TP={tp.recommended_tp} but the node has {i.hardware.gpus} GPU(s)"
        write_text(
            ctx.run_dir / "SOURCE.md", source_md(ctx.state, [*decisions, (why, "; ".join(tp.rationale))], {})
        )
        return Gate(
            "red",
            why,
            hint="run on a node with enough GPUs (--gpus), or a smaller model",
            artifacts=["SOURCE.md"],
        )
    ctx.state.facts.tp = use_tp
    decisions += [
        (f"TP={use_tp}", "; ".join(tp.rationale[:2])),
        (f"loader: {loader.recommended}", "; ".join(loader.rationale[:1]) if loader.rationale else ""),
        (f"concurrency ladder {ladder}", f"the {i.slo.focus} tier's ladder"),
        (
            f"long workload at {min(i.suite.long_isl, card.max_context - i.suite.osl - 16)} input "
            "tokens, c <= 8",
            "bounded so the suite fits its budget; long context is KV-bound, not batch-bound",
        ),
        (
            "prompts salted per trial and the prefix cache reset between trials",
            "cold regime, comparable cells",
        ),
    ]
    advice = {
        "model": f"{card.family} {card.attention}, {card.total_params / 1e9:.2f} B params, "
        f"{card.kv_bytes_per_token['bf16'] / 1024:.0f} KiB KV/token (bf16)",
        "TP right-size": f"recommended TP={tp.recommended_tp} ({tp.confidence}); "
        + "; ".join(tp.rationale[:2]),
        "loader": f"{loader.recommended}",
    }
    gguf = llamacpp_gguf(ctx)  # llama.cpp serves GGUF: an HF folder is converted once, here
    if gguf:
        decisions.append(
            (f"llama.cpp serves `{gguf}`", "converted from the HF folder by llama.cpp's converter")
        )
    write_text(ctx.run_dir / "SOURCE.md", source_md(ctx.state, decisions, advice))
    return Gate(
        "green",
        f"{i.model.ref} fits at TP={use_tp} on {g.key}"
        + ("; converted to an F16 GGUF for llama.cpp" if gguf else ""),
        headline=f"TP={use_tp}, {card.total_params / 1e9:.1f} B params",
        artifacts=[
            "SOURCE.md",
            "phase0/model_card.json",
            "phase0/tp_advice.json",
            "phase0/loader_advice.json",
            *([str(Path(gguf).relative_to(ctx.run_dir.resolve()))] if gguf else []),
        ],
    )


def champion_as_baseline(ctx: Ctx, champ: dict[str, Any]) -> list[tuple[str, str]]:
    """The ratchet's other half: the model's standing champion (value-findings ledger) becomes its
    engine's baseline, so phase 1 deploys it and every ratio of phases 3 and 8 is against it. Levers
    given for that engine on the command line win (a deliberate baseline), and so does
    --fresh-baseline; either way SOURCE.md says which baseline ran. Returns SOURCE.md decisions."""
    i = ctx.state.intent
    engine = str(champ.get("engine") or "")
    name = (
        f"{engine} {champ.get('config')} of campaign {champ.get('campaign')}: {champ.get('value')} "
        f"({champ.get('tier')}{', SIMULATED' if champ.get('simulated') else ''})"
    )
    lake = champ.get("lake_row") or f"champions WHERE campaign_id = '{champ.get('campaign')}' AND recommended"
    if engine in ctx.state.facts.baseline_source:  # phase 0 again (--start-phase 0): already applied
        return [
            (f"{engine} baseline: {ctx.state.facts.baseline_source[engine]}", "applied by an earlier phase 0")
        ]
    if engine not in i.serving.engines:
        return [
            (
                f"standing champion: {name}",
                f"{engine} is not in this campaign: engine defaults are the baseline",
            )
        ]
    if not i.serving.baseline_from_champion:
        return [(f"standing champion: {name}", "--fresh-baseline: the engine defaults are the baseline")]
    if i.serving.levers.get(engine):
        return [(f"standing champion: {name}", f"levers given for {engine}: they are the baseline, not it")]
    levers = dict(champ.get("levers") or {})
    levers_by_engine = {**i.serving.levers, engine: levers}
    ctx.state.intent = i.model_copy(
        update={"serving": i.serving.model_copy(update={"levers": levers_by_engine})}
    )
    ctx.state.facts.baseline_source[engine] = f"standing champion: {name}; lake row: {lake}"
    shown = ", ".join(f"{k}={v}" for k, v in levers.items()) or "engine defaults"
    return [
        (
            f"{engine} baseline = the standing champion ({shown}): {name}; lake row: {lake}",
            "the last champion is the next baseline (ratchet): phase 1 deploys it, every ratio is against it",
        )
    ]


def missing_workload_data(workloads: list[str]) -> list[tuple[str, str]]:
    """(message, fix) for each workload whose offline corpus is not installed: checked in phase 0 so
    a campaign never benches for minutes and then stops at the first chat cell of phase 8."""

    out = []
    for w in workloads:
        if w not in ("chat", "code"):
            continue  # synthetic workloads need no data
        try:
            build_workload(WorkloadSpec(kind=w, osl=8, num_requests=1))
        except ConfigError as e:
            out.append((f"{w}: {e.message}", e.hint))
    return out


# ------------------------------------------------------------------ cells


# ------------------------------------------------------------------ phase 1


def phase1(ctx: Ctx) -> Gate:
    i = ctx.intent
    d = ctx.run_dir / "phase1"
    heads, arts = [], []
    for engine in i.serving.engines:
        cell_id = f"p1.{engine}.baseline.random.c{i.suite.baseline_concurrency}"
        cell = ctx.state.cells.get(cell_id)
        if cell is None:
            ctx.observe(f"phase 1: deploy {engine}, smoke gate, baseline bench")
            with live_server(ctx, engine, d) as rec:
                write_text(d / f"{engine}.deploy.json", rec.model_dump_json(indent=2) + "\n")
                ctx.state.facts.engine_versions[engine] = rec.engine_version
                cell = bench_cell(
                    ctx,
                    rec,
                    phase="1",
                    engine=engine,
                    config="baseline",
                    workload="random",
                    concurrency=i.suite.baseline_concurrency,
                    cell_dir=d / "cells" / cell_id,
                )
            ctx.state.cells[cell_id] = cell
            ctx.save()
        if failed_share(ctx, cell) > 0.05:
            return Gate(
                "red", f"{engine}: baseline bench lost more than 5% of its requests", artifacts=[cell.path]
            )
        heads.append(f"{engine}: {cell_line(cell)}")
        arts += [f"phase1/{engine}.deploy.json", cell.path]
    return Gate(
        "green",
        f"{len(i.serving.engines)} engine(s) deployed, smoke-tested and benched (DRAFT perf baseline)",
        headline="<br>".join(heads),
        tier="DRAFT",
        artifacts=arts,
    )


# ------------------------------------------------------------------ phase 8


def phase8(ctx: Ctx) -> Gate:
    i = ctx.intent
    d = ctx.run_dir / "phase8"
    ladder = i.resolved_ladder()
    ran, bad = [], []
    for engine in i.serving.engines:
        for (name, levers), weights in (
            (cfg, w) for w in suite_weights(ctx, engine) for cfg in suite_configs(ctx, engine)
        ):
            if weights != "base":
                name = f"{name}+{weights}"
            plan = [
                (w, c)
                for w in i.suite.workloads
                for c in (ladder if w != "long" else [x for x in ladder if x <= 8] or [min(ladder)])
            ]
            todo = [(w, c) for w, c in plan if f"p8.{engine}.{name}.{w}.c{c}" not in ctx.state.cells]
            if todo:
                with live_server(ctx, engine, d, levers, weights=weights) as rec:
                    for w, c in todo:
                        cell_id = f"p8.{engine}.{name}.{w}.c{c}"
                        ctx.observe(f"phase 8: {cell_id}")
                        cell = bench_cell(
                            ctx,
                            rec,
                            phase="8",
                            engine=engine,
                            config=name,
                            workload=w,
                            concurrency=c,
                            cell_dir=d / "cells" / cell_id,
                            levers=levers,
                            weights=weights,
                        )
                        ctx.state.cells[cell_id] = cell
                        ctx.save()
            for w, c in plan:
                cell = ctx.state.cells[f"p8.{engine}.{name}.{w}.c{c}"]
                ran.append(cell)
                if failed_share(ctx, cell) > 0.05:
                    bad.append(cell.cell_id)
    write_text(
        d / "suite.json",
        json.dumps(
            {"workloads": i.suite.workloads, "ladder": ladder, "cells": [c.cell_id for c in ran]}, indent=2
        )
        + "\n",
    )
    if bad:
        return Gate(
            "red", f"cells lost more than 5% of requests: {', '.join(bad)}", artifacts=["phase8/suite.json"]
        )
    best = max((c for c in ran if c.workload == "random"), key=lambda c: c.output_tok_s, default=None)
    names = list(dict.fromkeys(c.config for c in ran))
    return Gate(
        "green",
        f"{len(ran)} cells: {', '.join(i.suite.workloads)} x c={ladder} x "
        f"{len(i.serving.engines)} engine(s), "
        f"config(s): {', '.join(names)}"
        + ("" if len(names) > 1 else " (no tuned config ran: phase 3 did not run or measured none)"),
        headline=f"best random cell: {cell_line(best)}" if best else "",
        tier="DRAFT",
        artifacts=["phase8/suite.json", "phase8/cells/"],
    )


# ------------------------------------------------------------------ phase 8.4


def phase84(ctx: Ctx) -> Gate:

    cells = [c for c in ctx.state.cells.values() if c.phase == "8"]
    if not cells:
        return Gate("red", "no phase 8 cells to select from", artifacts=[])
    status = {pid: str(p.status) for pid, p in ctx.state.phases.items()}
    gates = production_gates(cells, status, accuracy_evidence(ctx.run_dir))
    sel = select_champion(cells, ctx.intent, gates, ctx.state.facts.capacity)
    d = ctx.run_dir / "phase8.4"
    write_text(d / "champion_select.json", sel.model_dump_json(indent=2) + "\n")
    write_text(ctx.run_dir / "CHAMPION.md", champion_md(ctx.state, sel, ctx.state.cells))
    arts = ["CHAMPION.md", "phase8.4/champion_select.json"]
    if sel.champion is None:
        return Gate(
            "red", "no eligible candidate: " + "; ".join(r.reason for r in sel.ranking), artifacts=arts
        )
    ch = sel.champion
    unit = "tok/s/GPU" if sel.focus == "throughput" else "ms median TPOT"
    if "SLO capacity" in sel.metric:
        unit += " at SLO capacity"
    ctx.state.facts.champion = ChampionFact(
        **ch.model_dump(), tier=sel.tier, metric=sel.metric, failing_gates=sel.failing_gates
    )
    src = ctx.run_dir / "SOURCE.md"
    if src.exists():  # the intent and decisions, now with what they led to
        write_text(src, with_champion(src.read_text(), ctx.state))
        arts.append("SOURCE.md")
    try:  # the campaign as one offline HTML page; `perftune report` refreshes it after later phases
        write_html_report(ctx.run_dir, campaign=ctx.state.model_dump(mode="json"))
        arts.append("report.html")
    except PerftuneError as e:
        ctx.observe(f"phase 8.4: report.html not rendered: {e.message} ({e.hint})")
    sim = " SIMULATED" if ch.cell_id and ctx.state.cells[ch.cell_id].simulated else ""
    return Gate(
        "green",
        f"champion {ch.engine}/{ch.config} ({sel.tier}; {len(sel.failing_gates)} failing production gate(s))",
        headline=f"{ch.value:.1f} {unit} at {ch.where()}, {ch.engine} {ch.config}{sim}",
        tier=sel.tier,
        artifacts=arts,
    )


# ------------------------------------------------------------------ phase 8.5


def next_levers(tried: set[str]) -> list[findings.OpenLever]:
    """The catalog levers the champion has not tried, in priority order. With every one tried the next
    step is evidence, not another guess: profiling (phase 2) is named instead of an IndexError."""
    out = [
        findings.OpenLever(lever=name, value=value, priority=k + 1, rationale=why)
        for k, (name, value, why) in enumerate(x for x in NEXT_LEVERS if x[0] not in tried)
    ]
    return out or [
        findings.OpenLever(
            lever="profile",
            value="phase 2",
            priority=1,
            rationale="every catalog lever is already in the champion: the next lever needs evidence "
            "(a profile of where the step time goes), not another catalog guess",
        )
    ]


def evidence_levers(ctx: Ctx, engine: str, have: dict[str, Any]) -> list[findings.OpenLever]:
    """Phase 2.5's synthesis re-run for the champion: its engine's captures and its cells; config rows
    for levers the champion does not set, each citing its artifact."""
    caps = [c for c in load_captures(ctx) if c.engine == engine]
    if not caps:
        return []
    rows = synthesize([Evidence(engine, caps, cell_grounding(ctx, engine))])
    out: list[findings.OpenLever] = []
    for r in rows:
        if (
            r.kind != "config"
            or r.value is None
            or r.lever in have
            or not runnable(engine, r.lever, r.value, have)
        ):
            continue
        c = r.citations[0]
        out.append(
            findings.OpenLever(
                lever=r.lever,
                value=r.value,
                priority=len(out) + 1,
                rationale=f"{r.why} (evidence: {c.artifact}: {c.figure} = {c.value}; "
                f"{r.sol_rigor}, {r.tier})",
            )
        )
    return out


def record_registry(checked: Path, *, explicit: bool, simulated: bool) -> Path:
    """Where the ratchet records the champion's known-good entry. A simulated champion never goes
    into a real registry: beside an explicit --registry it gets its own `sim-` file, otherwise the
    per-user simulated registry; a repository's or the shipped registry is never written."""

    if not simulated:
        return user_registry_path() if is_shipped_or_repo_registry(checked) and not explicit else checked
    if explicit and checked.name and not checked.name.startswith("sim-"):
        return checked.with_name("sim-" + checked.name)
    return checked if explicit else sim_registry_path()


def learnt_from_phase3(ctx: Ctx, engine: str, champion_levers: dict[str, Any]) -> Learnt:
    """Phase 3's failures (known-good-candidates.json) against its arms (arms.tsv): the required
    flags the champion's levers are known to avoid. Without a phase 3 nothing was learnt."""
    d = ctx.run_dir / "phase3"
    cands, tsv = d / "known-good-candidates.json", d / "arms.tsv"
    if not cands.exists() or not tsv.exists():
        return Learnt(required_flags=[], notes=[])
    arms = read_tsv(tsv)
    mine = [a for a in arms if a.engine == engine]
    failures = json.loads(cands.read_text())
    return learnt_flags(
        failures,
        {a.key: a.levers for a in arms} | {f["arm"]: f["levers"] for f in failures if "levers" in f},
        mine[0].levers if mine else {},
        champion_levers,
        engine=engine,
        engine_version=ctx.state.facts.engine_versions.get(engine),
        evidence=ctx.rel(cands),
    )


def arch_note(levers: dict[str, Any], learnt: Learnt) -> str:
    base = (
        "no workaround flags needed: deploy, smoke and the suite passed on engine defaults"
        if not levers and not learnt.required_flags
        else f"the champion's levers: {', '.join(f'{k}={v}' for k, v in levers.items()) or 'none'}"
    )
    return "; ".join([base, *learnt.notes])


def phase85(ctx: Ctx) -> Gate:

    i = ctx.intent
    ch = ctx.state.facts.champion
    if not ch:
        return Gate("red", "no champion to ratchet from (phase 8.4 did not crown one)")
    fpath = Path(i.findings or findings.default_path())
    cell0 = ctx.state.cells[str(ch.cell_id)]
    reg = record_registry(
        Path(i.registry or ""),
        explicit=ctx.state.facts.registry_explicit,
        simulated=cell0.simulated,
    )
    cell = ctx.state.cells[str(ch.cell_id)]
    # The next lever from evidence where phase 2 profiled: the synthesis re-run with the champion's
    # engine and its suite cells (their byte-grounded %SoL), the top config lever it does not have yet;
    # the catalog's order only where there is no evidence.
    evidence = evidence_levers(ctx, ch.engine, ch.levers)
    open_levers = evidence + [
        x for x in next_levers(set(ch.levers)) if x.lever not in {e.lever for e in evidence}
    ]
    open_levers = [x.model_copy(update={"priority": k + 1}) for k, x in enumerate(open_levers)]
    nxt = open_levers[0]
    rationale = nxt.rationale
    if cell.sol_pct is not None:
        rationale += f" (champion at {cell.sol_pct:.0f}% of the decode roofline at c={cell.concurrency})"
    value = f"{ch.value or 0.0:.1f} {'tok/s/GPU' if i.slo.focus == 'throughput' else 'ms'}"
    if "SLO capacity" in ch.metric:
        value += f" at SLO capacity ({ctx.state.facts.capacity[f'{ch.engine}/{ch.config}'].slo})"
    lake_row = f"champions WHERE campaign_id = '{ctx.state.run_id}' AND recommended"
    findings.record(
        fpath,
        i.model.ref,
        findings.ModelFindings(
            baseline={
                "campaign": ctx.state.run_id,
                "engine": ch.engine,
                "config": ch.config,
                "levers": ch.levers,
                "value": value,
                "tier": ch.tier,
                "simulated": cell.simulated,
                "lake_row": lake_row,
                "recommendation": deploy_command(ctx.state, ch.engine, ch.levers),
            },
            next_lever=nxt.lever,
            next_value=nxt.value,
            rationale=rationale,
            open_levers=open_levers,
        ),
    )
    notes = [f"next lever {nxt.lever}={nxt.value} recorded in {fpath}"]
    registered = i.model.ref in load_registry(reg).models if reg.exists() else False
    sim_tag = "SIMULATED, " if cell.simulated else ""
    learnt = learnt_from_phase3(ctx, ch.engine, ch.levers)
    notes += [f"learnt: {n}" for n in learnt.notes]
    if not registered:
        record_entry(
            i.model.ref,
            registry=reg,
            slug=Path(i.model.ref.rstrip("/")).name,
            engine=ch.engine,
            required_flags=learnt.required_flags,
            grind_frontier=f"{fpath}#{i.model.ref}",
            engine_versions=str(ctx.state.facts.engine_versions.get(ch.engine) or ""),
            hardware=hardware_label(ctx, ch.engine, ch.levers),
            arch_note=arch_note(ch.levers, learnt),
            champion={
                "config_ref": str(ctx.run_dir / "CHAMPION.md"),
                "verdict": ch.tier,
                "value": f"{value} ({sim_tag}{cell.workload} {ch.where()})",
                "campaign": ctx.state.run_id,
            },
        )
        notes.append(
            f"known-good entry recorded in {reg} with {len(learnt.required_flags)} required flag(s) learnt"
        )
    else:
        notes.append(f"known-good entry already in {reg} (append-only: kept)")
        if learnt.required_flags:
            notes.append(
                f"{len(learnt.required_flags)} learnt required flag(s) not written (the entry is kept): "
                + "; ".join(learnt.required_flags)
            )
    # Closing a champion needs both; check them from the files, not from what we just did.
    missing = []
    if not reg.exists() or i.model.ref not in load_registry(reg).models:
        missing.append(f"known-good entry for {i.model.ref} in {reg}")
    if i.model.ref not in findings.load(fpath):
        missing.append(f"next lever for {i.model.ref} in {fpath}")
    write_text(
        ctx.run_dir / "phase8.5" / "ratchet.md", "# Ratchet\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    )
    if missing:
        return Gate(
            "red",
            "cannot close the champion: missing " + "; ".join(missing),
            artifacts=["phase8.5/ratchet.md"],
        )
    return Gate(
        "green",
        "champion closed: known-good entry and next lever recorded; the champion is the next baseline",
        headline=f"next lever: {nxt.lever}={nxt.value}",
        tier=ch.tier,
        artifacts=["phase8.5/ratchet.md", str(fpath), str(reg)],
    )


# ------------------------------------------------------------------ phase 3


def phase3(ctx: Ctx) -> Gate:
    return run_phase3(ctx)


# The phases of a production bring-up, in order, registered by reference. Adding a phase is one
# function (or module) and one row here; the pipeline only runs the table.
PHASES: list[Phase] = [
    Phase(
        "0", "resolve + scaffold", phase0, "model fits; workload data present; registry and ledger resolved"
    ),
    Phase("1", "deploy baseline per engine", phase1, "deploy + smoke + baseline bench lose <= 5%", ("0",)),
    Phase(
        "2",
        "profile",
        phase2,
        "every layer that can run here captured (none failed); the layers it has are named",
        ("0",),
    ),
    Phase("2.5", "synthesize", phase25, "a ledger whose every row cites its artifact", ("2",)),
    Phase("3", "tune", phase3, "a challenger's ratio interval above 1, or the baseline kept", ("0", "1")),
    Phase(
        "4",
        "quantize",
        phase4,
        "every target's job completed; its checkpoint declares the scheme; every in-scope layer quantized",
        ("0",),
    ),
    Phase(
        "5",
        "validate quantization",
        phase5,
        "reference passes known-answer sanity; each variant judged (accuracy paired, perf A/B)",
        ("0", "4"),
    ),
    Phase(
        "6",
        "train a draft",
        phase6,
        "the head's training loss falls and its validation acc_0 is not degenerate",
        ("0",),
    ),
    Phase(
        "7",
        "speculative decoding A/B",
        phase7,
        "each asked method measured in the engine against the standing config; the gate's verdict said",
        ("0",),
    ),
    Phase("8", "bench the workload suite", phase8, "every cell loses <= 5% of requests", ("0", "1")),
    Phase(
        "8.3",
        "SLO capacity",
        phase83,
        "every phase-8 config's highest load inside the capacity SLO searched (throughput focus)",
        ("0", "8"),
    ),
    Phase("8.4", "select the champion", phase84, "an eligible candidate", ("8", "8.3")),
    Phase("8.5", "ratchet", phase85, "known-good entry and next lever on file", ("8.4",)),
]
PHASE_IDS = [p.id for p in PHASES]
