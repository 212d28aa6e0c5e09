"""A cell's failed share comes from the counts it was built with; an older cell reads its summary."""

import json
from pathlib import Path
from typing import Any

from perftune.campaign.base import Ctx
from perftune.campaign.cells import failed_share
from perftune.campaign.state import CampaignState, Cell, Intent


def _cell(**kw: Any) -> Cell:
    base: dict[str, Any] = dict(cell_id="c", phase="8", engine="sim", config="baseline", levers={})
    base |= dict(workload="random", concurrency=4, gpus=1, path="cells/c", output_tok_s=1.0)
    base |= dict(output_tok_s_std=None, output_tok_s_ci95=None, tpot_median_ms=None, tpot_ci95=None)
    base |= dict(ttft_mean_ms=None, trials=3, sol_pct=None, ceiling_key=None, tier="DRAFT", simulated=True)
    base |= dict(prefix_cache=None, context={})
    return Cell.model_validate(base | kw)


def _ctx(run_dir: Path) -> Ctx:
    intent = Intent.model_validate({"model": "llama-3.1-8b", "engines": ["sim"]})
    return Ctx(run_dir, CampaignState(run_id="r", created_at="t", intent=intent, phases={}), lambda _m: None)


def test_counts_on_the_cell_need_no_file(tmp_path: Path) -> None:
    assert failed_share(_ctx(tmp_path / "missing"), _cell(requests_sent=40, requests_ok=30)) == 0.25


def test_an_older_cell_reads_its_summary(tmp_path: Path) -> None:
    (tmp_path / "cells" / "c").mkdir(parents=True)
    trials = [{"counts": {"sent": 10, "ok": 10}}, {"counts": {"sent": 10, "ok": 5}}]
    (tmp_path / "cells" / "c" / "summary.json").write_text(json.dumps({"trials": trials}))
    assert failed_share(_ctx(tmp_path), _cell()) == 0.25


def test_a_report_line_carries_the_serving_context_of_its_cell() -> None:
    from perftune.campaign.report import cell_line

    ctx = {
        "hardware": "1xh200",
        "parallelism": {"tp": 2},
        "quantization": "fp8 weights (checkpoint quantization_config: fp8 block [128, 128])",
        "kv_cache_dtype": "fp8 (lever kv-cache-dtype=fp8)",
        "stack": {"engine_version": "0.26.0"},
        "workload": {"isl": 1024, "osl": 128},
    }
    line = cell_line(_cell(engine="vllm", levers={"kv-cache-dtype": "fp8"}, context=ctx, simulated=False))
    assert "(kv-cache-dtype=fp8) on 1xh200 [TP=2, fp8 weights, KV fp8]" in line
    assert "random 1024/128, c=4, 3 trials, DRAFT" in line


def test_phase_8_benches_only_the_shipped_variants_an_engine_loads(tmp_path: Path) -> None:
    from perftune.campaign.cells import hardware_label, model_to_serve, suite_weights
    from perftune.campaign.state import Weights

    ctx = _ctx(tmp_path)
    f = ctx.state.facts
    for name, engines in (
        ("gguf-q8_0", ["llamacpp"]),
        ("fp8-dynamic", ["vllm", "sglang"]),
        ("w4a16", ["vllm"]),
    ):
        f.weights[name] = Weights(name=name, path=f"/w/{name}", scheme=name, backend="b", engines=engines)
    f.shipped = ["fp8-dynamic", "gguf-q8_0"]  # w4a16 was judged no-ship: never benched
    assert suite_weights(ctx, "vllm") == ["base", "fp8-dynamic"]
    assert suite_weights(ctx, "llamacpp") == ["base", "gguf-q8_0"]
    assert model_to_serve(ctx, "vllm", "fp8-dynamic") == "/w/fp8-dynamic"
    assert model_to_serve(ctx, "sim") == "llama-3.1-8b"
    # a CPU engine's numbers are labelled with the CPU, a GPU engine's with the campaign's GPUs
    assert hardware_label(ctx, "llamacpp").startswith("cpu (")
    assert hardware_label(ctx, "llamacpp", {"gpu-layers": 99}) == hardware_label(ctx, "vllm") == "1xh100"


def test_phase8_benches_a_shipped_spec_config_and_not_a_rejected_one(tmp_path: Path) -> None:
    from perftune.campaign.cells import suite_configs

    ctx = _ctx(tmp_path)
    ship = {"spec-method": "ngram", "spec-k": 4}
    ctx.state.facts.spec = {
        "sim": {
            "ngram": {"verdict": "ship", "levers": ship},
            "eagle3": {"verdict": "do-not-ship", "levers": {"spec-method": "eagle3", "spec-k": 3}},
        }
    }
    assert suite_configs(ctx, "sim") == [("baseline", {}), ("spec-ngram", ship)]
    assert suite_configs(ctx, "vllm") == [("baseline", {})]
