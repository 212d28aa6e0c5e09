"""Phase 7's decision and report over the A/B measured on the GPU host (vLLM 0.26.0, 1x H200,
SmolLM2-135M-Instruct, ngram K=4 vs no speculation, 3 interleaved trials, c=1 and 32; committed in
benchmarks/results/2026-12-03-h200-vllm-0.26.0-specdec): random token ids make the model loop, so that
workload's 1.5x win is left out; chat and code lose; the method is do-not-ship."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from perftune.campaign.specdec import _decide, _screen_md, crossover, degenerate, dummy_weights

EV = Path(__file__).resolve().parents[3] / "benchmarks/results/2026-12-03-h200-vllm-0.26.0-specdec"


@pytest.fixture(scope="module")
def ngram() -> dict[str, Any]:
    rep = json.loads((EV / "specdec.json").read_text())
    return dict(rep["engines"]["vllm"]["methods"]["ngram"])


def test_the_measured_ab_is_do_not_ship_and_the_looping_workload_is_left_out(ngram: dict[str, Any]) -> None:
    cells = {(c["workload"], c["concurrency"]): c for c in ngram["ab"]["cells"]}
    assert len(cells) == 6 and all(c["trials"] == 3 for c in cells.values())
    rnd = cells[("random", 1)]
    assert rnd["loop_share"] > 0.9 and rnd["tpot_speedup_ci95"][0] > 1.0  # a "win" on looping output
    assert degenerate(rnd, dummy=False) is not None and degenerate(cells[("chat", 1)], dummy=False) is None
    g = _decide(ngram["ab"], 1)
    assert g["verdict"] == "do-not-ship"
    assert any(r.startswith("random: left out") for r in g["reasons"])
    assert "loses latency on chat" in g["reasons"]
    # with the looping workload counted the suite would look better than it is
    assert g["suite_tpot_speedup"] < _geo([cells[(w, 1)]["tpot_speedup"] for w in ("chat", "code", "random")])
    # declared dummy weights: nothing is evidence
    gd = _decide(ngram["ab"], 1, dummy=True)
    assert gd["verdict"] == "do-not-ship" and gd["reasons"][0] == "no workload with non-degenerate outputs"


def test_tokens_per_step_explain_the_loss(ngram: dict[str, Any]) -> None:
    # an accepted draft carries ~3.9 tokens, but prompt lookup drafts on ~1 step in 5 on chat: each
    # step yields ~1.6 tokens while costing ~3x a plain step
    chat = next(c for c in ngram["ab"]["cells"] if c["workload"] == "chat" and c["concurrency"] == 1)
    acc = sum(chat["accept_length"]) / 3
    tps = sum(chat["tokens_per_step"]) / 3
    assert 3.5 < acc < 4.5 and 1.3 < tps < 1.9
    spec_step = sum(chat["tpot_ms"]) / 3 * tps
    assert spec_step > 2 * sum(chat["standing_tpot_ms"]) / 3


def test_crossover_per_workload_and_the_k_screen_table(ngram: dict[str, Any]) -> None:
    ab = ngram["ab"]
    assert crossover(ab, "random") == 32 and crossover(ab, "chat") == 1 and crossover(ab) == 1
    md = "\n".join(_screen_md(ngram["k_screen"]))
    assert "| K | geo-mean TPOT ms | chat | code | random |" in md
    assert md.count("\n| ") == 7  # the header, its rule and K = 1..5


def test_dummy_weights_are_read_from_the_engine_args() -> None:
    def ctx(args: list[str]) -> Any:
        return SimpleNamespace(intent=SimpleNamespace(serving=SimpleNamespace(engine_args={"vllm": args})))

    assert dummy_weights(ctx(["--load-format=dummy"]), "vllm")
    assert dummy_weights(ctx(["--load-format", "dummy"]), "vllm")
    assert not dummy_weights(ctx(["--load-format", "safetensors"]), "vllm")
    assert not dummy_weights(ctx([]), "sglang")


def _geo(xs: list[float]) -> float:
    p = 1.0
    for x in xs:
        p *= x
    return float(p ** (1 / len(xs)))


def test_the_lake_keeps_tokens_per_step_loops_and_the_gate_call_per_row(tmp_path: Path) -> None:
    import duckdb

    from perftune.campaign.publish import spec_rows
    from perftune.lake.db import publish_rows

    run = tmp_path / "run"
    (run / "phase7").mkdir(parents=True)
    (run / "phase7" / "specdec.json").write_text((EV / "specdec.json").read_text())
    state = SimpleNamespace(intent=SimpleNamespace(model=SimpleNamespace(ref="smollm2-135m-instruct")))
    rows = spec_rows(run, "cid", state)  # type: ignore[arg-type]
    assert len(rows) == 6
    publish_rows(tmp_path / "lake.duckdb", "cid", {"spec": rows})
    with duckdb.connect(str(tmp_path / "lake.duckdb"), read_only=True) as con:
        got = con.execute(
            "SELECT workload, concurrency, round(tokens_per_step, 2), loop_share > 0.5, gate_call, "
            "workload_crossover_concurrency, verdict FROM spec ORDER BY concurrency, workload"
        ).fetchall()
    assert got == [
        ("chat", 1, 1.57, False, "loss", 1, "do-not-ship"),
        ("code", 1, 1.71, False, "inconclusive", 1, "do-not-ship"),
        ("random", 1, 3.72, True, "degenerate", 32, "do-not-ship"),
        ("chat", 32, 1.71, False, None, 1, "do-not-ship"),
        ("code", 32, 1.72, False, None, 1, "do-not-ship"),
        ("random", 32, 3.78, True, None, 32, "do-not-ship"),
    ]
