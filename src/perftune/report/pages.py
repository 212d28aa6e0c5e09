"""What each report page says, as data. Pure: no files, no plotting, no HTML.

Pareto points per workload, roofline points per decode cell, captions that carry every number's
context, the champion banner rule (VERDICT vs DRAFT) and the plain sentences a page shows when the
bundle lacks its data. `report.html` turns these into markup and `report.plots` into SVG.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from perftune.hardware.ceilings import Gpu
from perftune.hardware.roofline import Roofline, roofline
from perftune.models.card import ModelCard
from perftune.report.bundle import Bundle, CampaignView, CellView, ChampionView, PhaseView

PARETO_PHASES = ("3", "8")
HBM_TARGET = 0.75  # "does decode reach 75% of the HBM bandwidth?"
ANALYTICAL = "ANALYTICAL (L0: bytes and FLOPs from the roofline model, not measured counters)"


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- missing data, said plainly


def phase_state(camp: CampaignView, pid: str) -> str:
    """'phase 8 did not run (pending)' / 'phase 8 is red: <reason>' / 'phase 8 is green'."""
    p = camp.phases.get(pid)
    if p is None:
        return f"phase {pid} is not in this bundle"
    if p.status == "green":
        return f"phase {pid} is green"
    if p.status == "red":
        return f"phase {pid} is red: {p.reason}" if p.reason else f"phase {pid} is red"
    if p.status in ("skipped", "not-available"):
        why = f": {p.reason}" if p.reason else ""
        return f"phase {pid} was {p.status.replace('-', ' ')}{why}"
    return f"phase {pid} did not run ({p.status})"


def no_cells_message(camp: CampaignView, phases: Sequence[str]) -> str:
    """The sentence shown instead of a plot when the phases it draws from have no cells."""
    names = " or ".join(f"phase-{p}" for p in phases)
    return f"no {names} cells: " + "; ".join(phase_state(camp, p) for p in phases) + "."


# ---------------------------------------------------------------- captions: every number's context


def _join(values: Iterable[object]) -> str:
    seen = list(dict.fromkeys("unknown" if v in (None, "", {}) else str(v) for v in values))
    return ", ".join(seen) if seen else "unknown"


def engine_label(ctx: dict[str, Any], engine: str, versions: dict[str, str | None]) -> str:
    stack = ctx.get("stack") or {}
    version = stack.get("engine_version") or versions.get(engine)
    name = stack.get("engine") or engine
    if version and str(version).startswith(str(name)):  # the simulator's version names itself
        return str(version)
    return f"{name} {version or '(version unknown)'}"


def parallelism_label(ctx: dict[str, Any], tp: int) -> str:
    par = ctx.get("parallelism") or {}
    if not par:
        return f"TP={tp}"
    return " ".join(f"{k.upper()}={v}" for k, v in sorted(par.items()))


def workload_label(ctx: dict[str, Any], workload: str) -> str:
    wl = ctx.get("workload") or {}
    kind = wl.get("kind") or workload
    isl, osl = wl.get("isl"), wl.get("osl")
    shape = f" ISL {isl}" if isl else ""
    shape += f" OSL {osl}" if osl else ""
    return f"{kind}{shape}"


class Row(_Data):
    """One measured thing's context, the input of a caption."""

    context: dict[str, Any] = Field(description="a MeasurementContext as data")
    engine: str
    workload: str
    concurrency: int | float | None
    trials: int | None
    tier: str
    simulated: bool


def cell_row(c: CellView) -> Row:
    return Row(
        context=c.context,
        engine=c.engine,
        workload=c.workload,
        concurrency=c.concurrency,
        trials=c.trials,
        tier=c.tier,
        simulated=c.simulated or bool((c.context.get("stack") or {}).get("simulated")),
    )


def caption(rows: Sequence[Row], camp: CampaignView, what: str = "") -> str:
    """'model … · hardware … · engine … · parallelism … · quantization … · KV … · workload … ·
    concurrency … · trials … · tier …[ · SIMULATED]': the context of every number in a plot or table."""
    if not rows:
        return (what + " · " if what else "") + "no measured cells"
    versions = camp.facts.engine_versions
    ctxs = [r.context for r in rows]
    parts = [
        f"model {_join(c.get('model') or camp.intent.model for c in ctxs)}",
        f"hardware {_join(c.get('hardware') or f'{camp.intent.gpus}x{camp.intent.gpu}' for c in ctxs)}",
        f"engine {_join(engine_label(r.context, r.engine, versions) for r in rows)}",
        f"parallelism {_join(parallelism_label(c, camp.facts.tp) for c in ctxs)}",
        f"quantization {_join(c.get('quantization') for c in ctxs)}",
        f"KV {_join(c.get('kv_cache_dtype') for c in ctxs)}",
        f"workload {_join(workload_label(r.context, r.workload) for r in rows)}",
        f"concurrency {_join(sorted({r.concurrency for r in rows if r.concurrency is not None}))}",
        f"trials {_join(sorted({r.trials for r in rows if r.trials is not None}))}",
        f"tier {_join(r.tier for r in rows)}",
    ]
    if any(r.simulated for r in rows) and not all(r.tier == "SIMULATED" for r in rows):
        parts.append("SIMULATED")
    return (what + " · " if what else "") + " · ".join(parts)


# ---------------------------------------------------------------- Pareto: throughput vs latency


class ParetoPoint(_Data):
    cell_id: str
    phase: str
    engine: str
    config: str
    series: str = Field(description="legend label: engine/config (phase N)")
    workload: str
    concurrency: int
    tok_s_gpu: float = Field(description="output tok/s per GPU")
    tok_s_gpu_ci95: tuple[float, float] | None
    tpot_ms: float | None = Field(description="median TPOT, mean over trials")
    tpot_ci95: tuple[float, float] | None
    ttft_mean_ms: float | None
    ttft_p99_ms: float | None
    champion: bool = Field(description="the champion's own cell")
    champion_config: bool = Field(description="a cell of the champion's engine and config (phase 8)")
    simulated: bool
    tier: str


def _ci(v: list[float] | None, scale: float = 1.0) -> tuple[float, float] | None:
    return (v[0] / scale, v[1] / scale) if v and len(v) == 2 else None


def pareto_points(b: Bundle) -> dict[str, list[ParetoPoint]]:
    """One point per (config, concurrency) cell of phases 3 and 8, grouped by workload."""
    camp = b.campaign
    ch = camp.facts.champion
    out: dict[str, list[ParetoPoint]] = {}
    for c in camp.cells.values():
        if c.phase not in PARETO_PHASES:
            continue
        g = max(1, c.gpus)
        ex = b.extras.get(c.cell_id)
        is_ch_cfg = ch is not None and c.phase == "8" and (c.engine, c.config) == (ch.engine, ch.config)
        out.setdefault(c.workload, []).append(
            ParetoPoint(
                cell_id=c.cell_id,
                phase=c.phase,
                engine=c.engine,
                config=c.config,
                series=f"{c.engine}/{c.config} (phase {c.phase})",
                workload=c.workload,
                concurrency=c.concurrency,
                tok_s_gpu=c.output_tok_s / g,
                tok_s_gpu_ci95=_ci(c.output_tok_s_ci95, g),
                tpot_ms=c.tpot_median_ms,
                tpot_ci95=_ci(c.tpot_ci95),
                ttft_mean_ms=c.ttft_mean_ms,
                ttft_p99_ms=ex.ttft_p99_ms if ex else None,
                champion=ch is not None and ch.cell_id == c.cell_id,
                champion_config=is_ch_cfg,
                simulated=c.simulated,
                tier=c.tier,
            )
        )
    for pts in out.values():
        pts.sort(key=lambda p: (p.series, p.concurrency))
    return dict(sorted(out.items(), key=lambda kv: _workload_order(kv[0])))


def _workload_order(w: str) -> tuple[int, str]:
    order = ["random", "prefix", "chat", "code", "long"]
    return (order.index(w) if w in order else len(order), w)


def frontier(points: Sequence[ParetoPoint], x: Literal["tpot", "ttft"]) -> list[ParetoPoint]:
    """The non-dominated points (lower latency, higher tok/s per GPU), in latency order."""

    def lat(p: ParetoPoint) -> float | None:
        return p.tpot_ms if x == "tpot" else p.ttft_mean_ms

    have = sorted((p for p in points if lat(p) is not None), key=lambda p: (lat(p), -p.tok_s_gpu))
    out: list[ParetoPoint] = []
    best = float("-inf")
    for p in have:
        if p.tok_s_gpu > best:
            out.append(p)
            best = p.tok_s_gpu
    return out


# ---------------------------------------------------------------- roofline: where decode sits


class RooflinePoint(_Data):
    cell_id: str
    phase: str
    engine: str
    config: str
    concurrency: int
    tp: int
    context_tokens: int = Field(description="mean tokens in context during decode: ISL + OSL/2")
    weight_dtype: str
    kv_dtype: str
    flops_per_step: float = Field(description="decode FLOPs per step per GPU (roofline model)")
    bytes_per_step: float = Field(description="weight + KV bytes read per step per GPU (roofline model)")
    intensity: float = Field(description="FLOP per byte")
    tpot_ms: float = Field(
        description="the measured time of the step: decode, the median TPOT; prefill, the mean TTFT"
    )
    kind: Literal["decode", "prefill"] = Field("decode", description="which step the point places")
    attained_tflops: float = Field(description="FLOPs per step / measured TPOT, per GPU")
    attained_tb_s: float = Field(description="bytes per step / measured TPOT, per GPU")
    hbm_pct: float = Field(description="attained bandwidth / HBM peak, %")
    peak_tflops: float = Field(description="the compute roof at the weight dtype")
    hbm_tb_s: float = Field(description="the bandwidth roof")
    simulated: bool
    tier: str
    labels: list[str] = Field(description="ANALYTICAL, SIMULATED where so")


def roofline_cells(camp: CampaignView) -> tuple[list[CellView], str]:
    """The decode cells the roofline page places: phase 8's random cells; where phase 8 did not run,
    phase 3's (else phase 1's) random cells, and a note that says so."""
    for pid in ("8", "3", "1"):
        cells = [c for c in camp.cells.values() if c.phase == pid and c.workload == "random"]
        if cells:
            note = (
                ""
                if pid == "8"
                else f"no phase-8 cells: {phase_state(camp, '8')}; placing the phase-{pid} random cells "
                "instead."
            )
            return sorted(cells, key=lambda c: (c.engine, c.config, c.concurrency)), note
    return [], no_cells_message(camp, ("8",))


def roofline_point(
    cell: CellView, card: ModelCard, g: Gpu, *, tp: int, isl: int, osl: int
) -> RooflinePoint | None:
    """A decode cell on the roofline: bytes and FLOPs per step from the roofline model (analytical),
    time per step the measured median TPOT. None without a TPOT (nothing to place)."""
    if not cell.tpot_median_ms or cell.tpot_median_ms <= 0:
        return None
    wl = cell.context.get("workload") or {}
    context = max(1, int((wl.get("isl") or isl) + (wl.get("osl") or osl) / 2))
    rf = roofline(card, g, tp=tp, batch=cell.concurrency, context=context, levers=cell.levers)
    peak = g.peak_tflops(rf.weight_dtype)
    flops = rf.decode_compute_ms * 1e-3 * peak * 1e12  # decode_compute_ms = FLOPs per step / peak
    nbytes = rf.weight_bytes_read_per_step + rf.kv_bytes_read_per_step
    return _place(cell, rf, g, tp=tp, tokens=context, flops=flops, nbytes=nbytes, step_ms=cell.tpot_median_ms)


def prefill_point(cell: CellView, card: ModelCard, g: Gpu, *, tp: int, isl: int) -> RooflinePoint | None:
    """A cell's prefill on the roofline: one request's prompt (FLOPs: 2 x active params x ISL plus the
    attention's ISL^2 term; bytes: the weights read once plus the prompt's KV written), per GPU, timed
    by the measured mean TTFT. TTFT holds queueing and batching too, so the attained TFLOP/s is a
    lower bound (it is closest at low concurrency). None without a TTFT."""
    if not cell.ttft_mean_ms or cell.ttft_mean_ms <= 0:
        return None
    wl = cell.context.get("workload") or {}
    n = max(1, int(wl.get("isl") or isl))
    rf = roofline(card, g, tp=tp, batch=1, context=n, levers=cell.levers)
    flops = (
        2.0 * card.active_params * n + 2.0 * card.attention_layers * card.heads * card.head_dim * n * n
    ) / tp
    kv_tok = card.kv_bytes_per_token.get(rf.kv_dtype, 0.0)
    nbytes = rf.weight_bytes_per_gpu + n * kv_tok / tp
    return _place(
        cell,
        rf,
        g,
        tp=tp,
        tokens=n,
        flops=flops,
        nbytes=nbytes,
        step_ms=cell.ttft_mean_ms,
        kind="prefill",
        extra_label="LOWER BOUND (mean TTFT includes queueing)",
    )


def _place(
    cell: CellView,
    rf: Roofline,
    g: Gpu,
    *,
    tp: int,
    tokens: int,
    flops: float,
    nbytes: float,
    step_ms: float,
    kind: Literal["decode", "prefill"] = "decode",
    extra_label: str = "",
) -> RooflinePoint:
    """One step of a cell on the roofline: its FLOPs and bytes (analytical) over its measured time."""
    step_s = step_ms * 1e-3
    tb_s = nbytes / step_s / 1e12
    simulated = cell.simulated or bool((cell.context.get("stack") or {}).get("simulated"))
    return RooflinePoint(
        cell_id=cell.cell_id,
        phase=cell.phase,
        engine=cell.engine,
        config=cell.config,
        concurrency=cell.concurrency,
        tp=tp,
        context_tokens=tokens,
        weight_dtype=rf.weight_dtype,
        kv_dtype=rf.kv_dtype,
        flops_per_step=flops,
        bytes_per_step=nbytes,
        intensity=flops / nbytes if nbytes else 0.0,
        tpot_ms=step_ms,
        kind=kind,
        attained_tflops=flops / step_s / 1e12,
        attained_tb_s=tb_s,
        hbm_pct=100.0 * tb_s / g.hbm_tb_s,
        peak_tflops=g.peak_tflops(rf.weight_dtype),
        hbm_tb_s=g.hbm_tb_s,
        simulated=simulated,
        tier=cell.tier,
        labels=[ANALYTICAL, *([extra_label] if extra_label else []), *(["SIMULATED"] if simulated else [])],
    )


def roofline_findings(points: Sequence[RooflinePoint]) -> list[str]:
    """The page's answers: the concurrency with the most attained TFLOP/s, whether decode reaches 75%
    of the HBM bandwidth (and where), the TP used. Each sentence names its basis."""
    prefill = [p for p in points if p.kind == "prefill"]
    points = [p for p in points if p.kind == "decode"]
    if not points:
        return []
    sim = " (SIMULATED)" if any(p.simulated for p in points) else ""
    out = []
    for cfg in dict.fromkeys((p.engine, p.config) for p in prefill):
        pts = [p for p in prefill if (p.engine, p.config) == cfg]
        best = max(pts, key=lambda p: p.attained_tflops)
        out.append(
            f"{cfg[0]}/{cfg[1]}: prefill attains at least {best.attained_tflops:.1f} TFLOP/s per GPU "
            f"({100 * best.attained_tflops / best.peak_tflops:.1f}% of the {best.weight_dtype} peak) at "
            f"c={best.concurrency}, {best.context_tokens}-token prompts (a lower bound: the mean TTFT "
            f"includes queueing){sim}."
        )
    for cfg in dict.fromkeys((p.engine, p.config) for p in points):
        pts = [p for p in points if (p.engine, p.config) == cfg]
        best = max(pts, key=lambda p: p.attained_tflops)
        reach = [p for p in pts if p.hbm_pct >= 100 * HBM_TARGET]
        top = max(pts, key=lambda p: p.hbm_pct)
        name = f"{cfg[0]}/{cfg[1]}"
        share = 100 * best.attained_tflops / best.peak_tflops
        out.append(
            f"{name}: attained TFLOP/s is highest at c={best.concurrency} "
            f"({best.attained_tflops:.1f} TFLOP/s per GPU, {share:.1f}% "
            f"of the {best.weight_dtype} peak {best.peak_tflops:.0f}){sim}."
        )
        if reach:
            cs = ", ".join(f"c={p.concurrency} ({p.hbm_pct:.0f}%)" for p in reach)
            out.append(f"{name}: decode reaches {HBM_TARGET:.0%} of HBM bandwidth at {cs}{sim}.")
        else:
            out.append(
                f"{name}: decode never reaches {HBM_TARGET:.0%} of HBM bandwidth; the most is "
                f"{top.hbm_pct:.0f}% ({top.attained_tb_s:.2f} of {top.hbm_tb_s:.2f} TB/s) at "
                f"c={top.concurrency}{sim}."
            )
    tps = sorted({p.tp for p in points})
    out.append(f"Tensor parallelism: TP={', '.join(map(str, tps))} (bytes and FLOPs are per GPU).")
    out.append(f"Every point is {ANALYTICAL}; time per step is the measured median TPOT.")
    return out


# ---------------------------------------------------------------- the champion banner


class Banner(_Data):
    kind: Literal["recommended", "draft", "none"]
    title: str
    gates: list[str] = Field(default_factory=list, description="every failing gate, named")


def banner(champion: ChampionView | None, selection: dict[str, Any] | None, p84: PhaseView | None) -> Banner:
    """RECOMMENDED FOR PRODUCTION only for a VERDICT champion; otherwise DRAFT with every failing
    gate named; no champion: why not."""
    sel = selection or {}
    if champion is None and isinstance(sel.get("champion"), dict):
        champion = ChampionView.model_validate(
            {
                **sel["champion"],
                "tier": sel.get("tier", "DRAFT"),
                "metric": sel.get("metric", ""),
                "failing_gates": sel.get("failing_gates", []),
            }
        )
    if champion is None:
        if p84 is None or p84.status in ("pending", "running", "skipped", "not-available"):
            why = "phase 8.4 did not run" if p84 is None else f"phase 8.4 is {p84.status}"
            return Banner(kind="none", title=f"No champion: {why}.")
        gates = [str(g) for g in sel.get("failing_gates") or []]
        return Banner(
            kind="none", title=f"No champion: {p84.reason or 'no candidate was eligible'}.", gates=gates
        )
    gates = list(champion.failing_gates)
    if champion.tier == "VERDICT" and not gates:
        return Banner(
            kind="recommended", title="RECOMMENDED FOR PRODUCTION (VERDICT: every production gate passed)"
        )
    if not gates:
        gates = [f"tier {champion.tier}: no failing gate recorded in the bundle"]
    return Banner(kind="draft", title="DRAFT — not a production recommendation. Failing gates:", gates=gates)


def champion_of(b: Bundle) -> ChampionView | None:
    """The champion from campaign.json's facts, else from phase8.4/champion_select.json."""
    if b.campaign.facts.champion is not None:
        return b.campaign.facts.champion
    sel = b.selection or {}
    if isinstance(sel.get("champion"), dict):
        return ChampionView.model_validate(
            {
                **sel["champion"],
                "tier": sel.get("tier", "DRAFT"),
                "metric": sel.get("metric", ""),
                "failing_gates": sel.get("failing_gates", []),
            }
        )
    return None


def deploy_command(camp: CampaignView, engine: str, levers: dict[str, Any]) -> str:
    """A config as the perftune command that deploys it (the campaign's model and TP, the levers)."""
    i = camp.intent
    argv = [f"perftune deploy --engine {engine} --model {i.model_path or i.model}"]
    argv += [f"--tp {camp.facts.tp}"] if camp.facts.tp > 1 else []
    argv += [f"--lever {k}={v}" for k, v in levers.items()]
    return " ".join(argv)


def champion_cells(camp: CampaignView, ch: ChampionView | None) -> list[CellView]:
    """The champion config's phase-8 cells (else its own cell), for the latency distributions."""
    if ch is None:
        return []
    cells = [
        c for c in camp.cells.values() if c.phase == "8" and (c.engine, c.config) == (ch.engine, ch.config)
    ]
    if not cells and ch.cell_id and ch.cell_id in camp.cells:
        cells = [camp.cells[ch.cell_id]]
    return sorted(cells, key=lambda c: (_workload_order(c.workload), c.concurrency))


# ---------------------------------------------------------------- latency distributions


def cdf(values: Sequence[float], max_points: int = 200) -> tuple[list[float], list[float]]:
    """(sorted values, cumulative fraction), thinned to at most max_points steps (the ends kept)."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return [], []
    if n <= max_points:
        idx = list(range(n))
    else:
        idx = sorted({round(k * (n - 1) / (max_points - 1)) for k in range(max_points)})
    return [xs[i] for i in idx], [(i + 1) / n for i in idx]


# ---------------------------------------------------------------- tuning


class FullOrder(_Data):
    """The interleaved full treatment: the order its deploys ran in (arms alternate per trial)."""

    steps: list[str]
    arms: list[str] = Field(description="every arm the tuner deployed, in first-deploy order")


def tune_order(tune: dict[str, Any]) -> FullOrder:
    steps, arms = [], []
    for row in tune.get("order") or []:
        if not isinstance(row, list | tuple) or len(row) < 3:
            continue
        arm, trial, stage = str(row[0]), row[1], str(row[2])
        arms.append(arm)
        if stage == "full":
            steps.append(f"{arm} t{trial}")
    return FullOrder(steps=steps, arms=list(dict.fromkeys(arms)))


def fmt_ci(ci: Sequence[float] | None, digits: int = 0) -> str:
    if not ci or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return "no interval (fewer than 2 trials)"
    return f"[{ci[0]:,.{digits}f}, {ci[1]:,.{digits}f}]"


def fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"
