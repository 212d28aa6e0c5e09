"""The report's plots: matplotlib figures rendered to inline SVG strings.

Why SVG from matplotlib: the report is one HTML file that must open from file:// with no network, so
no JS chart library (no CDN, nothing to bundle) and no raster images (base64 PNGs are larger and blur
when zoomed or printed). SVG text is kept as text (svg.fonttype none): smaller, selectable, printable.
Figures are built with the object API (`Figure`, never pyplot): no global state, no GUI backend.
Every function takes data that is already there; a caller draws nothing without data.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from perftune.bench.capacity import CapacityResult
from perftune.report.pages import HBM_TARGET, ParetoPoint, RooflinePoint, cdf, frontier

RC: dict[Any, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "perftune-report",  # stable ids: the same bundle renders to the same bytes
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial"],
    "font.size": 8.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
# tab10, the matplotlib default cycle
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)

_ID = re.compile(r'id="([^"]+)"')


def to_svg(fig: Figure, prefix: str) -> str:
    """The figure as an <svg> element, its ids prefixed so several figures share one HTML document."""
    buf = io.StringIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    for ident in set(_ID.findall(text)):
        new = f"{prefix}-{ident}"
        text = text.replace(f'id="{ident}"', f'id="{new}"').replace(f"#{ident})", f"#{new})")
        text = text.replace(f'href="#{ident}"', f'href="#{new}"')
    return text


def _fig(w: float, h: float, cols: int = 1) -> tuple[Figure, list[Axes]]:
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(w, h), layout="constrained")
        axes = [fig.add_subplot(1, cols, k + 1) for k in range(cols)]
    return fig, axes


def _colors(series: Sequence[str]) -> dict[str, str]:
    return {s: PALETTE[k % len(PALETTE)] for k, s in enumerate(dict.fromkeys(series))}


def _err(v: float | None, ci: tuple[float, float] | None) -> list[list[float]] | None:
    if v is None or ci is None:
        return None
    return [[max(0.0, v - ci[0])], [max(0.0, ci[1] - v)]]


def _slo_vline(ax: Axes, x: float, label: str, data_max: float) -> None:
    """The SLO as a vertical line; far beyond the data (the axis would squash every point to one edge)
    it is named at the right edge with an arrow instead."""
    right = data_max * 1.25
    if x <= 2.5 * right:
        ax.axvline(x, color="crimson", lw=1, ls="-.", label=label)
        ax.set_xlim(0, max(right, x * 1.08))
        return
    ax.set_xlim(0, right)
    ax.annotate(
        f"{label} →",
        xy=(1.0, 1.01),
        xycoords="axes fraction",
        ha="right",
        va="bottom",
        fontsize=7,
        color="crimson",
    )
    ax.plot([], [], color="crimson", lw=1, ls="-.", label=f"{label} (off scale, right)")


def pareto_svg(
    points: Sequence[ParetoPoint], *, slo_ttft_ms: float, slo_tpot_ms: float, prefix: str
) -> tuple[str, int] | None:
    """Two panels: output tok/s per GPU vs median TPOT, and vs TTFT (mean filled, p99 hollow), with
    95% interval bars, the Pareto frontier, the SLO lines and the champion starred. None: no points."""
    pts = [p for p in points if p.tpot_ms is not None or p.ttft_mean_ms is not None]
    if not pts:
        return None
    fig, (a1, a2) = _fig(9.6, 3.8, cols=2)
    colors = _colors([p.series for p in pts])
    n = 0
    for p in pts:
        col = colors[p.series]
        lw = 1.6 if p.champion_config else 0.6
        if p.tpot_ms is not None:
            a1.errorbar(
                p.tpot_ms,
                p.tok_s_gpu,
                xerr=_err(p.tpot_ms, p.tpot_ci95),
                yerr=_err(p.tok_s_gpu, p.tok_s_gpu_ci95),
                fmt="o",
                color=col,
                ms=5,
                mec="black" if p.champion_config else col,
                mew=lw,
                elinewidth=0.8,
                capsize=2,
            )
            a1.annotate(
                f"c={p.concurrency}",
                (p.tpot_ms, p.tok_s_gpu),
                fontsize=6.5,
                xytext=(3, 3),
                textcoords="offset points",
            )
            n += 1
        if p.ttft_mean_ms is not None:
            a2.errorbar(
                p.ttft_mean_ms,
                p.tok_s_gpu,
                yerr=_err(p.tok_s_gpu, p.tok_s_gpu_ci95),
                fmt="o",
                color=col,
                ms=5,
                mec="black" if p.champion_config else col,
                mew=lw,
                elinewidth=0.8,
                capsize=2,
            )
            a2.annotate(
                f"c={p.concurrency}",
                (p.ttft_mean_ms, p.tok_s_gpu),
                fontsize=6.5,
                xytext=(3, 3),
                textcoords="offset points",
            )
            n += 1
            if p.ttft_p99_ms is not None:
                a2.plot([p.ttft_mean_ms, p.ttft_p99_ms], [p.tok_s_gpu] * 2, color=col, lw=0.6, ls=":")
                a2.plot(p.ttft_p99_ms, p.tok_s_gpu, "o", mfc="none", color=col, ms=5, mew=0.9)
        if p.champion:
            for ax, x in ((a1, p.tpot_ms), (a2, p.ttft_mean_ms)):
                if x is not None:
                    ax.plot(x, p.tok_s_gpu, "*", ms=15, mfc="gold", mec="black", mew=0.8, zorder=5)
    for ax, kind in ((a1, "tpot"), (a2, "ttft")):
        fr = frontier(pts, "tpot" if kind == "tpot" else "ttft")
        if len(fr) > 1:
            xs = [x for p in fr if (x := p.tpot_ms if kind == "tpot" else p.ttft_mean_ms) is not None]
            ax.step(
                xs,
                [p.tok_s_gpu for p in fr],
                where="post",
                color="0.35",
                lw=0.9,
                ls="--",
                label="Pareto frontier",
            )
    tpots = [x for p in pts for x in (p.tpot_ms, (p.tpot_ci95 or (None, None))[1]) if x is not None]
    ttfts = [x for p in pts for x in (p.ttft_mean_ms, p.ttft_p99_ms) if x is not None]
    _slo_vline(a1, slo_tpot_ms, f"SLO median TPOT {slo_tpot_ms:g} ms", max(tpots, default=slo_tpot_ms))
    _slo_vline(a2, slo_ttft_ms, f"SLO mean TTFT {slo_ttft_ms:g} ms", max(ttfts, default=slo_ttft_ms))
    a1.set_xlabel("median TPOT, ms (95% interval)")
    a2.set_xlabel("TTFT, ms (filled: mean; hollow: p99)")
    for ax in (a1, a2):
        ax.set_ylabel("output tok/s per GPU (95% interval)")
        ax.set_ylim(bottom=0)
    handles = [a1.plot([], [], "o", color=c, label=s)[0] for s, c in colors.items()]
    if any(p.champion for p in pts):
        handles.append(a1.plot([], [], "*", ms=11, mfc="gold", mec="black", label="champion")[0])
    a1.legend(handles=handles, fontsize=6.5, loc="lower right")
    a2.legend(fontsize=6.5, loc="lower right")
    return to_svg(fig, prefix), n


def roofline_svg(points: Sequence[RooflinePoint], *, gpu_name: str, prefix: str) -> tuple[str, int] | None:
    """Log-log roofline: the HBM slope and the compute roof at each point's weight dtype, the 75% HBM
    line, and each decode cell at (FLOP/byte, attained TFLOP/s). None: no points."""
    if not points:
        return None
    fig, (ax,) = _fig(7.2, 4.2)
    hbm = points[0].hbm_tb_s
    xs = [p.intensity for p in points]
    lo, hi = min(xs) / 4, max(max(xs) * 4, max(p.peak_tflops for p in points) / hbm * 4)
    grid = [lo * (hi / lo) ** (k / 200) for k in range(201)]
    for peak in sorted({p.peak_tflops for p in points}):
        dt = next(p.weight_dtype for p in points if p.peak_tflops == peak)
        ax.plot(
            grid,
            [min(peak, x * hbm) for x in grid],
            color="black",
            lw=1.3,
            label=f"roof: {hbm:g} TB/s HBM, {peak:g} TFLOP/s {dt}",
        )
    ax.plot(
        grid,
        [x * hbm * HBM_TARGET for x in grid],
        color="0.5",
        lw=0.8,
        ls="--",
        label=f"{HBM_TARGET:.0%} of HBM bandwidth",
    )
    series = [f"{p.engine}/{p.config}" for p in points]
    colors = _colors(series)
    for p, s in zip(points, series, strict=True):
        ax.plot(
            p.intensity,
            p.attained_tflops,
            "s" if p.kind == "prefill" else "o",
            color=colors[s],
            ms=6,
            mfc="none" if p.simulated else colors[s],
        )
        ax.annotate(
            f"c={p.concurrency}",
            (p.intensity, p.attained_tflops),
            fontsize=6.5,
            xytext=(3, -9),
            textcoords="offset points",
        )
    for s, c in colors.items():
        ax.plot([], [], "o", color=c, label=s)
    if any(p.kind == "prefill" for p in points):
        ax.plot([], [], "s", color="0.4", mfc="none", label="prefill (mean TTFT: a lower bound)")
        ax.plot([], [], "o", color="0.4", mfc="none", label="decode (median TPOT)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity, FLOP/byte (per GPU: a decode step, one prompt's prefill)")
    ax.set_ylabel("attained TFLOP/s per GPU")
    sim = "; hollow = SIMULATED" if any(p.simulated for p in points) else ""
    ax.set_title(f"{gpu_name}: prefill and decode on the roofline (ANALYTICAL L0{sim})", fontsize=8.5)
    ax.legend(fontsize=6.5, loc="lower right")
    return to_svg(fig, prefix), len(points)


def capacity_svg(res: CapacityResult, *, prefix: str) -> tuple[str, int] | None:
    """p99 TTFT and p99 TPOT vs load with the SLO limits; passing points filled, failing hollow."""
    pts = sorted(res.points, key=lambda p: p.load)
    if not pts:
        return None
    fig, axes = _fig(8.4, 2.9, cols=2)
    pct = res.slo.percentile
    n = 0
    for ax, metric, limit in ((axes[0], "ttft_ms", res.slo.ttft_ms), (axes[1], "tpot_ms", res.slo.tpot_ms)):
        for p in pts:
            d = getattr(p, metric)
            if d.mean is None:
                continue
            err = _err(d.mean, d.ci95)
            ax.errorbar(
                p.load,
                d.mean,
                yerr=err,
                fmt="o",
                ms=5,
                color="tab:green" if p.passed else "tab:red",
                mfc=None if p.passed else "none",
                capsize=2,
                elinewidth=0.8,
            )
            n += 1
        have = [(p.load, getattr(p, metric).mean) for p in pts if getattr(p, metric).mean is not None]
        if have:
            ax.plot([x for x, _ in have], [y for _, y in have], color="0.6", lw=0.7, zorder=0)
        ax.axhline(
            limit, color="crimson", lw=1, ls="-.", label=f"SLO p{pct} {metric[:4].upper()} {limit:g} ms"
        )
        if res.capacity is not None:
            ax.axvline(res.capacity, color="tab:blue", lw=0.8, ls=":", label=f"capacity {res.capacity:g}")
        ax.set_xlabel("concurrency" if res.mode == "closed" else "requests/s (Poisson)")
        ax.set_ylabel(f"p{pct} {metric[:4].upper()}, ms (95% interval)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=6.5, loc="upper left")
    return to_svg(fig, prefix), n


def cdf_svg(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]], *, prefix: str
) -> tuple[str, int] | None:
    """TTFT and TPOT CDFs, one line per (label, ttfts, tpots). None: no samples at all."""
    if not any(t or q for _, t, q in series):
        return None
    fig, (a1, a2) = _fig(8.4, 3.0, cols=2)
    colors = _colors([s for s, _, _ in series])
    n = 0
    for label, ttft, tpot in series:
        for ax, vals in ((a1, ttft), (a2, tpot)):
            xs, ys = cdf(vals)
            if xs:
                ax.step(xs, ys, where="post", color=colors[label], lw=1.1, label=f"{label} (n={len(vals)})")
                n += len(vals)
    a1.set_xlabel("TTFT, ms")
    a2.set_xlabel("TPOT, ms (per request)")
    for ax in (a1, a2):
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.axhline(0.99, color="0.6", lw=0.6, ls=":")
        ax.legend(fontsize=6.5, loc="lower right")
    return to_svg(fig, prefix), n
