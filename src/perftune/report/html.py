"""The report as one self-contained HTML document: inline CSS and inline SVG, no script, no network.

Each section is built from data the shell already loaded (`report.render`); a section without data
says what is missing instead of drawing an empty plot. Every table and plot has a caption with the
context of its numbers (model, hardware, engine and version, parallelism, quantization, KV dtype,
workload, concurrency, trials, tier, SIMULATED where so).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from perftune.bench.capacity import CapacityResult
from perftune.bench.records import RequestRecord
from perftune.errors import ConfigError
from perftune.hardware.ceilings import Gpu
from perftune.report import pages as pg
from perftune.report import plots
from perftune.report.bundle import Bundle, CellView
from perftune.serving.levers import translate


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    title: str
    body: str
    plots: int = Field(0, description="plots drawn (each with data)")
    missing: list[str] = Field(default_factory=list, description="what this section lacked, in words")


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def figure(svg: str, n: int, cap: str) -> str:
    return f'<figure class="plot" data-points="{n}">{svg}<figcaption>{esc(cap)}</figcaption></figure>'


def captioned(inner: str, cap: str) -> str:
    return f'<div class="tbl">{inner}<p class="caption">{esc(cap)}</p></div>'


def missing_note(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def _plain(text: str) -> str:
    """A line written for markdown (summary.md) as plain text: its <br> joins become '; '."""
    return text.replace("<br>", "; ")


def _tier_badge(tier: str, simulated: bool) -> str:
    sim = ' <span class="badge sim">SIMULATED</span>' if simulated and tier != "SIMULATED" else ""
    return f'<span class="badge {esc(tier.lower() or "none")}">{esc(tier or "no tier")}</span>{sim}'


# ---------------------------------------------------------------- the campaign


def campaign_section(b: Bundle) -> Section:
    camp = b.campaign
    i = camp.intent
    ladder = i.ladder or ("[8, 32, 64]" if i.focus == "throughput" else "[1, 4, 16]")
    intent_rows = [
        ("model", f"{i.model}" + (f" (folder {i.model_path})" if i.model_path else "")),
        ("hardware", f"{i.gpus} x {i.gpu}; campaign TP={camp.facts.tp}"),
        ("engines", ", ".join(f"{e} {camp.facts.engine_versions.get(e) or ''}".strip() for e in i.engines)),
        ("focus", i.focus + (f" (judged at c={i.target_concurrency})" if i.focus == "latency" else "")),
        (
            "SLO",
            f"cell: mean TTFT <= {i.slo_ttft_ms:g} ms, median TPOT <= {i.slo_tpot_ms:g} ms; capacity "
            + (f"search: {i.capacity_slo}" if i.capacity else "search off"),
        ),
        (
            "suite",
            f"workloads {', '.join(i.workloads) or '(default)'}; concurrency {ladder}; ISL {i.isl} / OSL "
            f"{i.osl} (long: ISL {i.long_isl}); {i.trials} trials per cell",
        ),
        (
            "tuning",
            "on" + (f", budget {i.budget_gpu_min:g} GPU-min" if i.budget_gpu_min else "")
            if i.tune
            else "off",
        ),
        ("created", camp.created_at or "unknown"),
    ]
    phase_rows = [
        (
            p.id,
            p.name,
            p.status,
            _plain(p.reason) or "-",
            _plain(p.headline) or "-",
            p.tier or "-",
            f"{p.gpu_minutes:.1f}",
        )
        for p in camp.phases.values()
    ]
    sim = any(c.simulated for c in camp.cells.values())
    rows = [pg.cell_row(c) for c in camp.cells.values()]
    body = (
        "<h3>Intent, stated back</h3>"
        + table(("", "asked"), intent_rows, "kv")
        + "<h3>Phases</h3>"
        + captioned(
            table(("id", "name", "gate", "reason", "headline", "tier", "GPU-min"), phase_rows, "phases"),
            pg.caption(rows, camp, "every cell of the campaign"),
        )
    )
    if sim:
        body = (
            '<p class="simnote">SIMULATED: numbers come from perftune\'s simulator, not a real engine.</p>'
            + body
        )
    missing = list(b.missing)
    if missing:
        body += (
            "<h3>Files the report looked for and did not find</h3><ul>"
            + "".join(f"<li>{esc(m)}</li>" for m in missing)
            + "</ul>"
        )
    return Section(id="campaign", title=f"Campaign {camp.run_id}", body=body, missing=missing)


# ---------------------------------------------------------------- Pareto


def pareto_section(b: Bundle) -> Section:
    camp = b.campaign
    by_wl = pg.pareto_points(b)
    if not by_wl:
        msg = pg.no_cells_message(camp, pg.PARETO_PHASES)
        return Section(id="pareto", title="Throughput vs latency", body=missing_note(msg), missing=[msg])
    parts, n_plots, missing = [], 0, []
    for w, pts in by_wl.items():
        cells = [camp.cells[p.cell_id] for p in pts]
        drawn = plots.pareto_svg(
            pts,
            slo_ttft_ms=camp.intent.slo_ttft_ms,
            slo_tpot_ms=camp.intent.slo_tpot_ms,
            prefix=f"pareto-{w}",
        )
        parts.append(f"<h3>{esc(w)}</h3>")
        cap = pg.caption(
            [pg.cell_row(c) for c in cells],
            camp,
            f"workload {w}: one point per (config, concurrency) cell of phases 3 and 8",
        )
        if drawn is None:
            msg = f"{w}: no cell has a TPOT or TTFT to place"
            parts.append(missing_note(msg))
            missing.append(msg)
        else:
            parts.append(figure(drawn[0], drawn[1], cap))
            n_plots += 1
        no_p99 = [p.cell_id for p in pts if p.ttft_p99_ms is None]
        if no_p99:
            parts.append(
                missing_note(
                    f"no p99 TTFT for {len(no_p99)} cell(s) (their bench summary.json is not in the bundle): only the mean is drawn"
                )
            )
        parts.append(
            captioned(
                table(
                    (
                        "config",
                        "c",
                        "tok/s/GPU",
                        "95% CI",
                        "median TPOT ms",
                        "95% CI",
                        "mean TTFT ms",
                        "p99 TTFT ms",
                        "tier",
                    ),
                    [
                        (
                            p.series + (" ★ champion" if p.champion else ""),
                            p.concurrency,
                            pg.fmt(p.tok_s_gpu, 1),
                            pg.fmt_ci(p.tok_s_gpu_ci95, 1),
                            pg.fmt(p.tpot_ms, 2),
                            pg.fmt_ci(p.tpot_ci95, 2),
                            pg.fmt(p.ttft_mean_ms, 1),
                            pg.fmt(p.ttft_p99_ms, 1),
                            p.tier + (" SIMULATED" if p.simulated else ""),
                        )
                        for p in pts
                    ],
                ),
                cap,
            )
        )
    return Section(
        id="pareto",
        title="Throughput vs latency (Pareto)",
        body="".join(parts),
        plots=n_plots,
        missing=missing,
    )


# ---------------------------------------------------------------- roofline


def roofline_section(b: Bundle, card: Any, gpu: Gpu | None, card_note: str) -> Section:
    camp = b.campaign
    cells, note = pg.roofline_cells(camp)
    title = "Decode on the roofline"
    if not cells:
        return Section(id="roofline", title=title, body=missing_note(note), missing=[note])
    if card is None or gpu is None:
        msg = f"cannot place decode on the roofline: {card_note}"
        return Section(id="roofline", title=title, body=missing_note(msg), missing=[msg])
    pts = [
        p
        for c in cells
        if (
            p := pg.roofline_point(
                c, card, gpu, tp=cell_tp(c, camp.facts.tp), isl=camp.intent.isl, osl=camp.intent.osl
            )
        )
        is not None
    ]
    pts += [
        p
        for c in cells
        if (p := pg.prefill_point(c, card, gpu, tp=cell_tp(c, camp.facts.tp), isl=camp.intent.isl))
        is not None
    ]
    parts = [f'<p class="label">{esc(pg.ANALYTICAL)}</p>']
    if note:
        parts.append(missing_note(note))
    missing = [note] if note else []
    drawn = plots.roofline_svg(pts, gpu_name=gpu.name, prefix="roofline")
    cap = pg.caption([pg.cell_row(c) for c in cells], camp, f"decode cells on {gpu.name} ({card_note})")
    if drawn is None:
        msg = "no decode cell has a median TPOT: nothing to place"
        parts.append(missing_note(msg))
        missing.append(msg)
        return Section(id="roofline", title=title, body="".join(parts), missing=missing)
    parts.append(figure(drawn[0], drawn[1], cap))
    parts.append(
        "<ul class='findings'>" + "".join(f"<li>{esc(s)}</li>" for s in pg.roofline_findings(pts)) + "</ul>"
    )
    parts.append(
        captioned(
            table(
                (
                    "config",
                    "c",
                    "TP",
                    "context",
                    "GFLOP/step",
                    "GB/step",
                    "FLOP/B",
                    "TPOT ms",
                    "TFLOP/s",
                    "TB/s",
                    "% HBM",
                    "labels",
                ),
                [
                    (
                        f"{p.engine}/{p.config} (phase {p.phase})",
                        p.concurrency,
                        p.tp,
                        p.context_tokens,
                        pg.fmt(p.flops_per_step / 1e9, 1),
                        pg.fmt(p.bytes_per_step / 1e9, 2),
                        pg.fmt(p.intensity, 1),
                        pg.fmt(p.tpot_ms, 2),
                        pg.fmt(p.attained_tflops, 1),
                        pg.fmt(p.attained_tb_s, 2),
                        pg.fmt(p.hbm_pct, 0),
                        "ANALYTICAL" + (", SIMULATED" if p.simulated else "") + f", {p.tier}",
                    )
                    for p in pts
                ],
            ),
            cap,
        )
    )
    return Section(id="roofline", title=title, body="".join(parts), plots=1, missing=missing)


def cell_tp(c: CellView, default: int) -> int:
    """The cell's TP from its context (the deploy's), else the campaign's."""
    par = c.context.get("parallelism") or {}
    tp = par.get("tp")
    return int(tp) if isinstance(tp, int) and tp >= 1 else default


# ---------------------------------------------------------------- SLO capacity


def capacity_section(b: Bundle) -> Section:
    camp = b.campaign
    title = "SLO capacity (phase 8.3)"
    facts = camp.facts.capacity
    if not facts:
        msg = f"no SLO capacity results: {pg.phase_state(camp, '8.3')}."
        return Section(id="capacity", title=title, body=missing_note(msg), missing=[msg])
    parts, n, missing = [], 0, []
    for key, fact in facts.items():
        res: CapacityResult | None = b.capacity.get(key)
        parts.append(f"<h3>{esc(key)}</h3>")
        interval = ", ".join("-" if x is None else f"{x:g}" for x in fact.interval)
        parts.append(
            f"<p>{esc(fact.statement)}</p><p>interval [highest pass, lowest fail]: [{esc(interval)}]; "
            f"{fact.points} points; output tok/s at capacity {esc(pg.fmt(fact.output_tok_s, 0))} "
            f"{esc(pg.fmt_ci(fact.output_tok_s_ci95))}; {_tier_badge(fact.tier, fact.simulated)}</p>"
        )
        if res is None:
            msg = f"{key}: {fact.path}/capacity.json is not in the bundle: no points to plot"
            parts.append(missing_note(msg))
            missing.append(msg)
            continue
        # the search's bench context lacks what the deploy knew (quantization, KV dtype): the config's
        # phase-8 cell has it; the search's own values win where it has them
        twin = next(
            (
                c.context
                for c in camp.cells.values()
                if c.phase == "8" and (c.engine, c.config) == (fact.engine, fact.config)
            ),
            {},
        )
        ctx = res.context.model_dump(mode="json") if res.context else {}
        ctx = {**twin, **{k: v for k, v in ctx.items() if v not in (None, "", {}, [])}}
        row = pg.Row(
            context=ctx,
            engine=fact.engine,
            workload="random",
            concurrency=int(res.capacity)
            if res.capacity is not None and res.capacity == int(res.capacity)
            else res.capacity,
            trials=res.points[0].trials if res.points else None,
            tier=fact.tier,
            simulated=fact.simulated,
        )
        cap = pg.caption(
            [row], camp, f"{key}: p{res.slo.percentile} latencies per load point, SLO {res.slo.name}"
        )
        drawn = plots.capacity_svg(res, prefix=f"cap-{key.replace('/', '-')}")
        if drawn is None:
            msg = f"{key}: the search measured no points"
            parts.append(missing_note(msg))
            missing.append(msg)
            continue
        parts.append(figure(drawn[0], drawn[1], cap))
        n += 1
    return Section(id="capacity", title=title, body="".join(parts), plots=n, missing=missing)


# ---------------------------------------------------------------- the champion


def champion_section(b: Bundle) -> Section:
    camp = b.campaign
    ch = pg.champion_of(b)
    bn = pg.banner(ch, b.selection, camp.phases.get("8.4"))
    cls = {"recommended": "banner ok", "draft": "banner draft", "none": "banner none"}[bn.kind]
    gates = "".join(f"<li>{esc(g)}</li>" for g in bn.gates)
    parts = [
        f'<div class="{cls}"><strong>{esc(bn.title)}</strong>'
        + (f"<ul>{gates}</ul>" if gates else "")
        + "</div>"
    ]
    if ch is None:
        return Section(id="champion", title="Champion", body="".join(parts), missing=[bn.title])
    cell = camp.cells.get(ch.cell_id or "")
    sim = bool(cell and cell.simulated)
    unit = "tok/s/GPU" if camp.intent.focus == "throughput" else "ms median TPOT"
    version = camp.facts.engine_versions.get(ch.engine)
    try:
        flags = (
            " ".join(translate(dict(ch.levers), ch.engine, version, tp=camp.facts.tp))
            or "(none: engine defaults)"
        )
    except ConfigError as e:
        flags = f"not translatable: {e.message}"
    parts.append(
        f'<p class="champ">Champion: <strong>{esc(ch.engine)} / {esc(ch.config)}</strong> on {ch.gpus} GPU(s) '
        f"{_tier_badge(ch.tier, sim)}</p>"
    )
    value = (
        f"{pg.fmt(ch.value, 2)} {unit} at c={ch.concurrency}, 95% interval {pg.fmt_ci(ch.ci95, 2)}"
        if ch.value is not None
        else "no value (no eligible cell)"
    )
    rows = [
        ("metric", ch.metric or "-"),
        ("value", value),
        ("levers", ", ".join(f"{k}={v}" for k, v in ch.levers.items()) or "{} (engine defaults)"),
        (f"{ch.engine} flags to copy", flags),
        ("deploy with perftune", pg.deploy_command(camp, ch.engine, ch.levers)),
        ("evidence cell", f"{ch.cell_id} ({cell.path})" if cell else (ch.cell_id or "-")),
    ]
    cap = pg.caption([pg.cell_row(cell)] if cell else [], camp, "the champion's evidence cell")
    parts.append(captioned(table(("", ""), rows, "kv"), cap))
    ranking = (b.selection or {}).get("ranking") or []
    if ranking:
        parts.append("<h3>Ranking</h3>")
        parts.append(
            captioned(
                table(
                    ("engine", "config", "GPUs", "value", "95% CI", "at c", "eligible", "note"),
                    [
                        (
                            r.get("engine"),
                            r.get("config"),
                            r.get("gpus"),
                            pg.fmt(r.get("value"), 2),
                            pg.fmt_ci(r.get("ci95"), 2),
                            r.get("concurrency") if r.get("concurrency") is not None else "-",
                            "yes" if r.get("eligible") else "no",
                            r.get("reason") or ("tied with the leader" if r.get("tied_with_leader") else ""),
                        )
                        for r in ranking
                        if isinstance(r, dict)
                    ],
                ),
                pg.caption(
                    [pg.cell_row(c) for c in camp.cells.values() if c.phase == "8"],
                    camp,
                    f"phase 8.4 ranking; metric: {(b.selection or {}).get('metric', '')}",
                ),
            )
        )
    return Section(id="champion", title="Champion", body="".join(parts))


# ---------------------------------------------------------------- tuning


def tuning_section(b: Bundle) -> Section:
    camp = b.campaign
    title = "Tuning (phase 3)"
    t = b.tune
    if t is None:
        msg = f"no tuning results (phase3/tune.json): {pg.phase_state(camp, '3')}."
        return Section(id="tuning", title=title, body=missing_note(msg), missing=[msg])
    p3 = [c for c in camp.cells.values() if c.phase == "3"] or [
        c for c in camp.cells.values() if c.phase == "1"
    ]
    cap = pg.caption([pg.cell_row(c) for c in p3], camp, "phase 3 tuner")
    order = pg.tune_order(t)
    parts = [
        f"<p>GPU time {float(t.get('gpu_s') or 0) / 60:.1f} min"
        + ("; budget exhausted" if t.get("budget_exhausted") else "")
        + f"; arms deployed: {esc(', '.join(order.arms) or 'none')}</p>"
    ]
    for e in t.get("engines") or []:
        if not isinstance(e, dict):
            continue
        crowned = (e.get("crowned") or {}).get("name") if isinstance(e.get("crowned"), dict) else None
        parts.append(f"<h3>{esc(e.get('engine'))}</h3>")
        ratio = e.get("ratio")
        parts.append(
            f"<p>verdict: <strong>{esc(e.get('verdict') or '-')}</strong>; crowned: {esc(crowned or 'none')}; "
            f"challenger {esc(e.get('challenger') or '-')}; ratio to the baseline "
            f"{esc(pg.fmt(ratio, 3))} {esc(pg.fmt_ci(e.get('ratio_ci95'), 3))}</p>"
        )
        bw = e.get("by_workload") or {}
        rows = [
            (
                w,
                f"{pg.fmt(v.get('score'), 0)} (c={v.get('concurrency')})",
                f"{pg.fmt(v.get('baseline_score'), 0)} (c={v.get('baseline_concurrency')})",
                pg.fmt(v.get("ratio"), 3),
                pg.fmt_ci(v.get("ratio_ci95"), 3),
            )
            for w, v in bw.items()
            if isinstance(v, dict)
        ]
        if rows:
            unit = e.get("score_unit") or "output tok/s"
            parts.append(
                captioned(
                    table(("workload", f"challenger ({unit})", "baseline", "ratio", "95% CI"), rows), cap
                )
            )
        top = e.get("top3") or []
        if top:
            parts.append(
                "<p>top arms (name, score, trials): "
                + esc(
                    "; ".join(
                        f"{r[0]} {pg.fmt(r[1], 0)} ({r[2]})"
                        for r in top
                        if isinstance(r, list) and len(r) >= 3
                    )
                )
                + "</p>"
            )
    parts.append("<h3>Order of the interleaved full treatment</h3>")
    if order.steps:
        parts.append("<ol class='order'>" + "".join(f"<li>{esc(s)}</li>" for s in order.steps) + "</ol>")
    else:
        parts.append(missing_note("no full treatment ran (screening only)"))
    measures = [m for m in t.get("measures") or [] if isinstance(m, dict)]
    if measures:
        agg: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for m in measures:
            agg.setdefault(
                (str(m.get("arm")), str(m.get("workload")), int(m.get("concurrency") or 0)), []
            ).append(m)

        def mean(ms: list[dict[str, Any]], k: str) -> float | None:
            vs = [float(m[k]) for m in ms if isinstance(m.get(k), int | float)]
            return sum(vs) / len(vs) if vs else None

        rows2 = [
            (
                a,
                w,
                c,
                len(ms),
                pg.fmt(mean(ms, "output_tok_s"), 0),
                pg.fmt(mean(ms, "tpot_ms"), 2),
                pg.fmt(mean(ms, "ttft_ms"), 0),
            )
            for (a, w, c), ms in agg.items()
        ]
        parts.append("<h3>Every measure (mean over its trials)</h3>")
        parts.append(
            captioned(
                table(("arm", "workload", "c", "trials", "output tok/s", "TPOT ms", "TTFT ms"), rows2), cap
            )
        )
    notes = [str(x) for x in t.get("notes") or []]
    if notes:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{esc(x)}</li>" for x in notes) + "</ul>")
    return Section(id="tuning", title=title, body="".join(parts))


# ---------------------------------------------------------------- latency distributions


def distributions_section(b: Bundle, records: dict[str, list[RequestRecord] | None]) -> Section:
    camp = b.campaign
    title = "Latency distributions (champion cells)"
    ch = pg.champion_of(b)
    cells = pg.champion_cells(camp, ch)
    if not cells:
        msg = (
            "no champion cells: "
            + (pg.phase_state(camp, "8.4") if ch is None else "the champion has no phase-8 cell")
            + "."
        )
        return Section(id="distributions", title=title, body=missing_note(msg), missing=[msg])
    parts, n, missing = [], 0, []
    by_wl: dict[str, list[CellView]] = {}
    for c in cells:
        by_wl.setdefault(c.workload, []).append(c)
    for w, cs in by_wl.items():
        series = []
        for c in cs:
            recs = records.get(c.cell_id)
            if recs is None:
                msg = f"{c.cell_id}: no records.jsonl in {c.path}"
                missing.append(msg)
                continue
            ok = [r for r in recs if r.ok]
            series.append(
                (
                    f"c={c.concurrency}",
                    [x for r in ok if (x := r.ttft_ms) is not None],
                    [x for r in ok if (x := r.tpot_ms) is not None],
                )
            )
        parts.append(f"<h3>{esc(w)}</h3>")
        drawn = plots.cdf_svg(series, prefix=f"cdf-{w}") if series else None
        if drawn is None:
            msg = f"{w}: no per-request records of the champion's cells in the bundle"
            parts.append(missing_note(msg))
            missing.append(msg)
            continue
        cap = pg.caption(
            [pg.cell_row(c) for c in cs],
            camp,
            f"{ch.engine}/{ch.config} on {w}: per-request TTFT and TPOT, counted trials" if ch else w,
        )
        parts.append(figure(drawn[0], drawn[1], cap))
        n += 1
    for m in missing:
        if m.split(":")[0] in {c.cell_id for c in cells}:
            parts.append(missing_note(m))
    return Section(id="distributions", title=title, body="".join(parts), plots=n, missing=missing)


# ---------------------------------------------------------------- the document

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;background:#fff;font-size:13px}
p,li{font-size:13px}
header{background:#14213d;color:#fff;padding:14px 28px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;font-size:12px;opacity:.85}
nav{padding:6px 28px;background:#eef1f6;font-size:13px;border-bottom:1px solid #ccd}nav a{margin-right:14px;color:#14213d}
section{padding:8px 28px 18px;border-bottom:1px solid #e3e3e3}
h2{font-size:18px;margin:14px 0 8px}h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:11.5px;margin:4px 0}th,td{border:1px solid #d6d6d6;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f4f7}table.kv td:first-child{font-weight:600;white-space:nowrap}
.caption,figcaption{font-size:11px;color:#555;margin:3px 0 10px}
figure{margin:6px 0}figure svg{max-width:100%;height:auto}
.missing{background:#fff6e0;border-left:4px solid #e0a100;padding:6px 10px;font-size:13px}
.banner{padding:10px 14px;margin:8px 0;border-radius:4px;font-size:15px}.banner ul{margin:6px 0 0;font-size:13px}
.banner.ok{background:#e3f6e8;border:2px solid #1e8e3e}.banner.draft{background:#fdecea;border:2px solid #c5221f}
.banner.none{background:#f1f1f1;border:2px solid #777}
.badge{display:inline-block;padding:1px 6px;border-radius:3px;font-size:11px;font-weight:700;border:1px solid #888}
.badge.verdict{background:#e3f6e8}.badge.draft{background:#fdecea}.badge.sim{background:#e8eaf6}
.simnote,.label{font-weight:600;color:#3949ab}
@media print{nav{display:none}section{break-before:page;border:0}section:first-of-type{break-before:auto}
figure,table{break-inside:avoid}}
"""


def document(b: Bundle, sections: Sequence[Section], generated: str) -> str:
    camp = b.campaign
    i = camp.intent
    sim = " · SIMULATED" if any(c.simulated for c in camp.cells.values()) else ""
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>perftune report {esc(camp.run_id)}</title>"
        f"<style>{CSS}</style></head><body>"
        f"<header><h1>perftune report: {esc(i.model)} on {i.gpus} x {esc(i.gpu)}{esc(sim)}</h1>"
        f"<p>campaign {esc(camp.run_id)} · engines {esc(', '.join(i.engines))} · focus {esc(i.focus)} · "
        f"generated {esc(generated)} from {esc(b.run_dir.name)}/</p></header>"
        f"<nav>{nav}</nav>{body}</body></html>\n"
    )
