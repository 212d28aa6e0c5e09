"""Print an HTML file to PDF with headless Chromium. The only subprocess of the report.

Footguns: Chromium needs its own fresh --user-data-dir (a shared profile locks, and a first-run
profile may try the network); --no-sandbox because CI containers run as root; every background
network feature is off and every host name maps to NOTFOUND, so printing never reaches the network
even if the page asked (it does not: the report is self-contained). A wedged browser is killed at
the timeout and becomes a PerftuneError, never a hang.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from perftune.errors import ConfigError, PerftuneError
from perftune.util.atomic import atomic_path

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--no-pdf-header-footer",
]


def find_chromium(explicit: str | None = None) -> str:
    """The Chromium binary (PERFTUNE_CHROMIUM, else the usual names); a one-line error if none."""
    for cand in ([explicit] if explicit else []) + [os.environ.get("PERFTUNE_CHROMIUM", ""), *CANDIDATES]:
        if not cand:
            continue
        path = cand if os.path.isabs(cand) else shutil.which(cand)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        if explicit:
            break
    raise ConfigError(
        "no headless Chromium found to print the PDF",
        hint="apt-get install chromium (or set PERFTUNE_CHROMIUM), or use --format html",
    )


def chromium_argv(binary: str, profile: Path, *extra: str) -> list[str]:
    return [binary, *FLAGS, f"--user-data-dir={profile}", *extra]


def run_chromium(argv: list[str], *, timeout_s: float, log: Path) -> subprocess.CompletedProcess[bytes]:
    """Run Chromium in its own process group; killed as a tree at the timeout."""
    with open(log, "wb") as fh:
        p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise PerftuneError(
                f"chromium did not finish printing within {timeout_s:g} s",
                hint="raise --timeout-s, or open the HTML report and print it from a browser",
                log_path=str(log),
            ) from e
    return subprocess.CompletedProcess(argv, rc)


def print_pdf(html_file: Path, out: Path, *, timeout_s: float = 120.0, chromium: str | None = None) -> int:
    """Print `html_file` to `out` (atomically); returns the PDF's size in bytes."""
    binary = find_chromium(chromium)
    with tempfile.TemporaryDirectory(prefix="perftune-chromium-") as tmp:
        t = Path(tmp)
        log = t / "chromium.log"
        with atomic_path(out) as pdf:
            pdf.unlink(missing_ok=True)
            argv = chromium_argv(binary, t / "profile", f"--print-to-pdf={pdf}", html_file.resolve().as_uri())
            res = run_chromium(argv, timeout_s=timeout_s, log=log)
            ok = pdf.is_file() and pdf.read_bytes()[:5] == b"%PDF-"
            if res.returncode != 0 or not ok:
                kept = out.with_name(out.name + ".chromium.log")
                shutil.copyfile(log, kept)
                raise PerftuneError(
                    f"chromium could not print {html_file.name} to PDF (exit {res.returncode}"
                    + ("" if ok else ", no PDF written")
                    + ")",
                    hint="see the log; the HTML report is complete and prints from any browser",
                    log_path=str(kept),
                )
        return out.stat().st_size
