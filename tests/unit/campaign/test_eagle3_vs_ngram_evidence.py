"""Phase 7 over the A/B measured on the GPU host (vLLM 0.26.0, 1x H200, SmolLM2-135M-Instruct): a trained
EAGLE-3 head (phase 6, speculators) K=3 against ngram K=3 as the standing config, c=1 and 32, committed in
benchmarks/results/2026-12-04-h200-vllm-0.26.0-eagle3-vs-ngram. The lease ended during the candidate's
third deploy: the journal records five of six deploys, and the replay counts what it records."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from perftune.campaign.specdec import _decide, _standing_accept, _workload_ab

ROOT = Path(__file__).resolve().parents[3]
EV = ROOT / "benchmarks/results/2026-12-04-h200-vllm-0.26.0-eagle3-vs-ngram"


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("specdec_replay", ROOT / "scripts/gpu/specdec_replay.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("replay")
    args = [
        str(EV),
        "--model",
        "smollm2-135m-instruct",
        "--hardware",
        "1x NVIDIA H200",
        "--version",
        "0.26.0",
    ]
    assert mod.main([*args, "--out", str(out)]) == 0
    rep = json.loads((out / "specdec.json").read_text())
    return {"rep": rep, "md": (out / "SPECDEC.md").read_text()}


def test_the_committed_report_is_what_the_replay_computes(replayed: dict[str, Any]) -> None:
    assert replayed["rep"] == json.loads((EV / "specdec.json").read_text())
    assert replayed["md"] == (EV / "SPECDEC.md").read_text()


def test_the_head_loses_on_tokens_per_step_and_is_do_not_ship(replayed: dict[str, Any]) -> None:
    m = replayed["rep"]["engines"]["vllm"]["methods"]["eagle3"]
    ab = m["ab"]
    assert ab["standing_speculates"] and ab["replayed"]["missing_deploys"] == ["eagle3-k3 trial 3"]
    cells = {(c["workload"], c["concurrency"]): c for c in ab["cells"]}
    assert len(cells) == 4
    for c in cells.values():
        assert len(c["standing_tpot_ms"]) == 3 and c["trials"] == 2  # the cut deploy is not counted
        # prompt lookup: long drafts on few steps; the head: short drafts on every step
        assert min(c["standing_accept_length"]) > 3.0 and max(c["accept_length"]) < 1.4
        assert min(c["standing_tokens_per_step"]) > 1.4 and max(c["tokens_per_step"]) < 1.35
    g = m["gate"]
    assert g["verdict"] == "do-not-ship" and g["concurrency"] == 1
    assert {c["workload"]: c["acceptance"] for c in g["calls"]} == {"chat": "loss", "code": "loss"}
    # the head is faster per token all the same (a different model runner: see the README)
    code = next(c for c in g["calls"] if c["workload"] == "code")
    assert code["latency"] == "win" and "tokens per step" in code["why"]
    assert g["suite_tpot_speedup"] > 1.2


def test_two_speculating_configs_compare_tokens_per_step_not_per_draft_length() -> None:
    """A per-draft length is conditional on a draft: 3.4 on 1 step in 6 buys fewer tokens per step than
    1.6 on every step. Compared per draft the candidate would lose; per step it wins."""
    cell = {
        "workload": "chat",
        "concurrency": 1,
        "accept_length": [1.6, 1.62, 1.58],
        "standing_accept_length": [3.4, 3.45, 3.42],
        "tokens_per_step": [1.6, 1.62, 1.58],
        "standing_tokens_per_step": [1.4, 1.41, 1.39],
        "tpot_speedup": 1.2,
        "tpot_speedup_ci95": [1.1, 1.3],
    }
    ab = {"standing_speculates": True, "cells": [cell]}
    w = _workload_ab(ab, cell, dummy=False)
    assert w.unit == "tokens per step" and w.standing_accept_len == pytest.approx(1.4)
    assert _decide(ab, 1)["verdict"] == "ship"
    # without tokens per step from the standing arm: the per-draft length, and the candidate loses
    old = {**cell, "standing_tokens_per_step": []}
    assert _workload_ab(ab, old, dummy=False).standing_accept_len == _standing_accept(ab, old)
    assert _decide({**ab, "cells": [old]}, 1)["verdict"] == "do-not-ship"
    # against no speculation the reference stays 1.0 and the per-draft length is used
    plain = {"standing_speculates": False, "cells": [cell]}
    assert _workload_ab(plain, cell, dummy=False).unit == "acceptance length"
