"""`perftune report` end to end: a simulator campaign rendered to HTML and PDF, opened in headless
Chromium with every host name unresolvable (a network request would fail, and none is made); bad input
through the CLI; the committed GPU bundle."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from html import unescape
from pathlib import Path

import pytest

from perftune import api
from perftune.report.pdf import FLAGS

from .conftest import small_campaign

pytestmark = pytest.mark.e2e
CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium on this host")
GPU_BUNDLE = (
    Path(__file__).parents[2]
    / "benchmarks/results/2026-11-23-h100-vllm-0.26.0-tune/campaign/llama-3-1-8b-20261123-223714-a5915b"
)
# random + prefix Pareto, the roofline, one capacity search, random + prefix CDFs of the champion
SIM_PLOTS = 6


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    intent = small_campaign(tmp, capacity=True, capacity_slo="ttft=300,tpot=50,p=99", capacity_max_points=4)
    run_dir, state = api.optimize(
        runs_dir=tmp / "runs", intent=intent, confirm=lambda _: True, lake=tmp / "lake.duckdb"
    )
    assert state.phases["8.4"].status == "green", state.phases["8.4"].reason
    print(f"\ncapacity: {state.facts.capacity['sim/baseline'].statement}")
    return run_dir


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _plots(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<figure class="plot" data-points="(\d+)"><svg', html)]


def test_sim_report_is_self_contained_and_every_plot_has_data(sim_run: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    res = api.report(sim_run.name, runs_dir=sim_run.parent)
    took = time.perf_counter() - t0
    assert res.path == sim_run / "report.html" and res.format == "html"
    html = res.path.read_text()
    assert res.plots == SIM_PLOTS and len(_plots(html)) == SIM_PLOTS and all(n > 0 for n in _plots(html))
    # no script, no remote src/href (links inside the page are anchors), nothing fetched
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href|xlink:href)\s*=\s*["']?(https?:|//)""", html)
    assert "@import" not in html and "url(http" not in html
    for text in (
        "SIMULATED",
        "DRAFT — not a production recommendation",
        "ANALYTICAL (L0",
        "p99 TTFT <= 300 ms",
    ):
        assert text in unescape(html), text
    assert "RECOMMENDED FOR PRODUCTION" not in html
    print(
        f"\nhtml {res.size_bytes / 1e3:.0f} kB, {res.plots} plots, "
        f"render {res.render_s:.2f} s (api {took:.2f} s)"
    )

    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: the browser checks need it")
    url = res.path.resolve().as_uri()
    dom = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "perftune report" in dom.stdout and len(_plots(dom.stdout)) == SIM_PLOTS
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln or "net::ERR" in ln]
    assert console == [], console  # no console error, no failed (i.e. attempted) request
    shot = tmp_path / "shot.png"
    r = _chromium(tmp_path, "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    _assert_not_blank(shot.read_bytes())


def _assert_not_blank(png: bytes) -> None:
    try:
        from PIL import Image
    except ImportError:  # no PIL: a blank 1280x2000 PNG compresses to a few kB
        assert len(png) > 50_000
        return
    im = Image.open(io.BytesIO(png)).convert("RGB")
    colors = im.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "the screenshot is blank"


@needs_chromium
def test_sim_report_prints_to_pdf(sim_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "champion.pdf"
    res = api.report(sim_run.name, runs_dir=sim_run.parent, fmt="pdf", out=out)
    assert res.path == out and out.read_bytes()[:5] == b"%PDF-" and res.pdf_s is not None
    assert res.sections == ["champion", "roofline"]  # the champion page with its roofline page
    subprocess.run(
        ["pdftoppm", "-png", "-r", "50", str(out), str(tmp_path / "page")], check=True, timeout=120
    )
    pages = sorted(tmp_path.glob("page*.png"))
    assert 1 <= len(pages) <= 3  # the champion page and its roofline page (the default PDF)
    text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True, check=True).stdout
    assert "sim / baseline" in text and "DRAFT" in text and "SIMULATED" in text
    print(f"\npdf {res.size_bytes / 1e3:.0f} kB, {len(pages)} pages, print {res.pdf_s:.1f} s")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perftune", "report", *args], capture_output=True, text=True, timeout=120
    )


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    r = _cli("nope", "--runs-dir", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: no campaign 'nope' in") and lines[1].startswith("hint:")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "campaign.json").write_text('{"run_id": 3}')
    r = _cli("broken", "--runs-dir", str(tmp_path))
    assert r.returncode == 2 and "not a perftune campaign" in r.stderr and "Traceback" not in r.stderr
    r = _cli("broken", "--runs-dir", str(tmp_path), "--format", "docx")
    assert r.returncode == 2 and "unknown report format 'docx'" in r.stderr


def test_a_phase_0_bundle_renders_a_page_that_says_what_is_missing(tmp_path: Path) -> None:
    run_dir, _ = api.optimize(
        runs_dir=tmp_path / "runs", intent=small_campaign(tmp_path), until="0", lake=tmp_path / "l.duckdb"
    )
    r = _cli(run_dir.name, "--runs-dir", str(run_dir.parent))
    assert r.returncode == 0, r.stderr
    html = (run_dir / "report.html").read_text()
    assert "<svg" not in html
    assert "no phase-8 cells: phase 8 did not run (pending)." in html
    assert "No champion: phase 8.4 is pending." in html
    assert "missing: no phase-3 or phase-8 cells" in r.stderr


def test_the_committed_gpu_bundle_has_real_points(tmp_path: Path) -> None:
    res = api.report(str(GPU_BUNDLE), out=tmp_path)
    html = res.path.read_text()
    assert res.path == tmp_path / "report.html" and res.plots == 3  # Pareto random + prefix, the roofline
    pareto = html.split('<section id="pareto">')[1].split("</section>")[0]
    roof = html.split('<section id="roofline">')[1].split("</section>")[0]
    assert "SIMULATED" not in pareto and "SIMULATED" not in roof
    assert len(_plots(pareto)) == 2 and len(_plots(roof)) == 1
    assert "engine vllm 0.26.0" in pareto and "vllm/kv-cache-dtype=fp8 (phase 3)" in pareto
    assert "ANALYTICAL, VERDICT" in roof and "TP=1" in roof
    # what the bundle lacks is said on its page
    assert "no phase-8 cells: phase 8 did not run (pending); placing the phase-3 random cells" in roof
    assert "No champion: phase 8.4 is pending." in html
    assert "beats the baseline" in html.split('<section id="tuning">')[1]
