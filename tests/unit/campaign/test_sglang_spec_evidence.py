"""The committed SGLang 0.5.16 n-gram evidence (benchmarks/results/2026-12-04-h200-sglang-0.5.16-ngram):
every speculating trial's acceptance was read from SGLang's counters and adds up; no trial without
speculation reports one."""

import json
from pathlib import Path
from typing import Any

import pytest

E = Path(__file__).resolve().parents[3] / "benchmarks/results/2026-12-04-h200-sglang-0.5.16-ngram"


def _specs(path: Path) -> list[dict[str, Any] | None]:
    return [(t.get("engine") or {}).get("spec") for t in json.loads(path.read_text())["trials"]]


def test_speculating_trials_carry_counter_acceptance() -> None:
    specs = _specs(E / "bench-spec-code-c1" / "summary.json")
    specs += [s for p in sorted((E / "phase7/trials").glob("*ngram-k3*/summary.json")) for s in _specs(p)]
    assert len(specs) == 3 + 6
    for s in specs:
        assert s is not None and s["source"] == "sglang counters"
        assert s["accept_length"] == pytest.approx(1 + s["accepted"] / s["drafts"])
        assert s["draft_tokens"] == 3 * s["drafts"]  # K=3: 4 draft tokens a verify step, bonus included
        assert 1.3 < s["accept_length"] < 1.8


def test_trials_without_speculation_report_no_acceptance() -> None:
    paths = sorted((E / "phase7/trials").glob("*standing*/summary.json"))
    assert len(paths) == 6
    for p in paths:
        for s in _specs(p):
            assert s is None or s.get("accept_length") is None


def test_phase7_on_sglang_says_do_not_ship() -> None:
    """ngram K=3 on SGLang wins acceptance (read from its counters) but loses TPOT on both workloads."""
    d = json.loads((E / "phase7" / "specdec.json").read_text())["engines"]["sglang"]["methods"]["ngram"]
    g = d["gate"]
    assert d["acceptance_reported"] and g["verdict"] == "do-not-ship"
    assert {c["workload"]: (c["acceptance"], c["latency"]) for c in g["calls"]} == {
        "chat": ("win", "loss"),
        "code": ("win", "loss"),
    }
    assert g["suite_tpot_speedup_ci95"][1] < 1.0
