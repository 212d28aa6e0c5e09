"""The document: sections say what is missing instead of drawing empty plots; the PDF shell's errors."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from perftune.errors import ConfigError, PerftuneError
from perftune.report import pdf
from perftune.report.bundle import load_bundle
from perftune.report.render import build_html, render_report

from . import _data


def _sections(doc: dict[str, object], run_dir: Path) -> tuple[str, dict[str, object]]:
    html, sections = build_html(load_bundle(run_dir, doc))  # type: ignore[arg-type]
    return html, {s.id: s for s in sections}


def test_an_empty_bundle_draws_nothing_and_says_what_is_missing(tmp_path: Path) -> None:
    html, by = _sections(_data.doc(), tmp_path)
    assert "<svg" not in html and 'class="plot"' not in html
    for text in (
        "no phase-3 or phase-8 cells: phase 3 did not run (pending); phase 8 did not run (pending).",
        "no phase-8 cells: phase 8 did not run (pending).",
        "No champion: phase 8.4 is pending.",
        "no SLO capacity results: phase 8.3 did not run (pending).",
        "no tuning results (phase3/tune.json): phase 3 did not run (pending).",
    ):
        assert text in html, text
    assert all(s.plots == 0 for s in by.values())  # type: ignore[attr-defined]


def test_cells_without_their_files_still_plot_and_name_the_missing_files(tmp_path: Path) -> None:
    cells = [_data.cell("8", c=16), _data.cell("8", c=64, tok_s=5000, tpot=14.0)]
    doc = _data.doc(
        cells, status={"8": "green", "8.4": "green"}, champion=_data.champion("p8.vllm.baseline.random.c64")
    )
    html, by = _sections(doc, tmp_path)
    assert by["pareto"].plots == 1 and by["roofline"].plots == 1  # type: ignore[attr-defined]
    assert by["distributions"].plots == 0  # type: ignore[attr-defined]
    assert "no records.jsonl in phase8/cells/p8.vllm.baseline.random.c16" in html
    assert "no p99 TTFT for 2 cell(s)" in html
    assert "phase8.4/champion_select.json (phase 8.4 is green)" in html
    # every plot has data points
    assert all(int(n) > 0 for n in re.findall(r'data-points="(\d+)"', html))
    # the champion page: DRAFT with its gate, the flags a user copies, the deploy command
    assert "DRAFT — not a production recommendation" in html and "RECOMMENDED FOR PRODUCTION" not in html
    assert "--kv-cache-dtype fp8" in html
    assert "perftune deploy --engine vllm --model llama-3.1-8b --lever kv-cache-dtype=fp8" in html
    # self-contained: no script, no remote reference
    assert "<script" not in html and not re.search(r'(src|href)="https?:', html)


def test_unknown_format_and_run_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown report format 'svg'"):
        render_report("x", runs_dir=tmp_path, fmt="svg")
    with pytest.raises(ConfigError, match="no campaign 'x'"):
        render_report("x", runs_dir=tmp_path)


def test_missing_chromium_is_one_line_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdf, "CANDIDATES", ("/nonexistent/chromium",))
    monkeypatch.delenv("PERFTUNE_CHROMIUM", raising=False)
    with pytest.raises(ConfigError) as e:
        pdf.find_chromium()
    assert "\n" not in e.value.message and "apt-get install chromium" in e.value.hint


def _fake(tmp_path: Path, body: str) -> str:
    f = tmp_path / "fake-chromium"
    f.write_text("#!/bin/sh\n" + body + "\n")
    f.chmod(f.stat().st_mode | stat.S_IXUSR)
    return str(f)


def test_a_wedged_or_failing_chromium_becomes_a_perftune_error(tmp_path: Path) -> None:
    src = tmp_path / "r.html"
    src.write_text("<html></html>")
    out = tmp_path / "r.pdf"
    with pytest.raises(PerftuneError, match=r"did not finish printing within 0\.5 s"):
        pdf.print_pdf(src, out, timeout_s=0.5, chromium=_fake(tmp_path, "sleep 30"))
    with pytest.raises(PerftuneError, match=r"could not print r.html to PDF \(exit 3, no PDF written\)") as e:
        pdf.print_pdf(src, out, timeout_s=10, chromium=_fake(tmp_path, "echo boom; exit 3"))
    assert e.value.log_path and "boom" in Path(e.value.log_path).read_text()
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
