"""Render a campaign bundle: read it, resolve the model card and the GPU, load the champion's records,
build the sections, write report.html (or print report.pdf from it). The shell around report.html."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from perftune.bench.records import RequestRecord
from perftune.context import now_iso
from perftune.errors import ConfigError, PerftuneError
from perftune.hardware.ceilings import Gpu, gpu
from perftune.models.card import ModelCard
from perftune.report import html as h
from perftune.report import pages as pg
from perftune.report.bundle import Bundle, load_bundle, load_records, resolve_run_dir
from perftune.report.pdf import print_pdf
from perftune.util.atomic import write_text

Format = Literal["html", "pdf"]
FORMATS = ("html", "pdf")


class ReportResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path = Field(description="the written report")
    format: Format
    run_dir: Path
    size_bytes: int = Field(description="size of the written file")
    html_bytes: int = Field(description="size of the HTML document (the PDF's source, for a PDF)")
    plots: int = Field(description="plots drawn, each with data")
    sections: list[str] = Field(description="section ids, in order")
    missing: list[str] = Field(description="what the bundle lacked, in words (each said on its page)")
    render_s: float = Field(description="seconds to build the HTML")
    pdf_s: float | None = Field(None, description="seconds Chromium took to print the PDF")


def model_card_for(b: Bundle) -> tuple[ModelCard | None, str]:
    """The campaign's model card: phase0/model_card.json (what the campaign used), else resolved from
    the intent's model folder or reference. (None, why) when neither works."""
    if b.model_card is not None:
        try:
            return ModelCard.model_validate(b.model_card), "model card from phase0/model_card.json"
        except ValidationError:
            pass
    from perftune.models.resolve import model_card

    i = b.campaign.intent
    refs = [r for r in (i.model_path, i.model) if r and (r != i.model_path or Path(r).is_dir())]
    why = "no model card"
    for ref in refs:
        try:
            return model_card(ref), f"model card resolved from {ref}"
        except PerftuneError as e:
            why = f"no model card for {ref}: {e.message}"
    return None, why


def gpu_for(b: Bundle) -> tuple[Gpu | None, str]:
    try:
        return gpu(b.campaign.intent.gpu), ""
    except ConfigError as e:
        return None, e.message


def champion_records(b: Bundle) -> dict[str, list[RequestRecord] | None]:
    """Counted per-request records of the champion config's cells (None: the bundle has none)."""
    out: dict[str, list[RequestRecord] | None] = {}
    for c in pg.champion_cells(b.campaign, pg.champion_of(b)):
        recs: list[RequestRecord] | None = None
        for folder in c.folders:
            got = load_records(b.run_dir / folder)
            if got is not None:
                recs = (recs or []) + got
        out[c.cell_id] = recs
    return out


# What each --pages choice prints: the champion page is the seeds' deliverable, with its roofline page.
PAGES: dict[str, tuple[str, ...] | None] = {"all": None, "champion": ("champion", "roofline")}


def build_html(b: Bundle, pages: str = "all") -> tuple[str, list[h.Section]]:
    if pages not in PAGES:
        raise ConfigError(f"unknown report pages '{pages}'", hint="--pages all or --pages champion")
    card, card_note = model_card_for(b)
    g, gpu_note = gpu_for(b)
    sections = [
        h.campaign_section(b),
        h.champion_section(b),
        h.pareto_section(b),
        h.roofline_section(b, card, g, card_note if card is None or g is not None else gpu_note),
        h.capacity_section(b),
        h.tuning_section(b),
        h.distributions_section(b, champion_records(b)),
    ]
    keep = PAGES[pages]
    if keep is not None:
        sections = [x for x in sections if x.id in keep]
    return h.document(b, sections, now_iso()), sections


def render_report(
    run_id: str,
    *,
    runs_dir: Path = Path("runs"),
    fmt: str = "html",
    out: Path | None = None,
    timeout_s: float = 120.0,
    campaign: dict[str, Any] | None = None,
    pages: str | None = None,
) -> ReportResult:
    """Write the report of runs_dir/run_id (or of the bundle folder run_id) as HTML or PDF. pages: all
    or champion (the champion and roofline pages); default all for HTML, champion for PDF."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown report format '{fmt}'", hint="--format html or --format pdf")
    run_dir = resolve_run_dir(run_id, runs_dir) if campaign is None else Path(run_id)
    t0 = time.perf_counter()
    b = load_bundle(run_dir, campaign)
    doc, sections = build_html(b, pages or ("champion" if fmt == "pdf" else "all"))
    render_s = time.perf_counter() - t0
    target = out if out is not None else run_dir / f"report.{fmt}"
    if target.is_dir():
        target = target / f"report.{fmt}"
    pdf_s = None
    if fmt == "html":
        write_text(target, doc)
        size = len(doc.encode())
    else:
        with tempfile.TemporaryDirectory(prefix="perftune-report-") as tmp:
            src = Path(tmp) / "report.html"
            src.write_text(doc, encoding="utf-8")
            t1 = time.perf_counter()
            size = print_pdf(src, target, timeout_s=timeout_s)
            pdf_s = time.perf_counter() - t1
    missing = list(dict.fromkeys(m for s in sections for m in s.missing))
    return ReportResult(
        path=target,
        format="pdf" if fmt == "pdf" else "html",
        run_dir=run_dir,
        size_bytes=size,
        html_bytes=len(doc.encode()),
        plots=sum(s.plots for s in sections),
        sections=[s.id for s in sections],
        missing=missing,
        render_s=render_s,
        pdf_s=pdf_s,
    )


def write_html_report(run_dir: Path, campaign: dict[str, Any] | None = None) -> Path:
    """The campaign's hook (end of phase 8.4): run_dir/report.html from the in-memory state."""
    return render_report(str(run_dir), fmt="html", campaign=campaign).path


def roofline_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Every cell with a median TPOT as a decode point on its GPU's roofline (arithmetic intensity,
    attained TFLOP/s and bandwidth), for the lake's `roofline` table: bytes and FLOPs per step are
    analytical (L0, the roofline model at the cell's levers), the step time is measured."""
    try:
        b = load_bundle(run_dir)
    except PerftuneError:  # a bundle the report cannot read has no points to publish
        return []
    card, _why = model_card_for(b)
    g, _err = gpu_for(b)
    if card is None or g is None:
        return []
    camp = b.campaign
    rows = []
    for c in camp.cells.values():
        tp = h.cell_tp(c, camp.facts.tp)
        pt = pg.roofline_point(c, card, g, tp=tp, isl=camp.intent.isl, osl=camp.intent.osl)
        if pt is None:
            continue
        rows.append(
            {
                "campaign_id": camp.run_id,
                "cell_id": pt.cell_id,
                "phase": pt.phase,
                "engine": pt.engine,
                "config": pt.config,
                "concurrency": pt.concurrency,
                "tp": pt.tp,
                "context_tokens": pt.context_tokens,
                "weight_dtype": pt.weight_dtype,
                "kv_dtype": pt.kv_dtype,
                "flops_per_step": pt.flops_per_step,
                "bytes_per_step": pt.bytes_per_step,
                "intensity": pt.intensity,
                "tpot_ms": pt.tpot_ms,
                "attained_tflops": pt.attained_tflops,
                "attained_tb_s": pt.attained_tb_s,
                "hbm_pct": pt.hbm_pct,
                "peak_tflops": pt.peak_tflops,
                "hbm_tb_s": pt.hbm_tb_s,
                "sol_rigor": "L0 analytical",
                "simulated": pt.simulated,
                "tier": pt.tier,
            }
        )
    return rows
