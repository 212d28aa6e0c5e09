"""Champion selection (pure): ties, tie-breaks, SLO eligibility, prefix-cache matching, tiers."""

from __future__ import annotations

from typing import Any

from perftune.campaign.champion import production_gates, select_champion
from perftune.campaign.report import champion_md
from perftune.campaign.state import CampaignState, Cell, Intent, PhaseRecord


def cell(
    engine: str,
    config: str,
    tok: float,
    ci: float,
    *,
    gpus: int = 1,
    c: int = 64,
    tpot: float = 10.0,
    ttft: float = 200.0,
    levers: dict[str, Any] | None = None,
    prefix: bool | None = True,
    workload: str = "random",
    simulated: bool = False,
    trials: int = 3,
) -> Cell:
    return Cell(
        cell_id=f"p8.{engine}.{config}.{workload}.c{c}",
        phase="8",
        engine=engine,
        config=config,
        levers=levers or {},
        workload=workload,
        concurrency=c,
        gpus=gpus,
        path="x",
        output_tok_s=tok,
        output_tok_s_std=ci / 2,
        output_tok_s_ci95=[tok - ci, tok + ci],
        tpot_median_ms=tpot,
        tpot_ci95=[tpot - 0.1, tpot + 0.1],
        ttft_mean_ms=ttft,
        trials=trials,
        sol_pct=50.0,
        ceiling_key="h100-sxm:hbm_tb_s",
        tier="DRAFT",
        simulated=simulated,
        prefix_cache=prefix,
        context={},
    )


INTENT = Intent(model="m", engines=["vllm", "sglang"], slo_ttft_ms=1000, slo_tpot_ms=20)
ALL_PASS = {"suite": True, "accuracy": True}


def test_clear_winner_is_verdict_when_every_gate_passes() -> None:
    sel = select_champion(
        [cell("vllm", "baseline", 3000, 20), cell("sglang", "baseline", 2500, 20)], INTENT, ALL_PASS
    )
    assert sel.champion is not None and sel.champion.engine == "vllm"
    assert sel.tier == "VERDICT" and not sel.failing_gates


def test_overlapping_intervals_tie_and_fewer_gpus_win() -> None:
    cells = [cell("vllm", "tp2", 3000 * 2, 300, gpus=2), cell("sglang", "tp1", 2950, 100, gpus=1)]
    sel = select_champion(cells, INTENT, ALL_PASS)
    assert sel.champion is not None and sel.champion.engine == "sglang"  # 2950 vs 3000 per GPU: tied
    assert all(r.tied_with_leader for r in sel.ranking[:2]) and sel.notes


def test_tie_on_gpus_goes_to_the_simpler_config() -> None:
    cells = [
        cell("vllm", "tuned", 3010, 50, levers={"batch-cap": 512, "kv-cache-dtype": "fp8"}),
        cell("vllm", "baseline", 3000, 50),
    ]
    sel = select_champion(cells, INTENT, ALL_PASS)
    assert sel.champion is not None and sel.champion.config == "baseline"


def test_slo_breaking_cells_do_not_count() -> None:
    cells = [
        cell("vllm", "baseline", 5000, 10, tpot=30.0),
        cell("vllm", "baseline", 2000, 10, c=16, tpot=8.0),
    ]
    sel = select_champion(cells, INTENT, ALL_PASS)
    assert sel.champion is not None and sel.champion.concurrency == 16 and sel.champion.value == 2000


def test_prefix_cache_mismatch_keeps_a_throughput_crown_draft() -> None:
    cells = [
        cell("vllm", "baseline", 3000, 20, prefix=True),
        cell("sglang", "baseline", 2000, 20, prefix=False),
    ]
    sel = select_champion(cells, INTENT, ALL_PASS)
    assert sel.tier == "DRAFT" and any("prefix caching differs" in g for g in sel.failing_gates)


def test_production_gates_name_what_fails_and_the_report_says_draft() -> None:
    cells = [cell("sim", "baseline", 3000, 20, simulated=True, trials=2)]
    gates = production_gates(cells, {"5": "not-available"})
    failing = [g for g, ok in gates.items() if not ok]
    # a failing gate is named with why it fails, never as a passing statement ("... passed")
    assert "accuracy (phase 5): phase 5 is not available in this version" in failing
    assert ">= 3 trials in every cell: 1 cell(s) with fewer" in failing
    assert "measured on real engines: 1 of 1 cell(s) SIMULATED" in failing
    assert not any("passed" in g for g in failing)
    sel = select_champion(cells, INTENT, gates)
    state = CampaignState(
        run_id="r", created_at="t", intent=INTENT, phases={"0": PhaseRecord(id="0", name="x")}
    )
    md = champion_md(state, sel, {c.cell_id: c for c in cells})
    assert (
        "DRAFT" in md
        and "RECOMMENDED FOR PRODUCTION" not in md
        and "accuracy (phase 5): phase 5 is not" in md
    )
    ok = select_champion([cell("vllm", "baseline", 3000, 20)], INTENT, ALL_PASS)
    assert "RECOMMENDED FOR PRODUCTION" in champion_md(
        state, ok, {c.cell_id: c for c in [cell("vllm", "baseline", 3000, 20)]}
    )


def test_latency_focus_takes_median_tpot_at_the_target() -> None:
    intent = Intent.model_validate({**INTENT.model_dump(), "focus": "latency", "target_concurrency": 16})
    cells = [
        cell("vllm", "baseline", 1500, 10, c=16, tpot=8.1),
        cell("sglang", "baseline", 1500, 10, c=16, tpot=7.0),
    ]
    sel = select_champion(cells, intent, ALL_PASS)
    assert sel.champion is not None and sel.champion.engine == "sglang" and sel.champion.value == 7.0


def _cap(engine: str, config: str, capacity: float | None, tok: float | None) -> Any:
    from perftune.campaign.state import CapacityFact

    return CapacityFact(
        engine=engine,
        config=config,
        levers={},
        slo="p99 TTFT <= 2 s and p99 TPOT <= 100 ms",
        capacity=capacity,
        at_least=False,
        interval=[capacity, None],
        output_tok_s=tok,
        output_tok_s_ci95=[tok - 10, tok + 10] if tok else None,
        points=5,
        statement=f"sustains concurrency {capacity}" if capacity else "does not sustain the lowest load",
        path="phase8.3/x",
        tier="DRAFT",
        simulated=False,
    )


def test_throughput_champions_are_compared_at_equal_slo_capacity() -> None:
    # On the ladder vllm wins at c=64; inside the capacity SLO sglang sustains more and wins.
    cells = [cell("vllm", "baseline", 3000, 20), cell("sglang", "baseline", 2500, 20)]
    caps = {
        "vllm/baseline": _cap("vllm", "baseline", 40, 2200.0),
        "sglang/baseline": _cap("sglang", "baseline", 96, 2600.0),
    }
    sel = select_champion(cells, INTENT, ALL_PASS, caps)
    assert sel.champion is not None and sel.champion.engine == "sglang" and sel.champion.concurrency == 96
    assert "at SLO capacity (p99 TTFT <= 2 s" in sel.metric
    # a config that sustains no load is not eligible, with the search's statement as the reason
    caps["sglang/baseline"] = _cap("sglang", "baseline", None, None)
    sel = select_champion(cells, INTENT, ALL_PASS, caps)
    assert sel.champion is not None and sel.champion.engine == "vllm"
    assert "does not sustain" in next(r.reason for r in sel.ranking if r.engine == "sglang")


def test_capacity_missing_for_one_config_compares_everyone_on_the_ladder() -> None:
    cells = [cell("vllm", "baseline", 3000, 20), cell("sglang", "baseline", 2500, 20)]
    sel = select_champion(
        cells, INTENT, ALL_PASS, {"sglang/baseline": _cap("sglang", "baseline", 96, 2600.0)}
    )
    assert sel.champion is not None and sel.champion.engine == "vllm" and "under the SLO" in sel.metric
    assert any("on the ladder instead" in n for n in sel.notes)


def test_a_speculative_champion_names_its_method_and_measured_acceptance() -> None:
    lv = {"spec-method": "ngram", "spec-k": 4}
    cells = [cell("vllm", "spec-ngram", 3000, 20, levers=lv), cell("vllm", "baseline", 2000, 20)]
    sel = select_champion(cells, INTENT, ALL_PASS)
    state = CampaignState(
        run_id="r", created_at="t", intent=INTENT, phases={"0": PhaseRecord(id="0", name="x")}
    )
    state.facts.spec = {
        "vllm": {
            "ngram": {
                "verdict": "ship",
                "levers": lv,
                "concurrency": 1,
                "accept_length": {"code": 2.61, "chat": 1.83, "random": None},
            }
        }
    }
    md = champion_md(state, sel, {c.cell_id: c for c in cells})
    assert "Speculative decoding: ngram, K=4; mean acceptance length (phase 7, c=1): code 2.61" in md
    assert "random not reported." in md and "code 2.61, chat 1.83" in md
