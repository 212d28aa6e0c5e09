"""Intent in parts (model, hardware, serving, SLOs, suite, tuning), validated as a whole; the flat form
of older campaign.json files and keyword callers still reads."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from perftune.campaign.state import CampaignState, Intent

FLAT = {"model": "llama-3.1-8b", "engines": ["sim"], "isl": 256, "focus": "latency", "tune": True}


def test_the_flat_form_lands_in_its_parts() -> None:
    i = Intent.model_validate(FLAT)
    assert (i.model.ref, i.serving.engines, i.suite.isl, i.slo.focus) == (
        "llama-3.1-8b",
        ["sim"],
        256,
        "latency",
    )
    assert i.tuning.enabled and i.resolved_ladder() == [1, 4, 16]
    # a flat key on top of a nested dump wins (an update): what `perftune tune` does
    j = Intent.model_validate({**i.model_dump(), "tune_top_k": 1, "isl": 512})
    assert j.tuning.top_k == 1 and j.suite.isl == 512 and j.model.ref == "llama-3.1-8b"


def test_a_bad_part_names_its_path() -> None:
    with pytest.raises(ValidationError, match=r"tuning\.workloads"):
        Intent.model_validate({**FLAT, "tune_workloads": ["nope"]})
    with pytest.raises(ValidationError, match=r"suite\.isl"):
        Intent.model_validate({**FLAT, "isl": 0})


def test_committed_bundles_written_flat_still_load() -> None:
    root = Path(__file__).resolve().parents[3] / "benchmarks" / "results"
    files = list(root.rglob("campaign.json"))
    assert files
    for f in files:
        st = CampaignState.model_validate(json.loads(f.read_text()))
        assert st.intent.model.ref and st.intent.serving.engines
