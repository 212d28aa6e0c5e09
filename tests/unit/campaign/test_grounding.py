"""Byte-grounded %SoL (issue 22): a cell is L3 only where GPM DRAM counters were read in every trial,
and the production gate passes only when every cell is L3 or L4."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from perftune.campaign.cells import byte_grounded
from perftune.campaign.champion import production_gates
from perftune.campaign.state import SUITE, Cell
from perftune.telemetry.gpu import GpuTrialState

GATE = "byte-grounded %SoL (DRAM-bandwidth counters)"
HBM_TB_S = 4.8  # an H200's HBM3e


def gpu_state(dram: float | None, note: str | None = None) -> GpuTrialState:
    return GpuTrialState(
        available=True,
        samples=10,
        sm_clock_mhz={"min": 1980.0, "median": 1980.0, "max": 1980.0},
        dram_bw_util_pct=dram,
        gpm_samples=9 if dram is not None else 0,
        gpm_note=note,
    )


def result(*gpus: GpuTrialState | None) -> Any:
    return SimpleNamespace(trials=[SimpleNamespace(gpu=g) for g in gpus])


def cell(workload: str = "random", rigor: str | None = None, **grounded: Any) -> Cell:
    extra: dict[str, Any] = dict(grounded)
    if rigor is not None:
        extra["sol_rigor"] = rigor
    return Cell(
        cell_id=f"p8.vllm.baseline.{workload}.c64",
        phase="8",
        engine="vllm",
        config="baseline",
        levers={},
        workload=workload,
        concurrency=64,
        gpus=1,
        path="x",
        output_tok_s=3000.0,
        output_tok_s_std=10.0,
        output_tok_s_ci95=[2980.0, 3020.0],
        tpot_median_ms=10.0,
        tpot_ci95=[9.9, 10.1],
        ttft_mean_ms=200.0,
        trials=3,
        sol_pct=50.0,
        ceiling_key="h200:hbm_tb_s",
        tier="DRAFT",
        simulated=False,
        prefix_cache=True,
        context={},
        **extra,
    )


def test_dram_counters_in_every_trial_make_the_cell_l3() -> None:
    g = byte_grounded(result(gpu_state(40.0), gpu_state(50.0), gpu_state(60.0)), HBM_TB_S)
    assert g == {
        "sol_rigor": "L3 DRAM counters",
        "dram_bw_util_pct": pytest.approx(50.0),
        "dram_tb_s": pytest.approx(2.4),  # 50% of 4.8 TB/s
        "sol_bytes_pct": pytest.approx(50.0),
    }
    # the same utilisation against another ceiling scales the bytes/s, not the %
    h100 = byte_grounded(result(gpu_state(50.0)), 3.35)
    assert h100["dram_tb_s"] == pytest.approx(1.675) and h100["sol_bytes_pct"] == pytest.approx(50.0)


def test_a_measured_zero_is_a_measurement_not_a_missing_counter() -> None:
    g = byte_grounded(result(gpu_state(0.0), gpu_state(30.0)), HBM_TB_S)
    assert g["sol_rigor"] == "L3 DRAM counters" and g["dram_bw_util_pct"] == pytest.approx(15.0)


@pytest.mark.parametrize(
    "gpus",
    [
        (gpu_state(40.0), None, gpu_state(60.0)),  # a trial without NVML at all
        (gpu_state(40.0), gpu_state(None, "GPM not supported on this GPU (Hopper or later has it)")),
        (gpu_state(None, "GPM not available: AttributeError: no nvmlGpmQueryDeviceSupport"),),
        (None, None),
        (),  # no trial: nothing measured
    ],
)
def test_any_trial_without_dram_counters_leaves_the_cell_l0(gpus: tuple[GpuTrialState | None, ...]) -> None:
    assert byte_grounded(result(*gpus), HBM_TB_S) == {"sol_rigor": "L0 analytical"}


def test_the_grounding_fits_a_cell() -> None:
    l3 = cell(**byte_grounded(result(gpu_state(45.0), gpu_state(55.0)), HBM_TB_S))
    assert l3.sol_rigor == "L3 DRAM counters" and l3.dram_tb_s == pytest.approx(2.4)
    assert l3.dram_bw_util_pct == pytest.approx(50.0) and l3.sol_bytes_pct == pytest.approx(50.0)
    l0 = cell(**byte_grounded(result(None), HBM_TB_S))
    assert l0.sol_rigor == "L0 analytical" and l0.dram_tb_s is None and l0.sol_bytes_pct is None
    assert cell().sol_rigor == "L0 analytical"  # the default: an older bundle's cells are analytical


def gate(gates: dict[str, bool]) -> tuple[str, bool]:
    (hit,) = [(k, v) for k, v in gates.items() if k.startswith(GATE)]
    return hit


def test_the_byte_grounded_gate_passes_when_every_cell_is_l3_or_l4() -> None:
    cells = [cell(w, "L3 DRAM counters" if i % 2 else "L4 per-kernel (ncu)") for i, w in enumerate(SUITE)]
    name, ok = gate(production_gates(cells, {"5": "green"}))
    assert ok and name == GATE
    assert all(production_gates(cells, {"5": "green"}, {"base": True}).values())  # nothing else fails


def test_the_byte_grounded_gate_fails_naming_how_many_cells_are_analytical_only() -> None:
    cells = [cell(w, "L3 DRAM counters") for w in SUITE[:3]] + [cell(w) for w in SUITE[3:]]
    name, ok = gate(production_gates(cells, {"5": "green"}))
    assert not ok
    assert name.startswith(f"{GATE}: 2 of 5 cell(s) analytical only (")
    assert "GPM" in name
    name, ok = gate(production_gates([cell(rigor="L0 analytical")], {"5": "green"}))
    assert not ok and f"{GATE}: 1 of 1 cell(s) analytical only" in name


def test_no_cells_never_pass_the_byte_grounded_gate() -> None:
    name, ok = gate(production_gates([], {"5": "green"}))
    assert not ok and name.startswith(f"{GATE}: 0 of 0 cell(s)")
