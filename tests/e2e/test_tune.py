"""Phase 3 on real processes: the simulator tuned end to end, and a wedging engine classified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perftune import api
from perftune.campaign.base import Ctx
from perftune.campaign.live_eval import LiveEvaluator
from perftune.campaign.state import CampaignState, Intent
from perftune.errors import ConfigError
from perftune.tune.arms import Arm

from .conftest import small_campaign

pytestmark = pytest.mark.e2e


def _intent(tmp: Path, **kw: object) -> Intent:
    return small_campaign(tmp, **{"workloads": ["random"], "wedge_s": 3.0, **kw})


def test_wedging_engine_is_recorded_as_a_wedge(tmp_path: Path) -> None:
    intent = _intent(
        tmp_path, engines=["mock"], engine_args={"mock": ["--wedge-after", "8", "--ttft-ms", "5"]}
    )
    run_dir, state = api.optimize(
        runs_dir=tmp_path / "runs", intent=intent, until="0", lake=tmp_path / "l.duckdb"
    )
    ctx = Ctx(run_dir, state, lambda _m: None)
    ev = LiveEvaluator(ctx, run_dir / "phase3", wedge_s=3.0)
    out = ev.run(Arm(engine="mock", name="baseline"), [4], 0, screening=False)
    assert out.failure is not None and out.failure.klass == "wedge", out.failure
    assert not CampaignState.load(run_dir).live  # the wedged server was torn down


def test_tune_crowns_an_arm_with_three_interleaved_trials(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run_dir, state = api.optimize(
        runs_dir=runs, intent=_intent(tmp_path), until="1", lake=tmp_path / "l.duckdb"
    )
    assert state.phases["1"].status == "green"
    tsv = run_dir / "phase3" / "arms.tsv"  # a user-edited arms file: it wins over the generated one
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tsv.write_text(
        "sim\tbaseline\t\nsim\tbatch-cap=2\tbatch-cap=2\nsim\tkv-cache-dtype=fp8\tkv-cache-dtype=fp8\n"
    )
    run_dir, state = api.tune(run_dir.name, runs_dir=runs, budget_gpu_min=30, lake=tmp_path / "l.duckdb")
    p3 = state.phases["3"]
    assert p3.status == "green", p3.reason
    tune = json.loads((run_dir / "phase3" / "tune.json").read_text())
    crowned = tune["engines"][0]["crowned"]
    assert crowned is not None and crowned["name"] != "batch-cap=2"  # 2 slots cannot serve c=8 well
    assert all(n >= 3 for _name, _score, n in tune["engines"][0]["top3"])
    full = [(a, t) for a, t, stage in tune["order"] if stage == "full"]
    assert [t for _a, t in full] == sorted(t for _a, t in full)  # interleaved: ABAB
    md = (run_dir / "phase3" / "TUNE.md").read_text()
    assert "Pareto" in md and "| prefix |" in md and "| random |" in md  # both workloads, each with its ratio
    assert set(tune["engines"][0]["by_workload"]) == {"random", "prefix"}
    assert {m["workload"] for m in tune["measures"]} == {"random", "prefix"}
    assert state.facts.tuned["sim"] == crowned["levers"]
    # the full treatment's cells: one per (arm, workload, c), its trials from separate interleaved deploys
    p3 = {c.cell_id: c for c in state.cells.values() if c.phase == "3"}
    base = p3["p3.sim.baseline.random.c8"]
    for c in p3.values():  # the arm's levers and the deploy's parallelism are in every phase 3 context
        assert c.context["levers"] == c.levers and c.context["parallelism"] == {"tp": 1}
        # the effective dtypes, with where they come from: the FP8-KV arm reads fp8 KV, the rest bf16
        kv = c.context["kv_cache_dtype"]
        assert kv.startswith(
            "fp8 (lever kv-cache-dtype=fp8)" if c.levers.get("kv-cache-dtype") else "bf16 (auto"
        )
        assert c.context["quantization"].startswith("bf16 weights")
        assert c.context["claim"] == "throughput" and c.context["metric_isolated"] is True
        assert c.tier == "DRAFT" and "simulated server" in c.context["tier_reasons"]  # never a VERDICT
    assert base.trials == 3 and len(set(base.trial_paths)) == 3 and "full.t2" in base.trial_paths[2]
    # 2 challengers, top_k 3: both are finalists, so nothing is screened and TUNE.md says so
    assert not any(".screen." in p.name for p in (run_dir / "phase3" / "trials").iterdir())
    assert "screening skipped: 3 arm(s), all finalists" in md
    # each trial's own summary.json names its config too (what `sim calibrate --from` reads)
    for d in (run_dir / "phase3" / "trials").iterdir():
        tctx = json.loads((d / "summary.json").read_text())["context"]
        want = {"kv-cache-dtype": "fp8"} if ".kv-cache-dtype=fp8." in d.name else None
        if want or ".baseline." in d.name:
            assert tctx["levers"] == (want or {}), d.name
            assert tctx["kv_cache_dtype"].startswith("fp8" if want else "bf16"), d.name
            assert tctx["parallelism"] == {"tp": 1} and tctx["weights"] == "base"
    rows = api.lake_query(
        "select c.engine, count(distinct t.cell_id) n, count(*) t from trials t join cells c "
        "using (campaign_id, cell_id) where c.phase = '3' group by 1",
        lake=tmp_path / "l.duckdb",
    )
    assert rows == [{"engine": "sim", "n": len(p3), "t": 3 * len(p3)}]


def test_tune_refuses_an_unknown_workload_before_any_deploy(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run_dir, _ = api.optimize(runs_dir=runs, intent=_intent(tmp_path), until="1", lake=tmp_path / "l.duckdb")
    with pytest.raises(ConfigError, match=r"tuning\.workloads: .*randm"):
        api.tune(run_dir.name, runs_dir=runs, workloads=["randm"], lake=tmp_path / "l.duckdb")
    assert not (run_dir / "phase3" / "journal.jsonl").exists()
    assert CampaignState.load(run_dir).intent.tuning.workloads == ["random", "prefix"]  # nothing saved


def test_tune_refuses_engines_whose_baselines_differ_in_prefix_caching(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    intent = _intent(tmp_path, engines=["sim", "mock"])  # the simulator caches prefixes, the mock does not
    run_dir, state = api.optimize(runs_dir=runs, intent=intent, until="1", lake=tmp_path / "l.duckdb")
    assert state.phases["1"].status == "green"
    run_dir, state = api.tune(run_dir.name, runs_dir=runs, lake=tmp_path / "l.duckdb")
    p3 = state.phases["3"]
    assert p3.status == "red" and "mock off, sim on" in p3.reason and "arms.tsv" in p3.reason
    assert not (run_dir / "phase3" / "journal.jsonl").exists()  # refused before any deploy


def test_tune_with_latency_focus_crowns_on_median_tpot_at_the_target(tmp_path: Path) -> None:
    # the baseline runs without CUDA graphs (slower decode); one challenger turns them on; another
    # also caps the batch at 1, the lowest TPOT of all but a TTFT far over the SLO at the target
    runs, lake = tmp_path / "runs", tmp_path / "l.duckdb"
    intent = _intent(  # top_k 1: two challengers, so screening runs (at the judged concurrency)
        tmp_path,
        focus="latency",
        target_concurrency=6,
        slo_ttft_ms=300.0,
        tune_workloads=["random"],
        tune_top_k=1,
    )
    run_dir, state = api.optimize(runs_dir=runs, intent=intent, until="1", lake=lake)
    assert state.phases["1"].status == "green"
    tsv = run_dir / "phase3" / "arms.tsv"
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tsv.write_text(
        "sim\tbaseline\tcuda-graphs=False\n"
        "sim\tcuda-graphs=True\tcuda-graphs=True\n"
        "sim\tbatch-cap=1\tcuda-graphs=True;batch-cap=1\n"
    )
    run_dir, state = api.tune(run_dir.name, runs_dir=runs, budget_gpu_min=30, lake=lake)
    p3 = state.phases["3"]
    assert p3.status == "green", p3.reason
    tune = json.loads((run_dir / "phase3" / "tune.json").read_text())
    eng = tune["engines"][0]
    # ladder 4/8, target 6: judged at c=4, the largest ladder concurrency <= the target
    assert eng["focus"] == "latency" and eng["concurrency"] == 4
    assert eng["metric"].startswith("median TPOT ms at c=4")
    assert eng["crowned"]["name"] == "cuda-graphs=True", eng["verdict"]
    assert eng["tpot_ms"] < eng["baseline_tpot_ms"] and eng["ratio_ci95"][0] > 1.0

    def tpot_at_4(arm: str) -> float:  # the full treatment's per-trial median TPOTs, their median
        ts = sorted(
            m["tpot_ms"]
            for m in tune["measures"]
            if m["arm"] == f"sim/{arm}" and m["concurrency"] == 4 and ".full." in m["path"]
        )
        assert len(ts) >= 3
        return ts[len(ts) // 2]

    assert tpot_at_4("cuda-graphs=True") <= tpot_at_4("baseline")
    assert "batch-cap=1" not in [n for n, _s, _k in eng["top3"]]  # best TPOT, but TTFT over the SLO
    md = (run_dir / "phase3" / "TUNE.md").read_text()
    assert "Crowned by: median TPOT ms at c=4" in md and "TPOT speedup" in md
    assert f"median TPOT {eng['tpot_ms']:.2f} ms at c=4" in md
    assert "median TPOT" in p3.headline and "ms at c=4" in p3.headline
    # screening measured at the judged concurrency, the full treatment over the whole ladder
    trials = [p.name for p in (run_dir / "phase3" / "trials").iterdir()]
    screened = [n for n in trials if ".screen." in n]
    assert screened and all(n.endswith(".c4") for n in screened)
    assert any(".full." in n and n.endswith(".c8") for n in trials)
