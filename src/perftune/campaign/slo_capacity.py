"""Phase 8.3: the SLO capacity of every config phase 8 benched.

For each engine's baseline and top-X tuned configs, one deploy and a bounded search (bench/capacity.py:
bracket on the ladder, then bisection, every point with the suite's trials) for the highest load whose
p-percentile TTFT and TPOT meet the capacity SLO (an MLPerf preset for the model's size class by
default). Open loop by default, as MLPerf's Server scenario: Poisson arrivals at a rate, bracketed from
the config's own phase-8 throughput (1/2, 1, 2, 4 and 8 times its best random cell's request rate).
A closed loop (`capacity_mode: closed`) starts every trial with all its slots at once, so with a few
requests per slot its p99 TTFT is that burst (on the GPU host it hid an FP8-KV win the open loop
shows). Phase 8.4 then compares throughput configs at that point, equal SLO for all,
instead of at whichever ladder concurrency happened to be best. Each search is its own folder under
phase8.3/, with every point's bench folder; a finished search is a fact, an interrupted one is
started again (its server is gone, so its points' endpoint no longer answers).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from perftune.bench.capacity import (
    CapacityConfig,
    CapacityEvent,
    CapacityResult,
    Mode,
    fmt_load,
    run_capacity,
)
from perftune.bench.runner import BenchResult
from perftune.bench.slo import Slo, resolve_slo
from perftune.campaign.base import Ctx, Gate
from perftune.campaign.cells import (
    baseline_name,
    card_of,
    hardware_label,
    live_server,
    suite_configs,
    workload_spec,
)
from perftune.campaign.state import CapacityFact


def capacity_ladder(ladder: list[int], cap: int = 1024) -> list[float]:
    """The bracketing ladder: the suite's concurrencies, then doublings of its top up to 8x (<= cap)."""
    top = max(ladder)
    more = [top * 2**k for k in range(1, 4) if top * 2**k <= cap]
    return [float(c) for c in sorted({*ladder, *more})]


def open_ladder(ctx: Ctx, engine: str, config: str) -> list[float]:
    """Request rates to bracket with, from the config's own throughput: its best phase-8 random cell's
    req/s (output tok/s / the fixed output length) times 1/2, 1, 2, 4, 8 (the suite's top concurrency
    may be below saturation, so the rate it reached is a start, not a bound). Empty without such a
    cell."""
    cells = [
        c
        for c in ctx.state.cells.values()
        if c.phase == "8" and c.engine == engine and c.config == config and c.workload == "random"
    ]
    if not cells:
        return []
    r = max(c.output_tok_s for c in cells) / ctx.intent.suite.osl
    return sorted({float(f"{f * r:.3g}") for f in (0.5, 1.0, 2.0, 4.0, 8.0) if f * r > 0})


def campaign_slo(ctx: Ctx) -> Slo:
    card = card_of(ctx)
    return resolve_slo(ctx.intent.slo.capacity_slo, total_params=card.total_params, moe=card.moe is not None)


def fact_of(
    engine: str, config: str, levers: dict[str, object], res: CapacityResult, out: Path, path: str
) -> CapacityFact:
    """The search as phase 8.4 reads it; the output tok/s interval comes from the capacity point's own
    bench summary (its trials), not from a re-derivation."""
    at = next((p for p in res.points if p.load == res.capacity), None)
    ci = None
    if at is not None and at.folder and (out / at.folder / "summary.json").is_file():
        bench = BenchResult.model_validate_json((out / at.folder / "summary.json").read_bytes())
        tok = bench.metric("output_tok_s").ci95
        ci = list(tok) if tok else None
    return CapacityFact(
        engine=engine,
        config=config,
        levers=dict(levers),
        slo=res.slo.statement(),
        mode=res.mode,
        capacity=res.capacity,
        at_least=res.at_least,
        interval=list(res.interval),
        output_tok_s=res.output_tok_s,
        output_tok_s_ci95=ci,
        points=res.n_points,
        statement=res.statement,
        path=path,
        tier=str(res.tier),
        simulated=any(p.simulated for p in res.points),
    )


def phase83(ctx: Ctx) -> Gate:
    i = ctx.intent
    if i.slo.focus != "throughput":
        return Gate(
            "skipped",
            "latency focus: the champion is judged on median TPOT at the target concurrency, not on capacity",
        )
    if not i.slo.capacity:
        return Gate("skipped", "--no-capacity: throughput configs are compared on the suite's ladder")
    slo = campaign_slo(ctx)
    d = ctx.run_dir / "phase8.3"
    lines, arts = [], []
    for engine in i.serving.engines:
        for name, levers in suite_configs(ctx, engine):
            key = f"{engine}/{name}"
            out = d / f"{engine}.{name}"
            fact = ctx.state.facts.capacity.get(key)
            if fact is not None and (fact.levers != levers or fact.slo != slo.statement()):
                fact = None  # another config under this name (a later tune), or another SLO: search again
            mode = i.slo.capacity_mode
            ladder = (
                capacity_ladder(i.resolved_ladder()) if mode == "closed" else open_ladder(ctx, engine, name)
            )
            if fact is None and not ladder:
                lines.append(f"{key}: no phase-8 random cell to bracket its request rate from: not searched")
                continue
            if fact is None:
                shutil.rmtree(out, ignore_errors=True)  # an interrupted search: its server is gone

                def progress(ev: CapacityEvent, key: str = key, mode: Mode = mode) -> None:
                    if ev.kind == "start":
                        ctx.observe(
                            f"phase 8.3: {key} point {ev.index + 1} at {fmt_load(mode, ev.load)} "
                            f"({ev.requests} requests x {i.suite.trials} trials)"
                        )
                    elif ev.point is not None:
                        ctx.observe(
                            f"phase 8.3: {key} {fmt_load(mode, ev.load)}: "
                            + ("meets the SLO" if ev.point.passed else "; ".join(ev.point.reasons))
                        )

                with live_server(ctx, engine, d, levers) as rec:
                    cfg = CapacityConfig(
                        endpoint=rec.endpoint,
                        model=rec.served_name,
                        workload=workload_spec(ctx, "random", 1),
                        slo=slo,
                        mode=mode,
                        ladder=ladder,
                        duration_s=i.slo.capacity_duration_s,
                        max_points=i.slo.capacity_max_points,
                        trials=i.suite.trials,
                        requests_per_slot=i.suite.requests_per_slot,
                        hardware=hardware_label(ctx, engine, levers),
                        server_log=rec.log_path,
                        baseline=None if name == "baseline" else baseline_name(ctx, engine),
                        text_vocab=rec.plan.text_prompts_only,
                    )
                    res = run_capacity(cfg, out, observer=progress)
                fact = fact_of(engine, name, levers, res, out, ctx.rel(out))
                ctx.state.facts.capacity[key] = fact
                ctx.save()
            sim = " (SIMULATED)" if fact.simulated and "SIMULATED" not in fact.statement else ""
            lines.append(f"{key}: {fact.statement}{sim}")
            arts.append(f"{fact.path}/capacity.json")
    return Gate(
        "green",
        f"SLO capacity of {len(lines)} config(s) at {slo.statement()} ({slo.name}), "
        f"{'open loop (Poisson)' if i.slo.capacity_mode == 'open' else 'closed loop'}, "
        f"{i.suite.trials} trials per point",
        headline="<br>".join(lines),
        tier="DRAFT",
        artifacts=arts,
    )
