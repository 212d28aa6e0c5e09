"""L4: Nsight Compute on the top kernels L2 found: the which-kernel verdict.

ncu cannot attach to a running server: the engine is launched under it (`prefix` wraps the launch
argv), with a kernel-name filter built from L2's top kernels, a launch skip past warm-up and start-up
kernels and a small launch count, collecting only the Speed Of Light section (achieved DRAM and SM
throughput as % of peak). The report is exported with `ncu --import R --csv --page raw` and parsed
here. Pure except `export_csv`.

Footguns: the engine runs with `--target-processes all` (vLLM's engine core is a child process);
every matched launch is replayed several times, so the window must stay small; ncu needs access to
the GPU's performance counters (root, or `NVreg_RestrictProfilingToAdminUsers=0`), else ERR_NVGPUCTRPERM.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DRAM = "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"
DRAM_ALT = "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed"  # SpeedOfLight's "DRAM Throughput"
SM = "sm__throughput.avg.pct_of_peak_sustained_elapsed"
DURATION = "gpu__time_duration.sum"


def binary() -> str | None:
    found = [
        *sorted(Path("/usr/local").glob("cuda*/bin/ncu")),
        *sorted(Path("/opt/nvidia").glob("nsight-compute/*/ncu")),
    ]
    return shutil.which("ncu") or next((str(p) for p in found if p.exists()), None)


def name_filter(names: Sequence[str], k: int = 3) -> str:
    """An ncu `regex:` filter matching the first `k` distinct kernel base names (demangled names are
    cut at the first parenthesis or template bracket: ncu matches the base name)."""
    bases: list[str] = []
    for n in names:
        # "void at::native::(anonymous namespace)::kern<4, float>(float*, ...)": the namespace's
        # parentheses are not the parameter list
        text = n.strip().replace("(anonymous namespace)::", "")
        head = re.split(r"[(<]", text, maxsplit=1)[0].split()
        base = head[-1].split("::")[-1] if head else ""
        if base and base not in bases:
            bases.append(base)
        if len(bases) >= k:
            break
    return "regex:" + "|".join(re.escape(b) for b in bases)


def prefix(exe: str, report: Path, kernel_filter: str, *, skip: int, count: int) -> list[str]:
    return [
        exe,
        "--target-processes",
        "all",
        "--kernel-name-base",
        "function",
        "--kernel-name",
        kernel_filter,
        "--launch-skip",
        str(skip),
        "--launch-count",
        str(count),
        "--section",
        "SpeedOfLight",
        "--export",
        str(report),
        "--force-overwrite",
    ]


def export_csv(exe: str, report: Path) -> str:
    r = subprocess.run(
        [exe, "--import", str(report), "--csv", "--page", "raw"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if r.returncode != 0:
        raise RuntimeError((r.stderr or r.stdout).strip()[-300:] or f"ncu --import exited {r.returncode}")
    return r.stdout


def _num(v: str) -> float | None:
    try:
        return float(v.replace(",", ""))
    except ValueError:
        return None


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def parse_raw_csv(text: str) -> dict[str, Any]:
    """Per kernel name: launches profiled, mean achieved DRAM and SM throughput (% of peak), mean
    duration. `--page raw` has one row per profiled launch and a units row under the header. Pure."""
    rows = list(csv.reader(io.StringIO(text)))
    start = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
    if start is None:
        return {"kernels": []}
    head = rows[start]
    col = {h: i for i, h in enumerate(head)}
    # dram__throughput where the section has it; else the Speed Of Light "Memory Throughput" (the
    # busiest memory unit, DRAM included): which one is named in the figures.
    mem_metric = DRAM_ALT if DRAM_ALT in col else DRAM
    dram_col = col.get(mem_metric)
    units = rows[start + 1] if len(rows) > start + 1 else []
    dur_c = col.get(DURATION)
    unit = units[dur_c] if dur_c is not None and len(units) > dur_c else "nsecond"
    to_us = {
        "ns": 1e-3,
        "nsecond": 1e-3,
        "us": 1.0,
        "usecond": 1.0,
        "ms": 1e3,
        "msecond": 1e3,
        "s": 1e6,
        "second": 1e6,
    }.get(unit.strip(), 1e-3)
    out: dict[str, dict[str, list[float]]] = {}
    for r in rows[start + 1 :]:
        if len(r) != len(head) or not r[col["Kernel Name"]] or _num(r[col.get("ID", 0)]) is None:
            continue  # the units row, or a short line
        k = out.setdefault(r[col["Kernel Name"]], {"dram": [], "sm": [], "dur": []})
        for key, c in (("dram", dram_col), ("sm", col.get(SM)), ("dur", col.get(DURATION))):
            x = _num(r[c]) if c is not None else None
            if x is not None:
                k[key].append(x)
    kernels: list[dict[str, Any]] = []
    for name, vals in out.items():
        dur = _mean(vals["dur"])
        kernels.append(
            {
                "name": name[:160],
                "launches": max(len(vals["dram"]), len(vals["sm"]), len(vals["dur"])),
                "memory_pct_of_peak": _mean(vals["dram"]),
                "sm_pct_of_peak": _mean(vals["sm"]),
                "duration_us": None if dur is None else dur * to_us,
            }
        )
    kernels.sort(key=lambda k: -float(k["duration_us"] or 0.0))
    return {"kernels": kernels, "memory_metric": mem_metric, "sm_metric": SM}
