"""Pure metric maths over decoded request records. Each metric's formula lives in DEFINITIONS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from perftune.bench.load import LoadReport
from perftune.bench.records import RequestRecord
from perftune.bench.stats import AcrossTrials, Dist, across_trials, dist
from perftune.errors import ConfigError
from perftune.telemetry.gpu import GpuTrialState
from perftune.telemetry.prom import EngineTrialFigures

DEFINITIONS: dict[str, str] = {
    "ttft_ms": "arrival of the first chunk that carries generated tokens - request send; role-only, empty "
    "and keep-alive chunks do not count",
    "tpot_ms": "(e2e_ms - ttft_ms) / (output_tokens - 1), per request (requests with >= 2 output tokens)",
    "itl_ms": "per token: a token chunk's gap to the previous token chunk divided by its token count, "
    "repeated once per token (tokens of the first chunk have none)",
    "icl_ms": "gap between consecutive token-carrying chunks (inter-chunk latency)",
    "e2e_ms": "arrival of the last byte of the response - request send",
    "e2e_from_schedule_ms": "arrival of the last byte - scheduled send (includes client queueing)",
    "client_queue_ms": "request send - scheduled send: time a request waited inside the client "
    "(open loop: behind its arrival time; closed loop: after its slot freed)",
    "output_tok_s": "sum of output tokens of successful requests / trial span (first scheduled send to "
    "last response byte)",
    "total_tok_s": "(input + output tokens of successful requests) / trial span",
    "req_s": "successful requests / trial span",
    "goodput_req_s": "requests meeting every SLO / trial span (failed requests never meet an SLO)",
    "goodput_fraction": "requests meeting every SLO / all requests sent, failed ones included",
    "tpot_median_ms": "per trial the median (p50) of per-request tpot_ms; across trials mean, std, CI",
    "decode_sol_pct": "analytical decode roofline step floor (perftune.hardware.roofline, at the bytes "
    "really read: the checkpoint's weight dtype and the quantization / KV-cache dtype levers, batch = "
    "concurrency, context = mean input + osl/2) / measured median TPOT, in %",
}

HEADLINE = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "output_tok_s", "req_s")
SLO_KEYS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "e2e_from_schedule_ms")


def parse_slo(text: str | None) -> dict[str, float]:
    """`ttft_ms=200,tpot_ms=40` -> {'ttft_ms': 200.0, 'tpot_ms': 40.0}; per-request upper bounds."""
    if not text:
        return {}
    out: dict[str, float] = {}
    for part in text.split(","):
        key, sep, val = part.strip().partition("=")
        if not sep or key not in SLO_KEYS:
            raise ConfigError(
                f"bad SLO term '{part.strip()}'",
                hint=f"write KEY=MS with KEY in {', '.join(SLO_KEYS)}, e.g. ttft_ms=200,tpot_ms=40",
            )
        try:
            out[key] = float(val)
        except ValueError as e:
            raise ConfigError(f"SLO value for {key} is not a number: '{val}'", hint="e.g. ttft_ms=200") from e
        if out[key] <= 0:
            raise ConfigError(f"SLO bound for {key} must be > 0", hint="e.g. ttft_ms=200")
    return out


def meets_slo(rec: RequestRecord, slo: dict[str, float]) -> bool:
    if not rec.ok:
        return False
    for key, bound in slo.items():
        if key == "itl_ms":
            itl = rec.itl_ms()
            value: float | None = sum(itl) / len(itl) if itl else None
        else:
            value = getattr(rec, key)
        if value is not None and value > bound:
            return False
    return True


class Counts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sent: int = Field(description="requests sent in the trial")
    ok: int = Field(description="requests that completed with generated tokens")
    errors: int = Field(
        description="requests that failed other than by timeout or cancel: HTTP error status, stream "
        "error, connection error, stream dropped mid-response (the last two also counted below)"
    )
    dropped: int = Field(
        0,
        description="of errors: responses that broke off after their 200 head (connection closed or "
        "reset mid-stream); their records keep the tokens received",
    )
    connection_errors: int = Field(
        0, description="of errors: requests that never got a response head (refused, reset, closed)"
    )
    timeouts: int = Field(description="requests past the per-request timeout")
    cancelled: int = Field(description="requests cancelled (interrupt or trial stop)")
    input_mismatch: int = Field(description="requests whose usage.prompt_tokens differs from the sent length")
    output_mismatch: int = Field(description="fixed-output requests that did not get exactly max_tokens")
    input_tokens: int = Field(description="sum of usage.prompt_tokens of successful requests")
    output_tokens: int = Field(description="sum of output tokens of successful requests")
    token_sources: dict[str, int] = Field(description="how output tokens were counted, per request")


class TrialResult(BaseModel):
    """One trial, all summaries derived from its request records."""

    model_config = ConfigDict(extra="forbid")
    trial: int = Field(description="trial index, 0-based; warmup is not a trial")
    span_s: float = Field(description="first scheduled send to last response byte, seconds")
    counts: Counts
    ttft_ms: Dist
    tpot_ms: Dist
    itl_ms: Dist
    icl_ms: Dist
    e2e_ms: Dist
    e2e_from_schedule_ms: Dist
    client_queue_ms: Dist
    tokens_per_chunk: Dist = Field(description="output tokens per token-carrying chunk")
    output_tok_s: float
    total_tok_s: float
    req_s: float
    goodput_req_s: float | None = Field(description="None when no SLO was given")
    goodput_fraction: float | None = Field(description="None when no SLO was given")
    load: LoadReport
    engine_prefix_cache_hit_rate: float | None = Field(
        None, description="prefix-cache hits / queries during the trial, from the engine's /metrics counters"
    )
    outlier: bool = Field(
        False, description="output tok/s more than 15% off the median of all trials (needs >= 3 trials)"
    )
    flags: list[str] = Field(
        default_factory=list,
        description="why this trial is suspect: compilation in the engine log during the trial, a "
        "simulator that fell behind its virtual schedule",
    )
    engine_log_compile_lines: int | None = Field(
        None, description="engine-log lines with a compilation marker written during the trial (None: no log)"
    )
    sim_stats: dict[str, Any] | None = Field(
        None, description="perftune-sim GET /sim/stats after the trial: schedule_lag_ms, late_steps, faithful"
    )
    gpu: GpuTrialState | None = Field(
        None, description="this host's GPUs during the trial (NVML): clocks, power, throttle reasons"
    )
    engine: EngineTrialFigures | None = Field(
        None, description="the engine's own figures for the trial, from its /metrics"
    )
    first_wave_s: tuple[float, float] | None = Field(
        None,
        description="closed loop: first and last completion of the first `concurrency` requests sent, "
        "seconds from the trial's start",
    )


def summarize_trial(
    trial: int,
    records: Sequence[RequestRecord],
    load: LoadReport,
    slo: dict[str, float],
    engine_prefix_cache_hit_rate: float | None = None,
) -> TrialResult:
    ok = [r for r in records if r.ok]
    t0 = min((r.t_sched_ns for r in records), default=0)
    t1 = max((r.t_end_ns for r in records), default=t0)
    span_s = max((t1 - t0) / 1e9, 1e-9)
    out_tok = sum(r.output_tokens for r in ok)
    in_tok = sum(r.input_tokens or 0 for r in ok)
    sources: dict[str, int] = {}
    for r in records:
        sources[r.token_source] = sources.get(r.token_source, 0) + 1
    itl: list[float] = []
    icl: list[float] = []
    tpc: list[float] = []
    for r in ok:
        itl.extend(r.itl_ms())
        icl.extend(r.icl_ms())
        tpc.extend(float(c.tokens) for c in r.token_chunks)

    def vals(name: str) -> list[float]:
        return [v for r in ok if (v := getattr(r, name)) is not None]

    good = sum(1 for r in records if meets_slo(r, slo)) if slo else None
    return TrialResult(
        trial=trial,
        span_s=span_s,
        counts=Counts(
            sent=len(records),
            ok=len(ok),
            errors=sum(1 for r in records if r.error_kind in ("error", "dropped", "connection")),
            dropped=sum(1 for r in records if r.error_kind == "dropped"),
            connection_errors=sum(1 for r in records if r.error_kind == "connection"),
            timeouts=sum(1 for r in records if r.error_kind == "timeout"),
            cancelled=sum(1 for r in records if r.error_kind == "cancelled"),
            input_mismatch=sum(1 for r in records if r.input_mismatch),
            output_mismatch=sum(1 for r in records if r.output_mismatch),
            input_tokens=in_tok,
            output_tokens=out_tok,
            token_sources=sources,
        ),
        ttft_ms=dist(vals("ttft_ms")),
        tpot_ms=dist(vals("tpot_ms")),
        itl_ms=dist(itl),
        icl_ms=dist(icl),
        e2e_ms=dist(vals("e2e_ms")),
        e2e_from_schedule_ms=dist(vals("e2e_from_schedule_ms")),
        client_queue_ms=dist([r.client_queue_ms for r in records]),
        tokens_per_chunk=dist(tpc),
        output_tok_s=out_tok / span_s,
        total_tok_s=(in_tok + out_tok) / span_s,
        req_s=len(ok) / span_s,
        goodput_req_s=None if good is None else good / span_s,
        goodput_fraction=None if good is None else good / max(1, len(records)),
        load=load,
        engine_prefix_cache_hit_rate=engine_prefix_cache_hit_rate,
    )


def headline_value(t: TrialResult, name: str) -> float | None:
    """The per-trial value of a headline metric: the trial mean for latencies, the rate for rates."""
    v = getattr(t, name)
    return v.mean if isinstance(v, Dist) else v


def across(trials: Sequence[TrialResult], names: Sequence[str] = HEADLINE) -> dict[str, AcrossTrials]:
    return {n: across_trials([headline_value(t, n) for t in trials]) for n in names}


def tpot_median(trials: Sequence[TrialResult]) -> AcrossTrials:
    """The per-trial median TPOT across trials (robust to the odd slow request, unlike the mean)."""
    return across_trials([t.tpot_ms.p50 for t in trials])
