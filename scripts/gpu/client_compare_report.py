#!/usr/bin/env python3
"""Summarize scripts/gpu/client_compare_vllm.sh: per concurrency, each arm's output tok/s and median
TPOT (mean +/- std over rounds), the ratios A/V and B/V with 95% intervals, the server CPU per run, the
engine's own figures and the GPU clocks; a markdown table on stdout and a JSON file beside it.

    python scripts/gpu/client_compare_report.py RESULTS_DIR   # reads results-c*.jsonl

Two intervals per ratio: `welch` (mean of one arm over mean of the other, delta-method on the log,
Welch df: perftune.tune.search.ratio_ci, the tuner's own) and `paired` (the per-round ratio, a
t-interval of its log mean: the arms of one round ran back to back on the same server state).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from scipy import stats

from perftune.tune.search import ratio_ci

ARMS = {"A": "perftune (default accounting)", "B": "perftune (per-chunk usage)", "V": "vllm bench serve"}


def paired_ratio(a: dict[int, float], b: dict[int, float]) -> tuple[float, tuple[float, float]] | None:
    rounds = sorted(set(a) & set(b))
    logs = [math.log(a[r] / b[r]) for r in rounds if a[r] > 0 and b[r] > 0]
    if len(logs) < 2:
        return None
    m, s = statistics.fmean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
    t = float(stats.t.ppf(0.975, len(logs) - 1))
    return math.exp(m), (math.exp(m - t * s), math.exp(m + t * s))


def fmt_ratio(r: tuple[float, tuple[float, float]] | None) -> str:
    if r is None:
        return "n/a"
    v, (lo, hi) = r
    inside = "includes 1.00" if lo <= 1.0 <= hi else "excludes 1.00"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}] ({inside})"


def ms(vals: list[float], digits: int = 1) -> str:
    if not vals:
        return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):,.{digits}f} ± {sd:,.{digits}f}"


def main(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    lines = ["# Client comparison: perftune vs vllm bench serve, interleaved", ""]
    for path in sorted(folder.glob("results-c*.jsonl"), key=lambda p: int(p.stem.split("-c")[1])):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        ok = [r for r in rows if r.get("rc") == 0 and "error" not in r]
        c = rows[0]["concurrency"]
        by: dict[str, dict[str, dict[int, float]]] = {}
        for r in ok:
            for m in ("output_tok_s", "tpot_median_ms", "api_server_cpu_s", "engine_core_cpu_s"):
                by.setdefault(r["arm"], {}).setdefault(m, {})[r["round"]] = float(r[m])
        cell: dict[str, Any] = {"runs": len(rows), "ok": len(ok), "arms": {}, "ratios": {}}
        lines += [f"## Concurrency {c} ({len(ok)} of {len(rows)} runs ok)", ""]
        lines += ["| arm | rounds | output tok/s | median TPOT ms | API server CPU s | engine core CPU s |"]
        lines += ["| --- | --- | --- | --- | --- | --- |"]
        for arm, label in ARMS.items():
            d = by.get(arm, {})
            vals = {
                m: list(d.get(m, {}).values())
                for m in ("output_tok_s", "tpot_median_ms", "api_server_cpu_s", "engine_core_cpu_s")
            }
            cell["arms"][arm] = {m: {"values": v} for m, v in vals.items()}
            lines.append(
                f"| {arm}: {label} | {len(vals['output_tok_s'])} | {ms(vals['output_tok_s'])} | "
                f"{ms(vals['tpot_median_ms'], 2)} | {ms(vals['api_server_cpu_s'], 2)} | "
                f"{ms(vals['engine_core_cpu_s'], 1)} |"
            )
        lines += [
            "",
            "| ratio | output tok/s (welch) | output tok/s (paired by round) | median TPOT (welch) "
            "| median TPOT (paired) |",
        ]
        lines += ["| --- | --- | --- | --- | --- |"]
        for num, den in (("A", "V"), ("B", "V"), ("A", "B")):
            a, b = by.get(num, {}), by.get(den, {})
            rs = {}
            for m in ("output_tok_s", "tpot_median_ms"):
                av, bv = a.get(m, {}), b.get(m, {})
                rs[m] = {
                    "welch": ratio_ci(list(av.values()), list(bv.values())),
                    "paired": paired_ratio(av, bv),
                }
            cell["ratios"][f"{num}/{den}"] = rs
            lines.append(
                f"| {num}/{den} | {fmt_ratio(rs['output_tok_s']['welch'])} | "
                f"{fmt_ratio(rs['output_tok_s']['paired'])} | "
                f"{fmt_ratio(rs['tpot_median_ms']['welch'])} | {fmt_ratio(rs['tpot_median_ms']['paired'])} |"
            )
        # the engine's own figures and the GPU state, per arm
        lines += [
            "",
            "| arm | engine mean ITL ms (its /metrics) | engine generation tokens | SM clock median MHz "
            "| power W | throttle reasons seen |",
        ]
        lines += ["| --- | --- | --- | --- | --- | --- |"]
        for arm in ARMS:
            rr = [r for r in ok if r["arm"] == arm]
            itl = [
                r["engine_metrics"]["itl_mean_ms"]
                for r in rr
                if r.get("engine_metrics", {}).get("itl_mean_ms")
            ]
            gen = [r["engine_metrics"]["generation_tokens"] for r in rr if r.get("engine_metrics")]
            clk = [r["smi"]["sm_clock_median"] for r in rr if r.get("smi", {}).get("sm_clock_median")]
            pw = [r["smi"]["power_mean_w"] for r in rr if r.get("smi", {}).get("power_mean_w")]
            reasons = sorted({x for r in rr for x in r.get("smi", {}).get("reasons", [])})
            cell["arms"].setdefault(arm, {})["engine_itl_ms"] = itl
            cell["arms"][arm]["sm_clock_median"] = clk
            lines.append(
                f"| {arm} | {ms(itl, 2)} | {ms(gen, 0)} | {ms(clk, 0)} | {ms(pw, 0)} | {', '.join(reasons)} |"
            )
        srcs: dict[str, int] = {}
        for r in ok:
            for k, v in (r.get("token_sources") or {}).items():
                srcs[f"{r['arm']}:{k}"] = srcs.get(f"{r['arm']}:{k}", 0) + v
        lines += ["", f"Token sources (requests): {json.dumps(srcs)}", ""]
        cell["token_sources"] = srcs
        out[str(c)] = cell
    print("\n".join(lines))
    (folder / "client_compare.json").write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]))
