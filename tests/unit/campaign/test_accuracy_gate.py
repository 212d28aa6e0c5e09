"""The champion's accuracy gate reads phase 5's evidence (phase5/accuracy.json), not a flag: a green
phase 5 without evidence, or a cell served with weights phase 5 did not pass, keeps the champion DRAFT."""

from __future__ import annotations

import json
from pathlib import Path

from perftune.campaign.champion import production_gates
from perftune.campaign.quantize import accuracy_evidence, judge

from .test_grounding import cell

ACC = "accuracy (phase 5)"


def acc_gate(gates: dict[str, bool]) -> tuple[str, bool]:
    (hit,) = [(k, v) for k, v in gates.items() if k.startswith(ACC)]
    return hit


def test_the_accuracy_gate_passes_only_with_evidence_for_every_served_weights() -> None:
    cells = [cell(), cell().model_copy(update={"weights": "gguf-q8_0", "config": "baseline+gguf-q8_0"})]
    assert acc_gate(production_gates(cells, {"5": "green"}, {"base": True, "gguf-q8_0": True})) == (ACC, True)
    name, ok = acc_gate(production_gates(cells, {"5": "green"}, {"base": True}))
    assert not ok and name == f"{ACC}: no passing accuracy evidence for weights gguf-q8_0"
    name, ok = acc_gate(production_gates(cells, {"5": "green"}, {"base": True, "gguf-q8_0": False}))
    assert not ok and "gguf-q8_0" in name
    name, ok = acc_gate(production_gates(cells, {"5": "green"}, None))
    assert not ok and "left no accuracy evidence" in name
    # evidence on file does not rescue a phase that is not green
    name, ok = acc_gate(production_gates(cells, {"5": "skipped"}, {"base": True, "gguf-q8_0": True}))
    assert not ok and name == f"{ACC}: phase 5 is skipped"


def test_accuracy_evidence_is_read_from_the_bundle(tmp_path: Path) -> None:
    assert accuracy_evidence(tmp_path) is None
    (tmp_path / "phase5").mkdir()
    (tmp_path / "phase5" / "accuracy.json").write_text("{torn")
    assert accuracy_evidence(tmp_path) is None  # a torn file is no evidence
    rep = {
        "reference": "base-f16",
        "weights": {
            "base-f16": {"accuracy_pass": True},
            "base": {"accuracy_pass": True},
            "gguf-q4_k_m": {"accuracy_pass": False},
        },
    }
    (tmp_path / "phase5" / "accuracy.json").write_text(json.dumps(rep))
    assert accuracy_evidence(tmp_path) == {"base-f16": True, "base": True, "gguf-q4_k_m": False}


def _eval(sanity: tuple[int, int], mmlu: list[bool]) -> dict[str, object]:
    items = {f"q{i}": ok for i, ok in enumerate(mmlu)}
    n, k = len(mmlu), sum(mmlu)
    return {
        "sanity": {"passed": sanity[0], "total": sanity[1], "replies": []},
        "tasks": {
            "mmlu": {
                "task": "mmlu",
                "n": n,
                "correct": k,
                "score_pct": 100.0 * k / n,
                "ci95": [0.0, 100.0],
                "items": items,
            }
        },
    }


def test_judge_passes_an_identical_candidate_and_fails_a_worse_one() -> None:
    ref = _eval((5, 5), [True] * 600 + [False] * 400)
    ok, why, tasks = judge(ref, _eval((5, 5), [True] * 600 + [False] * 400), 1.0)
    assert ok and why == [] and tasks["mmlu"]["decision"] == "pass" and tasks["mmlu"]["delta_pts"] == 0
    # the same agreement on 100 items bounds a loss at 3.7 points only: not a pass at 1 point
    small = _eval((5, 5), [True] * 60 + [False] * 40)
    ok, why, tasks = judge(small, small, 1.0)
    assert not ok and tasks["mmlu"]["decision"] == "inconclusive"
    ref = _eval((5, 5), [True] * 60 + [False] * 40)
    ok, why, tasks = judge(ref, _eval((5, 5), [False] * 30 + [True] * 30 + [False] * 40), 1.0)
    assert not ok and tasks["mmlu"]["decision"] == "fail" and why[0].startswith("mmlu fail: delta -30.0 pts")
    big = _eval((5, 5), [True] * 600 + [False] * 400)
    ok, why, _ = judge(big, _eval((3, 5), [True] * 600 + [False] * 400), 1.0)
    assert not ok and why == ["known-answer sanity 3/5"]
    # a few flips either way: not provably within 1 point at n=100, so not a pass
    mixed = [True] * 58 + [False, False] + [False] * 38 + [True, True]
    ok, why, tasks = judge(ref, _eval((5, 5), mixed), 1.0)
    assert not ok and tasks["mmlu"]["decision"] == "inconclusive" and "raise the item count" in why[0]


def test_optimize_refuses_a_quant_target_before_any_folder_exists(tmp_path: Path) -> None:
    import pytest

    from perftune.campaign.pipeline import run_campaign
    from perftune.campaign.state import Intent
    from perftune.errors import ConfigError

    def intent(engines: list[str], schemes: list[str], ack: bool = False) -> Intent:
        return Intent.model_validate(
            {"model": "llama-3.1-8b", "engines": engines, "quant_schemes": schemes, "ack_compute": ack}
        )

    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match="simulator models FP8 weights only, not nvfp4"):
        run_campaign(runs_dir=runs, intent=intent(["sim"], ["nvfp4"]), lake=tmp_path / "l.duckdb")
    pytest.importorskip("llama_cpp")
    with pytest.raises(ConfigError, match=r"refused: --quant-target would run 1 quantization job\(s\)") as e:
        run_campaign(runs_dir=runs, intent=intent(["llamacpp"], ["gguf-q8_0"]), lake=tmp_path / "l.duckdb")
    assert "--ack-compute" in e.value.hint
    assert not runs.exists() and not (tmp_path / "l.duckdb").exists()
    from perftune.campaign.quantize import preflight

    preflight(intent(["sim"], ["fp8"]))  # modelled on the simulator: no job runs, no ack needed
    preflight(intent(["llamacpp"], ["gguf-q8_0"], ack=True))


def test_the_control_blames_the_gate_only_when_the_reference_fails_it_too(
    tmp_path: Path, monkeypatch: object
) -> None:
    from perftune.campaign import quantize

    ref = _eval((5, 5), [True] * 60 + [False] * 40)
    reruns: list[dict[str, object]] = []
    monkeypatch.setattr(quantize, "evaluate", lambda *a, **k: reruns[-1])  # type: ignore[attr-defined]
    items = {"mmlu": []}
    reruns.append(ref)  # the reference reproduces itself: the quantized weights failed
    c = quantize.control(None, "llamacpp", "base", "chat", items, ref, ["mmlu"], False, 1.0)  # type: ignore[arg-type]
    assert c["attributed_to"] == "model"
    reruns.append(_eval((5, 5), [False] * 30 + [True] * 30 + [False] * 40))  # it fails its own re-run
    c = quantize.control(None, "llamacpp", "base", "chat", items, ref, ["mmlu"], False, 1.0)  # type: ignore[arg-type]
    assert c["attributed_to"] == "gate" and "fails against its own re-run" in c["evidence"][0]
    broken = _eval((1, 5), [True] * 60 + [False] * 40)  # raw completions: the reference fails sanity too
    c = quantize.control(None, "llamacpp", "base", "completions", items, broken, [], True, 1.0)  # type: ignore[arg-type]
    assert c["attributed_to"] == "gate" and "also fails known-answer sanity (1/5)" in c["evidence"][0]


def test_a_task_too_small_to_bound_the_tolerance_gates_as_fail_only() -> None:
    def with_he(mmlu: list[bool], he: list[bool]) -> dict[str, object]:
        e = _eval((5, 5), mmlu)
        e["tasks"]["humaneval"] = {  # type: ignore[index]
            "task": "humaneval",
            "n": len(he),
            "correct": sum(he),
            "score_pct": 100.0 * sum(he) / len(he),
            "ci95": [0.0, 100.0],
            "items": {f"HumanEval/{i}": ok for i, ok in enumerate(he)},
        }
        return e

    mmlu = [True] * 600 + [False] * 400
    ref = with_he(mmlu, [True] * 20 + [False] * 20)
    # identical HumanEval answers on 40 problems: even all 164 could not bound a 1-point drop
    ok, why, tasks = judge(ref, with_he(mmlu, [True] * 20 + [False] * 20), 1.0)
    assert ok and why == [] and tasks["humaneval"]["decision"] == "underpowered"
    assert "cannot bound a 1-point drop" in tasks["humaneval"]["reason"]
    # but it still fails a real drop: 10 of 20 solved problems lost
    ok, why, tasks = judge(ref, with_he(mmlu, [True] * 10 + [False] * 30), 1.0)
    assert not ok and tasks["humaneval"]["decision"] == "fail" and why[0].startswith("humaneval fail")
