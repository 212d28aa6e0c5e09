"""Phase 7 against a speculating standing config (`specdec --against METHOD:K`, `optimize --spec-against`):
the standing arm deploys with that method, the candidates carry only their own spec levers, a candidate
identical to the standing config is refused, and the gate's acceptance reference is the standing
config's own measured length, not 1.0."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from perftune.campaign.specdec import _decide, candidates, preflight, to_train
from perftune.campaign.state import Intent, SpecIntent
from perftune.errors import ConfigError
from perftune.serving.specdec import parse_against


def _intent(**kw: Any) -> Intent:
    return Intent(model="m", engines=["vllm"], **kw)


def test_against_is_parsed_and_a_bad_form_is_refused_naming_the_form() -> None:
    assert parse_against("ngram:3") == ("ngram", 3) and parse_against(" mtp:1") == ("mtp", 1)
    for bad in ("ngram", "ngram:0", "ngram:17", "medusa:3", "ngram:x", ":3"):
        with pytest.raises(ValueError, match="is not METHOD:K"):
            parse_against(bad)
    with pytest.raises(ValidationError, match=r"e\.g\. ngram:3"):
        SpecIntent(against="ngram")


def test_the_standing_arm_speculates_and_candidates_carry_only_their_own_spec_levers() -> None:
    i = _intent(
        spec_methods=["eagle3"], spec_ks=[3], spec_against="ngram:3", spec_draft_model="/heads/e3",
        levers={"vllm": {"batch-cap": 128, "spec-method": "mtp", "spec-k": 2}},
    )  # fmt: skip
    standing, by = candidates(i, "vllm", "0.26.0")
    assert standing.name == "standing"
    assert standing.levers == {"batch-cap": 128, "spec-method": "ngram", "spec-k": 3}
    (arm,) = by["eagle3"]
    assert arm.levers == {
        "batch-cap": 128,
        "spec-method": "eagle3",
        "spec-k": 3,
        "spec-draft-model": "/heads/e3",
    }
    # without --against the campaign's own levers stand, speculation included
    standing, by = candidates(
        i.model_copy(update={"spec": i.spec.model_copy(update={"against": None})}), "vllm", "0.26.0"
    )
    assert standing.levers == {"batch-cap": 128, "spec-method": "mtp", "spec-k": 2}


def test_a_candidate_equal_to_the_standing_config_is_dropped_or_refused() -> None:
    i = _intent(spec_methods=["ngram"], spec_ks=[2, 3], spec_against="ngram:3")
    _, by = candidates(i, "vllm", "0.26.0")
    assert [a.levers["spec-k"] for a in by["ngram"]] == [2]
    with pytest.raises(ConfigError, match="is the standing config itself"):
        candidates(_intent(spec_methods=["ngram"], spec_ks=[3], spec_against="ngram:3"), "vllm", "0.26.0")


def test_a_standing_method_the_engine_cannot_run_or_without_its_draft_fails_before_any_deploy() -> None:
    i = _intent(spec_methods=["ngram"], spec_ks=[3], spec_against="eagle3:3")
    assert to_train(i) == ["eagle3"]  # phase 6 would train the standing config's head
    with pytest.raises(ConfigError, match="refused: eagle3 has no draft"):
        preflight(i)
    with pytest.raises(ConfigError, match="needs a draft"):
        candidates(i, "vllm", "0.26.0")
    with pytest.raises(ConfigError, match="not supported by llamacpp"):
        candidates(
            Intent(
                model="m", engines=["llamacpp"], spec_methods=["ngram"], spec_ks=[3], spec_against="mtp:3"
            ),
            "llamacpp",
            None,
        )


def _cell(
    wl: str, acc: list[float], st_acc: list[float], sp: float, ci: tuple[float, float]
) -> dict[str, Any]:
    return {
        "workload": wl, "concurrency": 1, "accept_length": acc, "standing_accept_length": st_acc,
        "tpot_speedup": sp, "tpot_speedup_ci95": list(ci), "loop_share": 0.0, "standing_loop_share": 0.0,
    }  # fmt: skip


def test_the_gate_measures_acceptance_against_the_standing_configs_own_length() -> None:
    # eagle3 drafts 2.0 tokens per step where ngram drafts 1.3: an acceptance win against ngram; the
    # same lengths against a standing ngram that accepts 2.5 are a loss, whatever the latency did
    win = {
        "standing_speculates": True,
        "cells": [_cell("chat", [2.0, 2.05, 1.95], [1.3, 1.31, 1.29], 1.2, (1.1, 1.3))],
    }
    g = _decide(win, 1)
    assert g["verdict"] == "ship" and g["calls"][0]["acceptance"] == "win"
    lose = {
        "standing_speculates": True,
        "cells": [_cell("chat", [2.0, 2.05, 1.95], [2.5, 2.5, 2.5], 1.2, (1.1, 1.3))],
    }
    g = _decide(lose, 1)
    assert g["verdict"] == "do-not-ship" and g["calls"][0]["acceptance"] == "loss"
    assert "vs 2.50" in g["calls"][0]["why"]
    # a speculating standing config whose acceptance the engine did not report: not measured, not 1.0
    unknown = {"standing_speculates": True, "cells": [_cell("chat", [2.0, 2.05, 1.95], [], 1.2, (1.1, 1.3))]}
    g = _decide(unknown, 1)
    assert g["verdict"] == "do-not-ship" and g["calls"][0]["acceptance"] == "not measured"
    assert "the standing config's, not reported" in g["calls"][0]["why"]
    # a standing config that does not speculate is judged against 1.0 token per step, as before
    plain = {"standing_speculates": False, "cells": [_cell("chat", [1.3, 1.31, 1.29], [], 1.2, (1.1, 1.3))]}
    assert _decide(plain, 1)["calls"][0]["acceptance"] == "win"
