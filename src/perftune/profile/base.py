"""What every profiler layer shares: the capture it returns and the validation gate.

A layer (L1 host sampling, L2 kernel timeline, L3 DRAM counters, L4 per-kernel ncu, and the
simulator's own step breakdown) runs against a live deployment during a load window and returns a
`Capture`: its status, the artifacts it wrote (paths relative to the run folder) and the figures read
from them. The synthesis (phase 2.5) reads only `ok` captures; a `failed` capture ("capture failed":
zero kernels, no samples, counters all zero) is shown red and never read as a finding; a `skipped`
one says why it could not run here and how to enable it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

LAYERS = ("l1", "l2", "l3", "l4")
LAYER_NAMES = {
    "l1": "L1 host sampling (py-spy)",
    "l2": "L2 kernel timeline (engine torch profiler)",
    "l3": "L3 DRAM counters (NVML GPM)",
    "l4": "L4 per-kernel (Nsight Compute)",
    "sim": "simulated step breakdown (perftune-sim)",
}
# sol_rigor of the evidence a layer gives (L1 says nothing about bytes: analytical).
RIGOR = {
    "l1": "L0 analytical",
    "l2": "L2 kernel timeline",
    "l3": "L3 DRAM counters",
    "l4": "L4 per-kernel",
    "sim": "L0 analytical (SIMULATED)",
}


class Capture(BaseModel):
    """One layer's capture of one window (engine, concurrency)."""

    model_config = ConfigDict(extra="forbid")
    layer: str = Field(description="l1 | l2 | l3 | l4 | sim")
    engine: str
    concurrency: int | None = Field(None, description="the load window's concurrency (None: no window)")
    status: Literal["ok", "failed", "skipped"]
    reason: str | None = Field(None, description="why it failed or was skipped")
    hint: str | None = Field(None, description="how to enable a skipped layer")
    artifacts: list[str] = Field(default_factory=list, description="paths relative to the run folder")
    figures: dict[str, Any] = Field(default_factory=dict, description="what was read from the artifacts")
    simulated: bool = False
    evidence: bool = Field(True, description="False: not evidence about the model (never a ledger row)")

    @property
    def key(self) -> str:
        return f"{self.engine}.{self.layer}" + (f".c{self.concurrency}" if self.concurrency else "")

    @property
    def rigor(self) -> str:
        return RIGOR[self.layer]


def ok(
    layer: str,
    engine: str,
    concurrency: int | None,
    artifacts: list[str],
    figures: dict[str, Any],
    *,
    simulated: bool = False,
    evidence: bool = True,
) -> Capture:
    return Capture(
        layer=layer,
        engine=engine,
        concurrency=concurrency,
        status="ok",
        artifacts=artifacts,
        figures=figures,
        simulated=simulated,
        evidence=evidence,
    )


def skipped(layer: str, engine: str, reason: str, hint: str, concurrency: int | None = None) -> Capture:
    return Capture(
        layer=layer, engine=engine, concurrency=concurrency, status="skipped", reason=reason, hint=hint
    )


def failed(
    layer: str, engine: str, reason: str, artifacts: list[str], concurrency: int | None = None
) -> Capture:
    return Capture(
        layer=layer,
        engine=engine,
        concurrency=concurrency,
        status="failed",
        reason=f"capture failed: {reason}",
        artifacts=artifacts,
    )


def implausible(layer: str, figures: dict[str, Any]) -> str | None:
    """Why a capture's figures cannot be evidence, or None: the capture-validation gate. Pure."""
    if layer == "l1":
        if int(figures.get("samples") or 0) == 0:
            return "py-spy recorded no sample of the engine's processes"
        if float((figures.get("shares") or {}).get("profiler") or 0.0) > 0.5:
            return "most samples are the torch profiler's own trace export, not the engine's work"
    elif layer == "l2":
        if int(figures.get("kernels") or 0) == 0:
            return "the trace holds no GPU kernel"
        if float(figures.get("kernel_time_ms") or 0.0) <= 0.0:
            return "the trace's kernels have no duration"
    elif layer == "l3":
        if int(figures.get("gpm_samples") or 0) == 0:
            return "no GPM sample with a DRAM figure"
        if not any(float(figures.get(k) or 0.0) > 0.0 for k in ("dram_bw_util_pct", "sm_occupancy_pct")):
            return "every GPM counter read zero under load"
    elif layer == "l4":
        if not figures.get("kernels"):
            return "Nsight Compute profiled no kernel (filter matched nothing?)"
    elif layer == "sim" and int(figures.get("steps") or 0) == 0:
        return "the simulator ran no step in the window"
    return None


def check(cap: Capture) -> Capture:
    """An `ok` capture whose figures are implausible becomes `failed` (the gate, applied once)."""
    if cap.status != "ok":
        return cap
    why = implausible(cap.layer, cap.figures)
    if why is None:
        return cap
    return cap.model_copy(update={"status": "failed", "reason": f"capture failed: {why}"})
