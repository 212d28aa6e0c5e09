"""Phase 2.5's rules table as pure functions: each rule fires on its own evidence and cites it, rows are
ranked and deduplicated, the ledger renders, and its config rows seed phase 3's arms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from perftune.campaign.profiling import seed_arms
from perftune.models.resolve import model_card
from perftune.profile.base import Capture
from perftune.profile.synthesis import RULES, Evidence, LedgerRow, ledger_md, synthesize
from perftune.tune.arms import generate_arms, read_tsv, write_tsv

RULE = {r.id: r for r in RULES}


def cap(layer: str, engine: str = "vllm", c: int | None = 1, **kw: Any) -> Capture:
    """An ok capture with one artifact; keyword arguments that are Capture fields go there, the rest
    are figures."""
    fields = {k: kw.pop(k) for k in ("status", "reason", "artifacts", "evidence", "simulated") if k in kw}
    fields.setdefault("artifacts", [f"phase2/{engine}/c{c}/{layer}/kernels.json"])
    fields.setdefault("simulated", layer == "sim")
    return Capture(
        layer=layer, engine=engine, concurrency=c, status=fields.pop("status", "ok"), figures=kw, **fields
    )


def fire(engine: str, *caps: Capture, rule: str | None = None) -> list[LedgerRow]:
    return synthesize([Evidence(engine, list(caps), [])], [RULE[rule]] if rule else RULES)


def shares(s: float, t: float, a: float) -> dict[str, float]:
    return {"scheduling": s, "tokenization": t, "api_server": a}


def kernel(d: float, s: float) -> list[dict[str, Any]]:
    return [{"name": "sm90_xmma_gemm_bf16", "memory_pct_of_peak": d, "sm_pct_of_peak": s}]


# rule id -> (engine, the capture that fires it, its first cited value, score, captures just below)
CASES: dict[str, tuple[str, Capture, str, float, list[Capture]]] = {
    "host-sampling-path": (
        "vllm",
        cap("l1", c=64, shares={"sampling": 0.34}),
        "0.34",
        0.34,
        [cap("l1", c=64, shares={"sampling": 0.24}), cap("l1", c=16, shares={"sampling": 0.34})],
    ),
    "host-gaps-graphs": (
        "vllm",
        cap("l2", step_budget="host-bound", step_wall_ms_median=10.0, step_kernel_ms_median=7.0),
        "0.3",
        0.3,
        [
            # idle 14% of the step; a kernel-bound verdict; a window above c=8; idle between
            # requests only (the real H200 trace: host_gap_share 0.25, kernel-bound step)
            cap("l2", step_budget="host-bound", step_wall_ms_median=10.0, step_kernel_ms_median=8.6),
            cap("l2", step_budget="kernel-bound", step_wall_ms_median=10.0, step_kernel_ms_median=7.0),
            cap("l2", c=16, step_budget="host-bound", step_wall_ms_median=10.0, step_kernel_ms_median=7.0),
            cap("l2", host_gap_share=0.25, step_budget="kernel-bound"),
        ],
    ),
    "host-bound-api": (
        "vllm",
        cap("l1", shares=shares(0.1, 0.1, 0.1)),
        "0.3",
        0.3,
        [cap("l1", shares=shares(0.1, 0.1, 0.04))],
    ),
    "cpu-threads": (
        "llamacpp",
        cap("l1", "llamacpp", shares={"model_compute": 0.6}),
        "0.6",
        0.48,
        [cap("l1", "llamacpp", shares={"model_compute": 0.49})],
    ),
    "low-bw-fp8": (
        "vllm",
        cap("l3", dram_bw_util_pct=40.0),
        "40",
        0.6,
        [
            cap("l3", dram_bw_util_pct=60.0),
            cap("l3", dram_bw_util_pct=0.0),
            cap("l3", c=16, dram_bw_util_pct=40.0),
        ],
    ),
    "weights-dominate-fp8": (
        "vllm",
        cap("l2", family_shares={"gemm": 0.7}),
        "0.7",
        0.7,
        [cap("l2", family_shares={"gemm": 0.49}), cap("l2", c=16, family_shares={"gemm": 0.7})],
    ),
    "attention-kv-fp8": (
        "vllm",
        cap("l2", c=32, family_shares={"attention": 0.35}),
        "0.35",
        0.35,
        [
            cap("l2", c=32, family_shares={"attention": 0.29}),
            cap("l2", c=4, family_shares={"attention": 0.5}),  # L2 reads attention from c=8 on
            cap("sim", "vllm", c=16, shares={"attention": 0.5}),  # the sim's from c=32 on
        ],
    ),
    "prefill-chunk": (
        "sim",
        cap("sim", "sim", c=8, prefill_time_share=0.45),
        "0.45",
        0.36,
        [cap("sim", "sim", c=8, prefill_time_share=0.39)],
    ),
    "kv-pressure": (
        "sim",
        cap("sim", "sim", c=64, kv_usage_max=0.95),
        "0.95 / 0",
        0.95,
        [cap("sim", "sim", c=64, kv_usage_max=0.89, preemptions=0)],
    ),
    "moe-ep": (
        "vllm",
        cap("l2", c=8, family_shares={"moe": 0.4}),
        "0.4",
        0.4,
        [cap("l2", family_shares={"moe": 0.29})],
    ),
    "moe-backend": (
        "sglang",
        cap("l2", "sglang", family_shares={"moe": 0.4}),
        "0.4",
        0.4,
        [cap("l2", "sglang", family_shares={"moe": 0.29})],
    ),
    "comm-bound": (
        "vllm",
        cap("l2", c=64, step_budget="communication-bound", family_shares={"communication": 0.35}),
        "0.35",
        0.35,
        [cap("l2", c=64, step_budget="memory-bound", family_shares={"communication": 0.35})],
    ),
    "kernel-underuses-hbm": (
        "vllm",
        cap("l4", kernels=kernel(30.0, 20.0)),
        "30 / 20",
        0.7,
        [cap("l4", kernels=kernel(50.0, 20.0)), cap("l4", kernels=kernel(30.0, 50.0))],
    ),
}


def test_every_rule_has_a_case() -> None:
    assert set(CASES) == set(RULE)


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_fires_on_its_evidence_and_cites_it(rule_id: str) -> None:
    engine, c, value, score, _ = CASES[rule_id]
    rows = fire(engine, c, rule=rule_id)
    assert len(rows) == 1
    (row,) = rows
    assert (row.rule, row.rank, row.engine, row.tier) == (rule_id, 1, engine, "DRAFT")
    assert (row.lever, row.value, row.kind) == (RULE[rule_id].lever, RULE[rule_id].value, RULE[rule_id].kind)
    assert row.citations[0].artifact == c.artifacts[0]
    assert row.citations[0].value == value
    assert row.score == pytest.approx(score)
    assert row.sol_rigor == c.rigor


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_is_silent_just_below_its_threshold(rule_id: str) -> None:
    engine, _, _, _, below = CASES[rule_id]
    for c in below:
        assert fire(engine, c, rule=rule_id) == [], c.figures


@pytest.mark.parametrize(
    ("rule_id", "c", "value"),
    [
        ("kv-pressure", cap("sim", "sim", c=64, kv_usage_max=0.2, preemptions=3), "0.20 / 3"),
        ("low-bw-fp8", cap("sim", "sim", c=1, shares={"gemm": 0.6}), "0.6"),
        ("weights-dominate-fp8", cap("sim", "sim", c=1, shares={"gemm": 0.6}), "0.6"),
        ("attention-kv-fp8", cap("sim", "sim", c=64, shares={"attention": 0.4}), "0.4"),
    ],
)
def test_simulated_evidence_is_marked(rule_id: str, c: Capture, value: str) -> None:
    (row,) = fire("sim", c, rule=rule_id)
    assert row.simulated is True
    assert "SIMULATED" in row.predicted
    assert row.sol_rigor == "L0 analytical (SIMULATED)"
    assert (row.citations[0].artifact, row.citations[0].value) == (c.artifacts[0], value)


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_no_artifact_no_row(rule_id: str) -> None:
    engine, c, *_ = CASES[rule_id]
    assert fire(engine, c.model_copy(update={"artifacts": []}), rule=rule_id) == []


@pytest.mark.parametrize(
    "update",
    [
        {"evidence": False},
        {"status": "failed", "reason": "capture failed: zero kernels"},
        {"status": "skipped", "reason": "no ncu"},
    ],
)
def test_not_evidence_failed_and_skipped_captures_are_never_read(update: dict[str, Any]) -> None:
    caps = [c.model_copy(update=update) for _, c, *_ in CASES.values()]
    engines = {e for e, *_ in CASES.values()}
    assert synthesize([Evidence(e, [c for c in caps if c.engine == e], []) for e in engines]) == []


def test_rules_fire_only_for_their_engines() -> None:
    llama_compute = cap("l1", shares={"model_compute": 0.9})
    assert fire("vllm", llama_compute, rule="cpu-threads") == []
    assert fire("llamacpp", cap("l2", "llamacpp", host_gap_share=0.5), rule="host-gaps-graphs") == []
    assert [r.rule for r in fire("llamacpp", llama_compute, rule="cpu-threads")] == ["cpu-threads"]


def test_rows_ranked_by_score_and_one_row_per_lever_value() -> None:
    caps = [
        cap(
            "l2",
            step_budget="host-bound",
            step_wall_ms_median=10.0,
            step_kernel_ms_median=7.0,
            family_shares={"gemm": 0.7},
        ),  # host gaps 0.3, weights 0.7
        cap("l3", dram_bw_util_pct=20.0),  # low bandwidth 0.8
        cap("l2", c=64, family_shares={"attention": 0.5}),  # kv fp8 0.5
    ]
    rows = synthesize([Evidence("vllm", caps, [])])
    assert [r.rank for r in rows] == list(range(1, len(rows) + 1))
    assert [r.score for r in rows] == sorted((r.score for r in rows), reverse=True)
    assert [(r.rule, r.score) for r in rows] == [
        ("low-bw-fp8", 0.8),
        ("attention-kv-fp8", 0.5),
        ("host-gaps-graphs", 0.3),
    ]  # weights-dominate-fp8 is the same quantization=fp8 lever: its citation joins the kept row
    assert [c.figure for c in rows[0].citations][1].startswith("GEMM share")
    assert len({(r.engine, r.lever, r.value) for r in rows}) == len(rows)
    # the same lever for another engine is its own row
    both = synthesize(
        [Evidence("vllm", caps, []), Evidence("sglang", [cap("l3", "sglang", dram_bw_util_pct=30.0)], [])]
    )
    assert sorted(r.engine for r in both if r.arm == "quantization=fp8") == ["sglang", "vllm"]


def test_ledger_md_renders_rows_with_citations_and_captures() -> None:
    caps = [
        cap("l3", dram_bw_util_pct=40.0),
        cap("l4", kernels=kernel(30.0, 20.0)),
        cap("l2", c=8, status="failed", reason="capture failed: the trace holds no GPU kernel"),
        cap("l1", "sim", c=8, status="skipped", reason="py-spy of the simulator", evidence=False),
    ]
    rows = synthesize([Evidence("vllm", caps, [])])
    md = ledger_md(rows, caps, "llama-3.1-8b, campaign r1")
    assert md.startswith("# Lever ledger: llama-3.1-8b, campaign r1\n")
    for r in rows:
        assert f"| {r.rank} | vllm |" in md
        for ci in r.citations:
            assert f"`{ci.artifact}`: {ci.figure} = {ci.value}" in md
    assert "`quantization=fp8`" in md
    assert "kernel tuning (engine source)" in md
    assert "| vllm.l3.c1 | ok |" in md
    assert "| vllm.l2.c8 | failed | capture failed: the trace holds no GPU kernel |" in md
    assert "| sim.l1.c8 | skipped (not evidence) | py-spy of the simulator |" in md
    assert "No rule fired" not in md

    empty = ledger_md([], caps[2:], "t")
    assert "No rule fired on the captured evidence." in empty
    assert "| vllm.l2.c8 | failed |" in empty
    assert "| # | engine | lever |" not in empty


def _row(rule_id: str, engine: str, rank: int) -> LedgerRow:
    r = RULE[rule_id]
    same = {k: getattr(r, k) for k in ("kind", "lever", "value", "predicted", "why")}
    return LedgerRow(
        rank=rank, rule=r.id, engine=engine, score=1 - rank / 100, citations=[], sol_rigor="L2", **same
    )


def test_seed_arms_keeps_only_config_rows_the_engine_can_run() -> None:
    rows = [
        _row("cpu-threads", "llamacpp", 1),  # "all physical cores" is advice, not an int
        _row("kernel-underuses-hbm", "vllm", 2),  # engine source: no arm
        _row("low-bw-fp8", "vllm", 3),
        _row("comm-bound", "vllm", 4),  # tensor-parallel=fewer: not a value
        _row("low-bw-fp8", "llamacpp", 5),  # llama.cpp has no quantization flag
        _row("attention-kv-fp8", "sglang", 6),
        _row("host-gaps-graphs", "sim", 7),  # cuda-graphs=true is vLLM's default: no change, no arm
        _row("kv-pressure", "vllm", 8),
    ]
    assert seed_arms(rows) == [
        {"engine": "vllm", "lever": "quantization", "value": "fp8", "source": "ledger#3 low-bw-fp8"},
        {
            "engine": "sglang",
            "lever": "kv-cache-dtype",
            "value": "fp8",
            "source": "ledger#6 attention-kv-fp8",
        },
        {"engine": "vllm", "lever": "memory-fraction", "value": "0.95", "source": "ledger#8 kv-pressure"},
    ]
    assert [s["source"] for s in seed_arms(rows, top=2)] == [
        "ledger#3 low-bw-fp8",
        "ledger#6 attention-kv-fp8",
    ]
    assert seed_arms(rows[:2]) == []


SEEDS = [
    {"engine": "vllm", "lever": "quantization", "value": "fp8", "source": "ledger#1 low-bw-fp8"},
    {"engine": "vllm", "lever": "kv-cache-dtype", "value": "fp8", "source": "ledger#2 attention-kv-fp8"},
    {
        "engine": "vllm",
        "lever": "memory-fraction",
        "value": "0.9",
        "source": "ledger#3 kv-pressure",
    },  # = base
    {"engine": "sglang", "lever": "prefill-chunk", "value": "4096", "source": "ledger#4 prefill-chunk"},
]


def test_generate_arms_puts_seeds_after_the_baseline_without_duplicates() -> None:
    card = model_card("llama-3.1-8b")
    arms = generate_arms(card, ["vllm"], {"vllm": {"memory-fraction": 0.9}}, SEEDS)
    assert [(a.name, a.source) for a in arms[:3]] == [
        ("baseline", "catalog"),
        ("quantization=fp8", "ledger#1 low-bw-fp8"),
        ("kv-cache-dtype=fp8", "ledger#2 attention-kv-fp8"),
    ]
    assert arms[1].levers == {"memory-fraction": 0.9, "quantization": "fp8"}
    assert [a.levers for a in arms].count({"memory-fraction": 0.9, "kv-cache-dtype": "fp8"}) == 1
    assert all(a.source == "catalog" for a in arms[3:])
    assert len(arms) > 3  # the catalog's other levers follow
    assert not any(a.engine != "vllm" or "ledger#3" in a.source or "ledger#4" in a.source for a in arms)
    assert len({tuple(sorted(a.levers.items())) for a in arms}) == len(arms)
    # without seeds the catalog's kv-cache-dtype=fp8 arm is there, as a catalog arm
    plain = generate_arms(card, ["vllm"], {"vllm": {"memory-fraction": 0.9}})
    assert [a.source for a in plain if a.name == "kv-cache-dtype=fp8"] == ["catalog"]


def test_tsv_round_trips_the_source_and_reads_old_files_as_catalog(tmp_path: Path) -> None:
    arms = generate_arms(
        model_card("llama-3.1-8b"), ["vllm", "sglang"], {"vllm": {"memory-fraction": 0.9}}, SEEDS
    )
    path = tmp_path / "arms.tsv"
    write_tsv(arms, path)
    assert read_tsv(path) == arms
    assert {a.source for a in read_tsv(path)} >= {"ledger#1 low-bw-fp8", "ledger#4 prefill-chunk", "catalog"}

    old = tmp_path / "old.tsv"
    old.write_text("# engine\tarm\tlevers\nvllm\tbaseline\t\nvllm\tkv-cache-dtype=fp8\tkv-cache-dtype=fp8\n")
    got = read_tsv(old)
    assert [(a.name, a.levers, a.source) for a in got] == [
        ("baseline", {}, "catalog"),
        ("kv-cache-dtype=fp8", {"kv-cache-dtype": "fp8"}, "catalog"),
    ]


def test_same_lever_keeps_the_stronger_evidence() -> None:
    """Two rules propose quantization=fp8: the row kept is the one with the stronger evidence."""
    caps = [
        cap("l3", dram_bw_util_pct=55.0),  # low-bw-fp8, score 0.45
        cap("l2", family_shares={"gemm": 0.9}),  # weights-dominate-fp8, score 0.9
    ]
    rows = synthesize([Evidence("vllm", caps, [])])
    fp8 = [r for r in rows if r.lever == "quantization"]
    assert len(fp8) == 1 and fp8[0].rule == "weights-dominate-fp8" and fp8[0].rank == 1


def test_comm_bound_needs_its_share() -> None:
    low = cap("l2", step_budget="communication-bound", family_shares={"communication": 0.02})
    assert not [r for r in synthesize([Evidence("vllm", [low], [])]) if r.rule == "comm-bound"]
