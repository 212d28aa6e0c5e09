"""`perftune report`: a campaign bundle as one self-contained HTML file (or a PDF). Parse, call, render."""

from __future__ import annotations

from pathlib import Path

import typer

from perftune import api
from perftune.cli.common import err_console, handle_errors, out_console


@handle_errors
def report(
    run_id: str = typer.Argument(..., help="campaign run id under --runs-dir, or a bundle folder"),
    format: str = typer.Option("html", "--format", help="html (self-contained, opens offline) or pdf"),
    out: Path | None = typer.Option(
        None, "--out", help="file or folder (default: report.<format> in the bundle)"
    ),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="folder holding the campaign run folders"),
    timeout_s: float = typer.Option(120.0, "--timeout-s", help="pdf: seconds Chromium may take to print"),
    pages: str | None = typer.Option(
        None,
        "--pages",
        help="all, or champion (the champion and roofline pages); default: html all, pdf champion",
    ),
) -> None:
    """Render a campaign's evidence bundle: intent and phases, Pareto plots, the roofline, SLO capacity,
    the champion, tuning and latency distributions; every number with its context and tier."""
    res = api.report(run_id, runs_dir=runs_dir, fmt=format, out=out, timeout_s=timeout_s, pages=pages)
    took = f"{res.render_s:.1f} s" + (f" + {res.pdf_s:.1f} s to print" if res.pdf_s is not None else "")
    out_console.print(
        f"report: {res.path} ({res.size_bytes / 1e3:,.0f} kB, {res.plots} plot(s), {took})", highlight=False
    )
    for m in res.missing:
        err_console.print(f"[yellow]missing:[/] {m}", highlight=False, soft_wrap=True)
