"""The report's pure pages: Pareto points, roofline points, captions, the banner rule, missing data."""

from __future__ import annotations

from pathlib import Path

import pytest

from perftune.hardware.ceilings import gpu
from perftune.hardware.roofline import roofline
from perftune.models.resolve import model_card
from perftune.report import pages as pg
from perftune.report.bundle import CellView, ChampionView, PhaseView, load_bundle

from . import _data


def _bundle(cells: list[dict[str, object]], **kw: object):  # type: ignore[no-untyped-def]
    return load_bundle(Path("/nonexistent-run"), _data.doc(cells, **kw))  # type: ignore[arg-type]


def test_pareto_points_one_per_phase_3_and_8_cell_per_gpu_by_workload() -> None:
    cells = [
        _data.cell("1", c=16),  # phase 1 is not on the Pareto page
        _data.cell("3", "kv-cache-dtype=fp8", c=16, tok_s=1700),
        _data.cell("8", c=16, tok_s=3200, gpus=2),
        _data.cell("8", c=64, tok_s=6000, gpus=2, tpot=15.0),
        _data.cell("8", workload="prefix", c=16),
    ]
    b = _bundle(cells, champion=_data.champion("p8.vllm.baseline.random.c64"))
    by = pg.pareto_points(b)
    assert list(by) == ["random", "prefix"]
    rnd = {p.cell_id: p for p in by["random"]}
    assert set(rnd) == {
        "p3.vllm.kv-cache-dtype=fp8.random.c16",
        "p8.vllm.baseline.random.c16",
        "p8.vllm.baseline.random.c64",
    }
    p = rnd["p8.vllm.baseline.random.c64"]
    assert p.tok_s_gpu == 3000 and p.tok_s_gpu_ci95 == (2990.0, 3010.0)  # per GPU, interval too
    assert p.tpot_ci95 == (14.8, 15.2) and p.champion and p.champion_config
    assert (
        rnd["p8.vllm.baseline.random.c16"].champion_config and not rnd["p8.vllm.baseline.random.c16"].champion
    )
    assert not rnd["p3.vllm.kv-cache-dtype=fp8.random.c16"].champion_config  # phase 3 names are arms
    assert p.series == "vllm/baseline (phase 8)"


def test_frontier_keeps_only_non_dominated_points() -> None:
    b = _bundle(
        [
            _data.cell("8", c=4, tok_s=500, tpot=6.0),
            _data.cell("8", c=8, tok_s=900, tpot=7.0),
            _data.cell("8", "slow", c=8, tok_s=800, tpot=9.0),  # dominated by c=8 baseline
            _data.cell("8", c=16, tok_s=1500, tpot=10.0),
        ]
    )
    fr = pg.frontier(pg.pareto_points(b)["random"], "tpot")
    assert [p.cell_id for p in fr] == [
        "p8.vllm.baseline.random.c4",
        "p8.vllm.baseline.random.c8",
        "p8.vllm.baseline.random.c16",
    ]


def test_roofline_point_from_a_cell_matches_the_roofline_model() -> None:
    card, g = model_card("llama-3.1-8b"), gpu("h100")
    c = CellView.model_validate(_data.cell("8", c=16, tpot=8.0))
    p = pg.roofline_point(c, card, g, tp=1, isl=1024, osl=128)
    assert p is not None
    rf = roofline(card, g, tp=1, batch=16, context=1024 + 64, levers={})
    assert p.context_tokens == 1088
    assert p.bytes_per_step == pytest.approx(rf.weight_bytes_read_per_step + rf.kv_bytes_read_per_step)
    # FLOPs: 2 x active params x batch (+ attention) per step
    assert p.flops_per_step == pytest.approx(rf.decode_compute_ms * 1e-3 * g.peak_tflops("bf16") * 1e12)
    assert p.flops_per_step > 2 * card.active_params * 16
    assert p.intensity == pytest.approx(p.flops_per_step / p.bytes_per_step)
    assert p.attained_tflops == pytest.approx(p.flops_per_step / 8e-3 / 1e12)
    assert p.attained_tb_s == pytest.approx(p.bytes_per_step / 8e-3 / 1e12)
    assert p.hbm_pct == pytest.approx(100 * p.attained_tb_s / g.hbm_tb_s)
    assert p.labels == [pg.ANALYTICAL] and not p.simulated
    sim = CellView.model_validate(_data.cell("8", c=16, simulated=True))
    assert pg.roofline_point(sim, card, g, tp=1, isl=1024, osl=128).labels[-1] == "SIMULATED"  # type: ignore[union-attr]
    assert (
        pg.roofline_point(CellView.model_validate(_data.cell(tpot=None)), card, g, tp=1, isl=1, osl=1) is None
    )
    # an FP8 KV lever halves the KV bytes the model reads
    fp8 = CellView.model_validate(_data.cell("8", c=16, levers={"kv-cache-dtype": "fp8"}))
    q = pg.roofline_point(fp8, card, g, tp=1, isl=1024, osl=128)
    assert q is not None and q.kv_dtype == "fp8" and q.bytes_per_step < p.bytes_per_step


def test_roofline_findings_answer_the_three_questions() -> None:
    card, g = model_card("llama-3.1-8b"), gpu("h100")
    pts = [
        pg.roofline_point(
            CellView.model_validate(_data.cell("8", c=c, tpot=t)), card, g, tp=1, isl=1024, osl=128
        )
        for c, t in ((1, 6.0), (16, 7.0), (64, 14.0))
    ]
    text = " ".join(pg.roofline_findings([p for p in pts if p]))
    assert "highest at c=64" in text and "TP=1" in text and "ANALYTICAL" in text
    assert "reaches 75% of HBM bandwidth at c=1" in text  # 16 GB in 6 ms is ~2.7 TB/s of 3.35
    slow = pg.roofline_point(
        CellView.model_validate(_data.cell("8", c=1, tpot=60.0)), card, g, tp=1, isl=1024, osl=128
    )
    assert slow is not None
    assert "never reaches 75% of HBM bandwidth; the most is" in " ".join(pg.roofline_findings([slow]))


def test_roofline_cells_fall_back_and_say_so() -> None:
    camp = _bundle([_data.cell("3", c=16), _data.cell("3", workload="prefix")]).campaign
    cells, note = pg.roofline_cells(camp)
    assert [c.cell_id for c in cells] == ["p3.vllm.baseline.random.c16"]
    assert note.startswith("no phase-8 cells: phase 8 did not run (pending); placing the phase-3")
    cells, note = pg.roofline_cells(_bundle([]).campaign)
    assert cells == [] and note == "no phase-8 cells: phase 8 did not run (pending)."


def test_captions_carry_the_full_context() -> None:
    b = _bundle([_data.cell("8", c=16, simulated=True), _data.cell("8", c=64)])
    cap = pg.caption([pg.cell_row(c) for c in b.campaign.cells.values()], b.campaign, "what")
    for part in (
        "what · model llama-3.1-8b",
        "hardware 1xh100",
        "engine vllm 0.26.0",
        "parallelism TP=1",
        "quantization bf16 weights",
        "KV bf16",
        "workload random ISL 1024 OSL 128",
        "concurrency 16, 64",
        "trials 3",
        "tier DRAFT",
        "SIMULATED",
    ):
        assert part in cap, part
    real = _bundle([_data.cell("8")])
    assert "SIMULATED" not in pg.caption(
        [pg.cell_row(c) for c in real.campaign.cells.values()], real.campaign
    )
    assert pg.caption([], real.campaign, "x") == "x · no measured cells"


def test_banner_recommends_only_a_verdict_champion() -> None:
    ok = ChampionView.model_validate(_data.champion("c", tier="VERDICT", gates=[]))
    assert pg.banner(ok, None, None).kind == "recommended"
    assert "RECOMMENDED FOR PRODUCTION" in pg.banner(ok, None, None).title
    draft = ChampionView.model_validate(
        _data.champion("c", gates=["accuracy (phase 5): skipped", "suite: missing long"])
    )
    bn = pg.banner(draft, None, None)
    assert bn.kind == "draft" and "DRAFT" in bn.title and "RECOMMENDED" not in bn.title
    assert bn.gates == ["accuracy (phase 5): skipped", "suite: missing long"]
    # a VERDICT tier that still lists a failing gate is not recommended
    odd = ChampionView.model_validate(_data.champion("c", tier="VERDICT", gates=["x"]))
    assert pg.banner(odd, None, None).kind == "draft"
    # DRAFT without a gate list still says DRAFT and why it cannot say more
    bare = ChampionView.model_validate(_data.champion("c", gates=[]))
    assert pg.banner(bare, None, None).gates == ["tier DRAFT: no failing gate recorded in the bundle"]


def test_banner_without_a_champion_says_why() -> None:
    assert pg.banner(None, None, None).title == "No champion: phase 8.4 did not run."
    pending = PhaseView(id="8.4", name="select", status="pending")
    assert pg.banner(None, None, pending).title == "No champion: phase 8.4 is pending."
    red = PhaseView(id="8.4", name="select", status="red", reason="no eligible candidate: SLO missed")
    bn = pg.banner(None, {"failing_gates": ["g1"]}, red)
    assert bn.kind == "none" and "no eligible candidate" in bn.title and bn.gates == ["g1"]
    # the selection file alone (campaign.json without the fact) still gives the champion
    sel = {"champion": _data.champion("c"), "tier": "DRAFT", "failing_gates": ["g"], "metric": "m"}
    assert pg.banner(None, sel, None).gates == ["g"]


def test_missing_data_messages_are_plain() -> None:
    camp = _bundle([], status={"3": "skipped", "8": "red"}).campaign
    camp.phases["8"].reason = "cells lost requests"
    camp.phases["3"].reason = "opt-in"
    assert pg.no_cells_message(camp, ("3", "8")) == (
        "no phase-3 or phase-8 cells: phase 3 was skipped: opt-in; phase 8 is red: cells lost requests."
    )
    assert pg.phase_state(camp, "9") == "phase 9 is not in this bundle"


def test_cdf_is_thinned_and_ends_at_one() -> None:
    xs, ys = pg.cdf([float(k) for k in range(1000, 0, -1)], max_points=50)
    assert len(xs) == 50 and xs[0] == 1.0 and xs[-1] == 1000.0 and ys[-1] == 1.0
    assert xs == sorted(xs) and ys == sorted(ys)
    assert pg.cdf([]) == ([], [])


def test_tune_order_lists_the_interleaved_full_treatment() -> None:
    order = pg.tune_order(
        {
            "order": [
                ["a", 0, "screen"],
                ["b", 0, "screen"],
                ["a", 0, "full"],
                ["b", 0, "full"],
                ["a", 1, "full"],
            ]
        }
    )
    assert order.steps == ["a t0", "b t0", "a t1"] and order.arms == ["a", "b"]


def test_a_prefill_point_is_one_prompt_timed_by_the_mean_ttft_a_lower_bound() -> None:
    card, g = model_card("llama-3.1-8b"), gpu("h100")
    c = CellView.model_validate(_data.cell("8", c=1, tpot=6.5) | {"ttft_mean_ms": 80.0})
    p = pg.prefill_point(c, card, g, tp=1, isl=1024)
    assert p is not None and p.kind == "prefill" and p.context_tokens == 1024 and p.tpot_ms == 80.0
    assert p.flops_per_step > 2 * card.active_params * 1024  # plus the attention's ISL^2 term
    assert p.intensity > 100 * pg.roofline_point(c, card, g, tp=1, isl=1024, osl=128).intensity  # type: ignore[union-attr]
    assert p.attained_tflops == pytest.approx(p.flops_per_step / 80e-3 / 1e12)
    assert any("LOWER BOUND" in label for label in p.labels)
    text = " ".join(pg.roofline_findings([p, pg.roofline_point(c, card, g, tp=1, isl=1024, osl=128)]))  # type: ignore[list-item]
    assert "prefill attains at least" in text and "a lower bound" in text
    assert (
        pg.prefill_point(
            CellView.model_validate(_data.cell("8") | {"ttft_mean_ms": None}), card, g, tp=1, isl=8
        )
        is None
    )
