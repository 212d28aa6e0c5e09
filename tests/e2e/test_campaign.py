"""`perftune optimize` end to end on the simulator: phases, gates, resume after SIGKILL, the lake."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perftune import api
from perftune.campaign.publish import publish
from perftune.campaign.state import CampaignState
from perftune.context import MeasurementContext
from perftune.lake.db import TABLES, query
from perftune.targets.local import group_alive

from .conftest import small_campaign

pytestmark = pytest.mark.e2e
BUILT = ("0", "1", "2", "2.5", "8", "8.3", "8.4", "8.5")


def _dump(lake: Path) -> dict[str, list[dict[str, object]]]:
    return {t: query(lake, f"SELECT * FROM {t} ORDER BY ALL") for t in TABLES}


def test_sim_campaign_completes_with_a_draft_champion_and_idempotent_lake(tmp_path: Path) -> None:
    lake = tmp_path / "lake.duckdb"
    # phase 8.3, open loop, with an SLO that binds a little above the suite's own rate (the simulated
    # 8B on an H100 at 256/32: p99 TPOT ~6.8 ms at 15 req/s, ~7.3 ms at 31 req/s), 5 points at most
    intent = small_campaign(
        tmp_path,
        capacity=True,
        capacity_slo="ttft=300,tpot=7,p=99",
        capacity_max_points=5,
        capacity_duration_s=3,
    )
    run_dir, state = api.optimize(
        runs_dir=tmp_path / "runs", intent=intent, confirm=lambda _: True, lake=lake
    )
    status = {k: p.status for k, p in state.phases.items()}
    assert all(status[p] == "green" for p in BUILT), status
    assert status["3"] == "skipped" and "opt-in" in state.phases["3"].reason
    # no quantization target: phases 4 and 5 skip (and say how to ask); no spec method: phases 6 and 7
    # skip; every phase is built
    assert status["4"] == status["5"] == "skipped" and "--quant-target" in state.phases["4"].reason
    assert status["6"] == "skipped" and "no draft to train" in state.phases["6"].reason
    assert status["7"] == "skipped" and "--spec-method" in state.phases["7"].reason
    assert "not-available" not in status.values()
    champion = (run_dir / "CHAMPION.md").read_text()
    assert "DRAFT" in champion and "RECOMMENDED FOR PRODUCTION" not in champion
    failing = champion.split("Failing gates:")[1].split("Champion:")[0]
    assert "accuracy (phase 5): phase 5 is skipped" in failing
    assert "measured on real engines:" in failing and "passed" not in failing
    # byte-grounding: a simulated engine has no DRAM counters, so the gate fails and says why
    assert "byte-grounded %SoL (DRAM-bandwidth counters): " in failing and "analytical only" in failing
    # phases 2 and 2.5 ran on the simulator's own step breakdown, labelled SIMULATED, and phase 8.5's
    # next lever comes from that evidence, citing it
    ledger = (run_dir / "findings" / "ledger.md").read_text()
    assert "step_breakdown.json" in ledger and "SIMULATED" in ledger
    summary = (run_dir / "summary.md").read_text()
    assert "SIMULATED" in summary and "not available in this version" not in summary
    # phase 8 says which configs ran: no tuned config ran here (phase 3 is opt-in)
    assert "config(s): baseline (no tuned config ran" in state.phases["8"].reason
    # every phase 8 cell is in summary.md, one row per workload x concurrency (not only the best one)
    table = summary.split("## Phase 8: the workload suite")[1]
    rows8 = [ln for ln in table.splitlines() if ln.startswith(("| random |", "| prefix |"))]
    assert len(rows8) == 2 * 2 and all("SIMULATED" in r for r in rows8)
    assert (run_dir / "SOURCE.md").exists() and (run_dir / "campaign.json").exists()
    # every cell has its full evidence and context: what the deploy knew is in the context, never empty
    for c in state.cells.values():
        assert (run_dir / c.path / "summary.json").exists() and c.context["stack"]["simulated"]
        mc = MeasurementContext.model_validate(c.context)
        assert mc.parallelism == {"tp": state.facts.tp} and mc.levers == c.levers
        assert mc.quantization and mc.kv_cache_dtype and mc.model_path == "llama-3.1-8b"
    # the SLO capacity search: bracket then bisection, every point in the bundle, the champion judged there
    cap = state.facts.capacity["sim/baseline"]
    doc = json.loads((run_dir / cap.path / "capacity.json").read_text())
    # open loop (Poisson), bracketed from the config's own phase-8 request rate (1/2, 1, 2, 4, 8 x)
    loads = [p["load"] for p in doc["points"]]
    best = max(c.output_tok_s for c in state.cells.values() if c.phase == "8" and c.workload == "random")
    assert cap.mode == "open" and doc["mode"] == "open" and 2 <= len(loads) <= 5 and cap.points == len(loads)
    assert abs(loads[0] - best / 32 / 2) <= 0.01 * loads[0]  # osl 32: tok/s / 32 = req/s
    passed = {p["load"]: p["passed"] for p in doc["points"]}
    assert all((run_dir / cap.path / p["folder"] / "summary.json").exists() for p in doc["points"])
    assert "p99 TTFT <= 300 ms and p99 TPOT <= 7 ms" in cap.statement and "req/s" in cap.statement
    lo, hi = cap.interval
    assert lo is None or passed[lo]
    assert hi is None or (not passed[hi] and all(x < hi for x in loads if passed[x]))  # no pass above a fail
    sel = json.loads((run_dir / "phase8.4" / "champion_select.json").read_text())
    assert (
        "at SLO capacity (p99 TTFT <= 300 ms and p99 TPOT <= 7 ms; random workload, open loop"
        in sel["metric"]
    )
    if cap.capacity is not None:
        assert sel["champion"]["load"] == f"{cap.capacity:g} req/s"
    # SOURCE.md and summary.md record the champion, its lake row and the recommendation after 8.4
    for doc_name in ("SOURCE.md", "summary.md"):
        text = (run_dir / doc_name).read_text().split("## Champion", 1)[1]
        assert f"champions WHERE campaign_id = '{state.run_id}' AND recommended" in text
        assert "recommendation: `perftune deploy --engine sim --model llama-3.1-8b" in text
    assert (
        "## Phase 8.3: SLO capacity" in summary
        or "## Phase 8.3: SLO capacity" in (run_dir / "summary.md").read_text()
    )
    # every cell with a TPOT is a point on the roofline in the lake (analytical bytes, measured time)
    roof = query(lake, "select * from roofline order by cell_id")
    assert {r["cell_id"] for r in roof} == {c.cell_id for c in state.cells.values() if c.tpot_median_ms}
    assert all(r["sol_rigor"] == "L0 analytical" and r["simulated"] and r["intensity"] > 0 for r in roof)
    assert all(0 < r["hbm_pct"] < 100 and r["weight_dtype"] == "bf16" for r in roof)
    rows = query(lake, "select count(*) as n from cells")[0]["n"]
    assert rows == len(state.cells) == 1 + 2 * 2
    assert query(lake, "select recommended, tier from champions")[0] == {"recommended": True, "tier": "DRAFT"}
    # publishing the same campaign again leaves the lake unchanged
    before = _dump(lake)
    publish(run_dir, lake)
    assert _dump(lake) == before
    # the ratchet: a next lever and a known-good entry, both on file
    assert api.frontier(tmp_path / "findings.yaml")[0]["is_next"]
    # a simulated champion is recorded beside the registry it was checked against, never into it
    assert "llama-3.1-8b:" in (tmp_path / "sim-kg.yaml").read_text()
    assert "llama-3.1-8b:" not in (tmp_path / "kg.yaml").read_text()


def test_red_smoke_gate_pauses_the_campaign(tmp_path: Path) -> None:
    # A mock engine whose context is 4 tokens: the smoke gate's first request is refused (HTTP 400).
    intent = small_campaign(tmp_path, engines=["mock"], engine_args={"mock": ["--max-model-len", "4"]})
    run_dir, state = api.optimize(
        runs_dir=tmp_path / "runs", intent=intent, confirm=lambda _: True, lake=tmp_path / "l.duckdb"
    )
    assert state.phases["0"].status == "green"
    assert state.phases["1"].status == "red" and "smoke" in state.phases["1"].reason
    assert all(state.phases[p].status == "pending" for p in ("8", "8.4", "8.5"))
    assert "| 1 | deploy baseline per engine | red | smoke" in (run_dir / "summary.md").read_text()
    assert not state.live  # nothing left running


def test_sigkill_during_phase8_then_resume_reruns_nothing(tmp_path: Path) -> None:
    runs, lake = tmp_path / "runs", tmp_path / "lake.duckdb"
    cmd = [
        sys.executable,
        "-m",
        "perftune",
        "optimize",
        "llama-3.1-8b",
        "--engines",
        "sim",
        "--yes",
        "--runs-dir",
        str(runs),
        "--lake",
        str(lake),
        "--registry",
        str(tmp_path / "kg.yaml"),
        "--findings",
        str(tmp_path / "f.yaml"),
        "--workloads",
        "random,prefix",
        "--ladder",
        "4,8",
        "--isl",
        "256",
        "--osl",
        "64",
        "--trials",
        "3",
        "--no-capacity",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    state = None
    while time.monotonic() < deadline:
        files = list(runs.glob("*/campaign.json"))
        if files:
            try:
                state = CampaignState.model_validate(json.loads(files[0].read_text()))
            except ValueError:
                state = None
            if state and any(c.phase == "8" for c in state.cells.values()) and state.live:
                break
        time.sleep(0.2)
    assert state is not None, "phase 8 never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = files[0].parent
    killed = CampaignState.load(run_dir)
    done = {cid: (run_dir / c.path / "summary.json").stat().st_mtime_ns for cid, c in killed.cells.items()}
    orphans = [d.pgid for d in killed.live]
    assert orphans and any(group_alive(p) for p in orphans)  # the server outlived its campaign
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "perftune",
            "optimize",
            "--resume",
            run_dir.name,
            "--runs-dir",
            str(runs),
            "--lake",
            str(lake),
            "--yes",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    final = CampaignState.load(run_dir)
    assert all(final.phases[p].status == "green" for p in BUILT if p != "8.3")
    assert final.phases["8.3"].status == "skipped" and "--no-capacity" in final.phases["8.3"].reason
    for cid, mtime in done.items():  # finished cells were not re-run
        assert (run_dir / final.cells[cid].path / "summary.json").stat().st_mtime_ns == mtime
    assert len(final.cells) == 1 + 2 * 2 and not final.live
    assert not any(group_alive(p) for p in orphans)  # resume reaped the orphaned server
    assert not list(run_dir.rglob("*.partial"))
