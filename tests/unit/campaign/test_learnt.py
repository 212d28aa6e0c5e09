"""Failures phase 3 isolated to one lever become known-good required flags when the champion's value of
that lever is known; everything else stays a note, never a made-up row."""

from __future__ import annotations

from perftune.campaign.learnt import learnt_flags
from perftune.registry.schema import RequiredFlag
from perftune.registry.store import parse_required_flag

BASE = {"prefix-cache": True}
ARMS = {
    "vllm/baseline": BASE,
    "vllm/memory-fraction=0.98": {**BASE, "memory-fraction": 0.98},
    "vllm/batch-cap=1024": {**BASE, "batch-cap": 1024},
    "vllm/composed:a+b": {**BASE, "batch-cap": 512, "prefill-chunk": 16384},
}


def _fail(arm: str, klass: str) -> dict[str, str]:
    return {
        "arm": arm,
        "failure": klass,
        "excerpt": "torch.OutOfMemoryError: CUDA out of memory | x",
        "log": "p3/x.log",
    }


def test_an_oom_avoided_by_the_champions_value_becomes_a_boot_blocker_row() -> None:
    got = learnt_flags(
        [_fail("vllm/memory-fraction=0.98", "oom")],
        ARMS,
        BASE,
        {**BASE, "memory-fraction": 0.9},
        engine="vllm",
        engine_version="0.26.0",
        evidence="phase3/known-good-candidates.json",
    )
    assert got.notes == [] and len(got.required_flags) == 1
    row = RequiredFlag.model_validate(parse_required_flag(got.required_flags[0]))
    assert row.flag == "--gpu-memory-utilization" and row.severity == "boot-blocker"
    assert row.match == r"^(?!0\.98$)" and row.affected == "vllm 0.26.0" and row.evidence == "p3/x.log"
    # the row refuses the value that failed (and the flag's absence), not the other values of the lever
    from perftune.registry.check import value_matches

    assert value_matches(row, "0.9") and value_matches(row, "0.85") and not value_matches(row, "0.98")
    assert "memory-fraction=0.98 failed (oom)" in row.why and "|" not in row.why


def test_a_crash_under_load_maps_to_crash_high_c() -> None:
    got = learnt_flags(
        [_fail("vllm/batch-cap=1024", "wedge")],
        ARMS,
        BASE,
        {**BASE, "batch-cap": 256},
        engine="vllm",
        engine_version="0.26.0",
        evidence="e",
    )
    row = RequiredFlag.model_validate(parse_required_flag(got.required_flags[0]))
    assert row.flag == "--max-num-seqs" and row.match == "^(?!1024$)" and row.severity == "crash-high-c"


def test_no_row_without_an_isolated_cause_or_a_known_avoiding_value() -> None:
    got = learnt_flags(
        [
            _fail("vllm/composed:a+b", "crash"),  # two levers changed: cause not isolated
            _fail("vllm/memory-fraction=0.98", "oom"),  # champion keeps the default: nothing to require
            _fail("vllm/unknown-arm", "boot"),  # levers not on file
            _fail("sglang/x", "boot"),  # another engine's arm
        ],
        ARMS,
        BASE,
        BASE,
        engine="vllm",
        engine_version=None,
        evidence="e",
    )
    assert got.required_flags == [] and len(got.notes) == 3
    assert "not isolated" in got.notes[0] and "no flag to require" in got.notes[1]
