"""A campaign on llama-cpp-python's one-request-at-a-time server gets a suite it can run in minutes
where the user left the choice to perftune, each change recorded as a decision; flags override it."""

from __future__ import annotations

import pytest

from perftune.campaign import phases
from perftune.campaign.phases import serial_engines_only, serial_suite
from perftune.campaign.state import SUITE, Intent


def _intent(**kw: object) -> Intent:
    return Intent.model_validate({"model": "smollm2", "engines": ["llamacpp"], "workloads": SUITE, **kw})


def test_serial_suite_caps_the_ladder_drops_long_and_opens_the_context() -> None:
    decisions: list[tuple[str, str]] = []
    i = serial_suite(_intent(), 8192, decisions)
    assert i.suite.ladder == [1] and i.suite.baseline_concurrency == 1
    assert i.suite.workloads == ["random", "prefix", "chat", "code"]
    assert i.serving.levers["llamacpp"]["max-model-len"] == 8192
    assert [d for d, _ in decisions] == [
        "concurrency ladder [1], baseline c=1",
        "workloads without long",
        "llama.cpp context 8192 tokens",
    ]
    # what the user chose stays: their workloads and their context length
    mine = _intent(workloads=["code"], levers={"llamacpp": {"max-model-len": 4096}})
    i = serial_suite(mine, 131072, [])
    assert i.suite.workloads == ["code"] and i.serving.levers["llamacpp"]["max-model-len"] == 4096
    assert serial_suite(_intent(), 131072, []).serving.levers["llamacpp"]["max-model-len"] == 8192


def test_only_a_llama_cpp_python_campaign_without_a_chosen_ladder_is_serial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(phases, "llamacpp_launcher", lambda: "llama-cpp-python")
    assert serial_engines_only(_intent())
    assert not serial_engines_only(_intent(ladder=[4, 8]))
    assert not serial_engines_only(_intent(baseline_concurrency=4))
    assert not serial_engines_only(_intent(engines=["llamacpp", "vllm"]))
    monkeypatch.setattr(phases, "llamacpp_launcher", lambda: "llama-server")  # it batches
    assert not serial_engines_only(_intent())
