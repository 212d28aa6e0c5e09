"""Every number carries its context: MeasurementContext and the pure DRAFT/VERDICT tiering."""

from __future__ import annotations

import platform
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import perftune

Tier = Literal["DRAFT", "VERDICT"]
Claim = Literal["throughput", "latency"]

# The metric a claim is judged on. A latency claim is made on the median time per output token (TPOT:
# decode only, no prefill or queueing in it); a throughput claim on output tokens per second.
CLAIM_METRICS: dict[str, str] = {"throughput": "output_tok_s", "latency": "tpot_median_ms"}


class StackInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: str = Field(
        description="serving engine as detected or declared (vllm, sglang, llamacpp, sim, mock)"
    )
    engine_version: str | None = Field(description="engine version when the server reports it")
    simulated: bool = Field(
        description="true when the server is perftune's simulator or mock: numbers are simulated"
    )
    client: str = Field(description="bench client name and version")
    client_host: str = Field(description="host the client ran on")
    python: str = Field(description="client Python version")


class WorkloadContext(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(description="random | prefix | chat | code | long")
    source: str = Field(description="prompt source (generator or corpus)")
    isl: int | None = Field(description="input tokens per request, when fixed")
    osl: int | None = Field(description="output tokens per request (max_tokens)")
    fixed_output: bool = Field(description="ignore_eos + min_tokens forced the output length")
    num_requests: int = Field(description="requests per trial")
    sha256: str = Field(description="hash of the frozen workload")
    concurrency: int | None = Field(description="closed loop concurrency")
    rate: float | None = Field(description="open loop request rate, req/s")
    arrival: str | None = Field(description="open loop arrival process")
    max_concurrency: int | None = Field(description="open loop cap on in-flight requests")


class MeasurementContext(BaseModel):
    """The full context of a measured number. Reports refuse to print a number without one."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="served model name")
    model_path: str | None = Field(None, description="model folder or id, when known")
    endpoint: str = Field(description="server base URL")
    hardware: str = Field(description="GPU model and count, or 'unknown'")
    parallelism: dict[str, int] = Field(default_factory=dict, description="tp/dp/pp/ep when known")
    quantization: str | None = Field(None, description="weight quantization, when known")
    weights: str | None = Field(
        None, description="the weight variant served: base, or a phase-4 one as 'name (scheme, backend)'"
    )
    kv_cache_dtype: str | None = Field(None, description="KV-cache dtype, when known")
    levers: dict[str, Any] = Field(default_factory=dict, description="serving levers, when known")
    stack: StackInfo
    workload: WorkloadContext
    regime: str = Field(description="cache regime, e.g. 'cold: prompts salted per trial'")
    trials: int = Field(description="counted trials")
    warmup_requests: int = Field(description="uncounted warmup requests before the trials")
    same_node: bool = Field(description="all compared numbers were taken on one node")
    baseline: str | None = Field(None, description="the named baseline this is compared to, if any")
    claim: Claim | None = Field(
        None, description="what the number is a claim about (throughput | latency); None: no single claim"
    )
    claim_metric: str | None = Field(
        None, description="the metric the claim is judged on (output_tok_s | tpot_median_ms)"
    )
    metric_isolated: bool | None = Field(
        None,
        description="the claim's metric measures only what is claimed (see metric_isolation); None: no claim",
    )
    tier: Tier = Field(
        description="DRAFT unless same-node, >= 3 trials, metric-isolated, vs a named baseline"
    )
    tier_reasons: list[str] = Field(description="why the tier is DRAFT (empty for VERDICT)")
    started_at: str = Field(description="UTC ISO time the run started")


def tier_for(
    *,
    trials: int,
    same_node: bool,
    baseline: str | None,
    metric_isolated: bool = True,
    isolation: str = "",
    outlier_trials: Sequence[int] = (),
    high_cv: Mapping[str, float] | None = None,
    flags: Sequence[str] = (),
) -> tuple[Tier, list[str]]:
    """DRAFT/VERDICT: VERDICT needs same node, >= 3 trials, an isolated metric and a named baseline,
    and trials that agree: no outlier trial, no high across-trial CV, no other measurement flag
    (compilation during a trial, a warmup that never stabilized, a simulator behind its schedule)."""
    reasons = []
    if not same_node:
        reasons.append("not same-node")
    if trials < 3:
        reasons.append(f"{trials} trial(s) < 3")
    if not metric_isolated:
        reasons.append(f"metric not isolated: {isolation}" if isolation else "metric not isolated")
    if baseline is None:
        reasons.append("no named baseline to compare to")
    if outlier_trials:
        reasons.append(
            f"outlier trial(s) {', '.join(map(str, outlier_trials))} (output tok/s off the median)"
        )
    for metric, cv in (high_cv or {}).items():
        reasons.append(f"high CV: {metric} {cv:.1%} across trials")
    reasons.extend(flags)
    return ("DRAFT" if reasons else "VERDICT"), reasons


def metric_isolation(
    claim: str | None, *, num_requests: int, concurrency: int | None
) -> tuple[bool | None, str | None, str]:
    """(isolated, the claim's metric, why) for a claim about a bench run. Pure.

    A latency claim is judged on the median TPOT, which holds decode time only: prefill and queueing
    are in TTFT, not in it, so it is isolated at any request count (output tok/s never is: at small
    request counts it is mostly ramp-up and drain). A throughput claim on output tok/s is isolated
    only when the closed loop ran at least two requests per slot, so the steady state, not the ramp
    and the drain, dominates the trial; an open loop is paced by its schedule and counts as isolated.
    No claim (a plain bench run): None, and the tier rule does not apply it."""
    if claim is None:
        return None, None, "no claim stated"
    if claim not in CLAIM_METRICS:
        raise ValueError(f"unknown claim {claim!r}; known: {', '.join(CLAIM_METRICS)}")
    metric = CLAIM_METRICS[claim]
    if claim == "latency":
        return True, metric, "median TPOT: decode time only, no prefill or queueing"
    if concurrency is None:
        return True, metric, "open loop: paced by its arrival schedule"
    if num_requests >= 2 * concurrency:
        return (
            True,
            metric,
            f"{num_requests} requests >= 2 x concurrency {concurrency}: steady state dominates",
        )
    return (
        False,
        metric,
        f"{num_requests} requests < 2 x concurrency {concurrency}: output tok/s is mostly ramp-up and drain",
    )


def stack_info(engine: str, engine_version: str | None, simulated: bool) -> StackInfo:
    return StackInfo(
        engine=engine,
        engine_version=engine_version,
        simulated=simulated,
        client=f"perftune-bench {perftune.__version__}",
        client_host=socket.gethostname(),
        python=platform.python_version(),
    )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
