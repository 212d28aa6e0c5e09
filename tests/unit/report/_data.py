"""Small synthetic campaign documents (campaign.json as data) for the report's unit tests."""

from __future__ import annotations

from typing import Any

PHASES = ["0", "1", "3", "8", "8.3", "8.4"]


def ctx(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "llama-3.1-8b",
        "hardware": "1xh100",
        "parallelism": {"tp": 1},
        "quantization": "bf16 weights",
        "kv_cache_dtype": "bf16",
        "levers": {},
        "stack": {"engine": "vllm", "engine_version": "0.26.0", "simulated": False},
        "workload": {"kind": "random", "isl": 1024, "osl": 128},
        "tier": "DRAFT",
    }
    return {**base, **kw}


def cell(
    phase: str = "8",
    config: str = "baseline",
    workload: str = "random",
    c: int = 16,
    *,
    engine: str = "vllm",
    tok_s: float = 1600.0,
    tpot: float | None = 8.0,
    ttft: float | None = 300.0,
    gpus: int = 1,
    simulated: bool = False,
    tier: str = "DRAFT",
    levers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cid = f"p{phase}.{engine}.{config}.{workload}.c{c}"
    return {
        "cell_id": cid,
        "phase": phase,
        "engine": engine,
        "config": config,
        "levers": levers or {},
        "workload": workload,
        "concurrency": c,
        "gpus": gpus,
        "path": f"phase{phase}/cells/{cid}",
        "output_tok_s": tok_s,
        "output_tok_s_std": 5.0,
        "output_tok_s_ci95": [tok_s - 20, tok_s + 20],
        "tpot_median_ms": tpot,
        "tpot_ci95": [tpot - 0.2, tpot + 0.2] if tpot else None,
        "ttft_mean_ms": ttft,
        "trials": 3,
        "tier": tier,
        "simulated": simulated,
        "context": ctx(
            stack={"engine": engine, "engine_version": "0.26.0", "simulated": simulated},
            workload={"kind": workload, "isl": 1024, "osl": 128},
        ),
    }


def doc(
    cells: list[dict[str, Any]] | None = None,
    *,
    status: dict[str, str] | None = None,
    champion: dict[str, Any] | None = None,
    nested: bool = True,
) -> dict[str, Any]:
    st = {p: "pending" for p in PHASES} | {"0": "green"} | (status or {})
    intent: dict[str, Any] = (
        {
            "model": {"ref": "llama-3.1-8b", "path": None},
            "hardware": {"gpu": "h100", "gpus": 1},
            "serving": {"engines": ["vllm"]},
            "slo": {"focus": "throughput", "ttft_ms": 2000.0, "tpot_ms": 50.0},
            "suite": {"workloads": ["random"], "ladder": [16, 64], "isl": 1024, "osl": 128, "trials": 3},
        }
        if nested
        else {"model": "llama-3.1-8b", "gpu": "h100", "engines": ["vllm"], "slo_tpot_ms": 50.0}
    )
    return {
        "run_id": "llama-3-1-8b-test",
        "created_at": "2026-12-02T00:00:00+00:00",
        "intent": intent,
        "phases": {p: {"id": p, "name": f"phase {p}", "status": s} for p, s in st.items()},
        "cells": {c["cell_id"]: c for c in cells or []},
        "facts": {"tp": 1, "engine_versions": {"vllm": "0.26.0"}, "champion": champion},
    }


def champion(cell_id: str, *, tier: str = "DRAFT", gates: list[str] | None = None) -> dict[str, Any]:
    return {
        "engine": "vllm",
        "config": "baseline",
        "gpus": 1,
        "levers": {"kv-cache-dtype": "fp8"},
        "prefix_cache": True,
        "cell_id": cell_id,
        "value": 1600.0,
        "ci95": [1580.0, 1620.0],
        "concurrency": 16,
        "eligible": True,
        "tier": tier,
        "metric": "output tok/s per GPU",
        "failing_gates": gates if gates is not None else ["accuracy (phase 5): phase 5 is not available"],
    }
