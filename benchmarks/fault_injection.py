"""Fault injection: kill `perftune optimize` at seeded random moments, resume, count what survives.

A small simulator campaign (random + prefix at c=4 and 8, 3 trials) is started; at a seeded random
time it gets SIGKILL or SIGTERM (chosen by the seed), across every phase: deploy waits, benches,
publishes, ledger and registry writes. Then `optimize --resume` runs, and may be killed again, until
the campaign completes or the kills run out; a last resume finishes it. Every run folder is then
checked:

- lost: a cell that was finished (in campaign.json with its summary.json) before a kill and is missing
  or without evidence at the end;
- duplicated: lake rows of one cell or campaign more than once;
- orphans: a server process group the campaign ever recorded as live that is still alive at the end;
- half-written: `*.partial` cell folders or `.*.tmp` files left in the run folder;
- re-run: finished cells measured again after a resume (should be 0; counted, not an error).

Ends with: faults: N kills, L lost, D duplicated, O orphans, R re-run cells (plus half-written files).
`python benchmarks/fault_injection.py --kills 30` is the long run; CI runs a short one
(tests/e2e/test_fault_injection.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from perftune.targets.local import group_alive

CAMPAIGN = ["--engines", "sim", "--workloads", "random,prefix", "--ladder", "4,8", "--isl", "256"]
CAMPAIGN += ["--osl", "32", "--trials", "3", "--yes"]


def _state(run_dir: Path) -> dict[str, object] | None:
    try:
        return dict(json.loads((run_dir / "campaign.json").read_text()))
    except (OSError, ValueError):
        return None


def _finished(run_dir: Path, st: dict[str, object]) -> dict[str, int]:
    """cell id -> mtime of its summary.json, for cells whose evidence is on disk."""
    out = {}
    for cid, c in dict(st.get("cells") or {}).items():  # type: ignore[call-overload]
        f = run_dir / c["path"] / "summary.json"
        if f.exists():
            out[cid] = f.stat().st_mtime_ns
    return out


def _watch(proc: subprocess.Popen[bytes], runs: Path, until: float, seen: set[int]) -> None:
    """Poll campaign.json for live server groups until `until` or the process exits."""
    while time.monotonic() < until and proc.poll() is None:
        for f in runs.glob("*/campaign.json"):
            st = _state(f.parent)
            for d in (st or {}).get("live") or []:  # type: ignore[attr-defined]
                seen.add(int(d["pgid"]))
        time.sleep(0.05)


def one_campaign(
    work: Path, rng: random.Random, kills: int, span_s: float, extra: list[str] | None = None
) -> dict[str, int]:
    runs, lake = work / "runs", work / "lake.duckdb"
    base = [sys.executable, "-m", "perftune", "optimize"]
    files = ["--runs-dir", str(runs), "--lake", str(lake), "--registry", str(work / "kg.yaml")]
    files += ["--findings", str(work / "findings.yaml")]
    seen: set[int] = set()
    done_before: dict[str, int] = {}
    n_kills = rerun = 0
    run_dir: Path | None = None
    for attempt in range(kills + 1):
        if run_dir is None:
            cmd = [*base, "llama-3.1-8b", *CAMPAIGN, *(extra or []), *files]
        else:
            cmd = [*base, "--resume", run_dir.name, "--yes", *files]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        last = attempt == kills
        _watch(proc, runs, time.monotonic() + (600 if last else rng.uniform(0.3, span_s)), seen)
        if run_dir is None:
            found = sorted(runs.glob("*/campaign.json"))
            run_dir = found[0].parent if found else None
        if proc.poll() is None and not last:
            sig = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGTERM])
            proc.send_signal(sig)
            n_kills += 1
        proc.wait(timeout=600)
        if run_dir is None:
            continue  # killed before phase 0 wrote anything: the next attempt starts afresh
        st = _state(run_dir)
        if st is None:
            continue
        now = _finished(run_dir, st)
        rerun += sum(1 for cid, m in done_before.items() if cid in now and now[cid] != m)
        done_before.update({cid: m for cid, m in now.items() if cid not in done_before})
        phases = dict(st["phases"])  # type: ignore[call-overload]
        if all(p["status"] in ("green", "skipped", "not-available") for p in phases.values()):
            break
    assert run_dir is not None, "no campaign folder was ever written"
    final = _state(run_dir) or {}
    end = _finished(run_dir, final)
    lost = sum(1 for cid in done_before if cid not in end)
    from perftune.lake.db import query

    dup = 0
    if lake.exists():
        rows = query(lake, "select cell_id, count(*) as n from cells group by cell_id having n > 1")
        camps = query(lake, "select campaign_id, count(*) as n from campaigns group by 1 having n > 1")
        dup = len(rows) + len(camps)
    orphans = sum(1 for p in seen if group_alive(p))
    half = len(list(run_dir.rglob("*.partial"))) + len(list(run_dir.rglob(".*.tmp")))
    phases = dict(final.get("phases") or {})  # type: ignore[call-overload]
    complete = all(p["status"] in ("green", "skipped", "not-available") for p in phases.values())
    return {
        "kills": n_kills,
        "lost": lost,
        "duplicated": dup,
        "orphans": orphans,
        "half_written": half,
        "rerun": rerun,
        "complete": int(complete),
        "cells": len(end),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=30, help="kills in all")
    ap.add_argument("--per-campaign", type=int, default=5, help="kills before a campaign is let finish")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--span-s", type=float, default=20.0, help="kill times are uniform in [0.3, this]")
    ap.add_argument("--json", action="store_true", help="print the totals as one JSON line too")
    ap.add_argument(
        "--tune-budget-gpu-min",
        type=float,
        default=None,
        help="also run phase 3 (optimize --tune) with this budget, so kills land inside the tuner too",
    )
    a = ap.parse_args()
    rng = random.Random(a.seed)
    total = {"kills": 0, "lost": 0, "duplicated": 0, "orphans": 0, "half_written": 0, "rerun": 0}
    total |= {"campaigns": 0, "complete": 0, "cells": 0}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="perftune-faults-") as tmp:
        k = 0
        while total["kills"] < a.kills:
            work = Path(tmp) / f"c{k}"
            work.mkdir()
            env_home = work / "home"  # per-user files (lake, registries) stay inside the sandbox
            os.environ["XDG_DATA_HOME"] = str(env_home / "data")
            os.environ["XDG_CONFIG_HOME"] = str(env_home / "config")
            extra = (
                ["--tune", "--budget-gpu-min", str(a.tune_budget_gpu_min)] if a.tune_budget_gpu_min else []
            )
            r = one_campaign(work, rng, min(a.per_campaign, a.kills - total["kills"]), a.span_s, extra)
            for key, v in r.items():
                total[key] += v
            total["campaigns"] += 1
            print(f"campaign {k}: {r}", flush=True)
            k += 1
    print(
        f"wall: {time.monotonic() - t0:.0f} s, {total['campaigns']} campaigns, {total['complete']} completed"
    )
    print(
        f"faults: {total['kills']} kills, {total['lost']} lost, {total['duplicated']} duplicated, "
        f"{total['orphans']} orphans, {total['rerun']} re-run cells, "
        f"{total['half_written']} half-written files"
    )
    if a.json:
        print(json.dumps(total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
