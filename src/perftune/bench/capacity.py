"""SLO capacity: the highest load a configuration sustains inside an SLO, found by a bounded search.

A point is one load (closed loop: a concurrency; open loop: a Poisson request rate) benched with N
counted trials. Each trial's SLO percentile of TTFT and of TPOT is taken from its own distribution;
the point passes when the across-trial mean of both meets the SLO and at most 1% of its requests
failed (a failed request is never inside the SLO). The search climbs a ladder until the first failing
point, then bisects between the highest pass and the lowest fail until the gap is within the
resolution or the point budget is spent.

Functional core: `judge_point`, `interval`, `next_load`, `summarize` and `search` (which takes the
measurement as a function) decide everything and are tested without a server. Imperative shell:
`run_capacity` benches each point into its own evidence folder and rewrites `capacity.json` after
every point, so a killed search keeps its points and a re-run in the same folder reuses them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from perftune.bench.load import Arrival
from perftune.bench.output import fmt_num
from perftune.bench.runner import BenchConfig, BenchResult, validate
from perftune.bench.session import bench_to_dir
from perftune.bench.slo import Slo, fmt_ms
from perftune.bench.stats import AcrossTrials, across_trials
from perftune.bench.workloads import MAX_NUM_REQUESTS, WorkloadSpec
from perftune.context import MeasurementContext, Tier
from perftune.errors import ConfigError
from perftune.util.atomic import write_text
from perftune.util.fs import writable_dir

Mode = Literal["closed", "open"]
CapacityTier = Literal["DRAFT", "VERDICT", "SIMULATED"]

SCHEMA = "perftune.capacity/v1"
DEFAULT_CLOSED_LADDER: tuple[int, ...] = tuple(2**k for k in range(11))  # 1, 2, 4, ..., 1024
DEFAULT_MAX_CONCURRENCY = 1024
OPEN_DOUBLINGS = 10  # open loop without a ladder: start, 2x start, ..., 1024x start
MAX_LOSS_SHARE = 0.01  # a point that loses more than 1% of its requests fails, whatever its latencies
RESULT_NAME = "capacity.json"
REPORT_NAME = "capacity.md"
# A point whose client fell behind its send schedule in some of its trials (not all: then the client
# cannot apply that load on this host) is benched again this many times, each attempt in its own
# folder, before it is judged: a passing hiccup of the client host is not the server's capacity.
BEHIND_RETRIES = 2


# ---------------------------------------------------------------- the search settings (pure)


class SearchSpec(BaseModel):
    """What the search needs to decide: the SLO, the mode, the ladder, the resolution, the budget."""

    model_config = ConfigDict(extra="forbid")
    slo: Slo = Field(description="the SLO every point is judged against")
    mode: Mode = Field("closed", description="closed: search over concurrency; open: over Poisson req/s")
    ladder: list[float] | None = Field(
        None,
        description="bracketing loads, climbed in ascending order until the first fail (closed default "
        "1, 2, 4, ..., 1024 capped at max_load; open default start_rate doubling up to max_load)",
    )
    max_load: float | None = Field(
        None,
        gt=0,
        description="cap on the default ladder (closed default 1024 concurrency; open default "
        "start_rate * 1024 req/s)",
    )
    start_rate: float = Field(1.0, gt=0, description="open loop: first rung of the default ladder, req/s")
    max_points: int = Field(10, ge=1, description="most points measured (bracket and bisection together)")
    resolution: float = Field(
        0.10,
        gt=0,
        description="bisection stops when closed: hi - lo <= max(1, resolution * lo); open: hi / lo <= "
        "1 + resolution",
    )

    @model_validator(mode="after")
    def _check_ladder(self) -> SearchSpec:
        if self.ladder is not None:
            if not self.ladder:
                raise ValueError("ladder is empty")
            if any(not math.isfinite(x) or x <= 0 for x in self.ladder):
                raise ValueError("ladder loads must be positive numbers")
            if self.mode == "closed" and any(x != int(x) for x in self.ladder):
                raise ValueError("a closed-loop ladder is concurrencies: whole numbers")
        if self.mode == "closed" and self.max_load is not None and self.max_load < 1:
            raise ValueError("max_load (a concurrency) must be >= 1")
        return self


def ladder_for(spec: SearchSpec) -> list[float]:
    """The bracketing ladder, ascending and without repeats."""
    if spec.ladder is not None:
        return sorted(set(spec.ladder))
    if spec.mode == "closed":
        cap = spec.max_load if spec.max_load is not None else DEFAULT_MAX_CONCURRENCY
        rungs = [float(c) for c in DEFAULT_CLOSED_LADDER if c <= cap]
        return rungs or [1.0]
    cap = spec.max_load if spec.max_load is not None else spec.start_rate * 2**OPEN_DOUBLINGS
    out = []
    r = spec.start_rate
    while r <= cap * (1 + 1e-9):
        out.append(r)
        r *= 2
    return out or [spec.start_rate]


def fmt_load(mode: Mode, load: float) -> str:
    """'concurrency 48' / '38 req/s' / '2.5 req/s'."""
    if mode == "closed":
        return f"concurrency {int(load)}"
    return f"{_num(load)} req/s"


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


# ---------------------------------------------------------------- one point (pure)


class CapacityPoint(BaseModel):
    """One load, benched with N trials, judged against the SLO."""

    model_config = ConfigDict(extra="forbid")
    load: float = Field(description="closed loop: concurrency (a whole number); open loop: requests/s")
    trials: int = Field(description="counted trials at this load")
    ttft_ms: AcrossTrials = Field(description="each trial's SLO-percentile TTFT (ms), across trials")
    tpot_ms: AcrossTrials = Field(description="each trial's SLO-percentile TPOT (ms), across trials")
    output_tok_s: float | None = Field(description="mean output tokens/s across trials")
    req_s: float | None = Field(description="mean successful requests/s across trials")
    sent: int = Field(description="requests sent, all trials")
    failed: int = Field(description="requests that did not complete (errors, timeouts, cancels), all trials")
    failed_share: float = Field(description="failed / sent")
    passed: bool = Field(
        description="both across-trial means meet the SLO and failed_share <= 1% (inside the SLO)"
    )
    marginal: bool = Field(description="the 95% interval of a percentile straddles its limit")
    reasons: list[str] = Field(default_factory=list, description="why the point fails (empty: it passes)")
    notes: list[str] = Field(default_factory=list, description="remarks: bench flags, a client behind")
    folder: str | None = Field(None, description="the point's bench folder, relative to the capacity folder")
    tier: Tier | None = Field(None, description="the bench's own tier (None: not from a bench)")
    simulated: bool = Field(False, description="measured on perftune's simulator or mock")
    context: MeasurementContext | None = Field(None, description="the bench's measurement context")


def _straddles(a: AcrossTrials, limit: float) -> bool:
    return a.ci95 is not None and a.ci95[0] <= limit <= a.ci95[1]


def _mean(values: Sequence[float | None]) -> float | None:
    have = [v for v in values if v is not None and math.isfinite(v)]
    return sum(have) / len(have) if have else None


def judge_point(
    load: float,
    slo: Slo,
    *,
    ttft: Sequence[float | None],
    tpot: Sequence[float | None],
    sent: int,
    failed: int,
    output_tok_s: Sequence[float | None] = (),
    req_s: Sequence[float | None] = (),
    folder: str | None = None,
    tier: Tier | None = None,
    simulated: bool = False,
    context: MeasurementContext | None = None,
    notes: Sequence[str] = (),
) -> CapacityPoint:
    """Judge one point from its per-trial SLO-percentile TTFT and TPOT and its request losses."""
    t, o = across_trials(ttft), across_trials(tpot)
    p = f"p{slo.percentile}"
    share = failed / sent if sent else 1.0
    reasons: list[str] = []
    for label, a, limit in (("TTFT", t, slo.ttft_ms), ("TPOT", o, slo.tpot_ms)):
        if a.mean is None:
            reasons.append(f"no {p} {label} (no successful request)")
        elif a.mean > limit:
            reasons.append(f"{p} {label} {fmt_ms(a.mean)}")
    if not sent:
        reasons.append("no request was sent")
    elif share > MAX_LOSS_SHARE:
        reasons.append(f"{share:.1%} of requests failed ({failed} of {sent})")
    return CapacityPoint(
        load=load,
        trials=max(len(ttft), len(tpot)),
        ttft_ms=t,
        tpot_ms=o,
        output_tok_s=_mean(output_tok_s),
        req_s=_mean(req_s),
        sent=sent,
        failed=failed,
        failed_share=share,
        passed=not reasons,
        marginal=_straddles(t, slo.ttft_ms) or _straddles(o, slo.tpot_ms),
        reasons=reasons,
        notes=list(notes),
        folder=folder,
        tier=tier,
        simulated=simulated,
        context=context,
    )


def point_from_result(load: float, result: BenchResult, slo: Slo, folder: str | None) -> CapacityPoint:
    """Judge a finished bench: each trial's SLO percentile of TTFT and TPOT, its lost requests."""
    key = f"p{slo.percentile}"
    trials = result.trials
    notes = list(result.summary.flags)
    behind = None
    if not result.summary.valid:
        behind = (
            "the client fell behind its schedule (" + "; ".join(result.summary.invalid_reasons) + "): the "
            "load applied was below the load asked for"
        )
    ctx = result.context
    point = judge_point(
        load,
        slo,
        ttft=[getattr(t.ttft_ms, key) for t in trials],
        tpot=[getattr(t.tpot_ms, key) for t in trials],
        sent=sum(t.counts.sent for t in trials),
        failed=sum(t.counts.sent - t.counts.ok for t in trials),
        output_tok_s=[t.output_tok_s for t in trials],
        req_s=[t.req_s for t in trials],
        folder=folder,
        tier=ctx.tier,
        simulated=ctx.stack.simulated,
        context=ctx,
        notes=notes,
    )
    if behind is not None:  # a load that was never applied cannot be a load sustained
        point = point.model_copy(update={"passed": False, "reasons": [*point.reasons, behind]})
    return point


# ---------------------------------------------------------------- the search (pure)


def interval(points: Sequence[CapacityPoint]) -> tuple[float | None, float | None, list[float]]:
    """(highest pass below the lowest fail, lowest fail, passes above the lowest fail).

    The true capacity lies in [lo, hi). Passes above the lowest fail (noise, or points reused from
    another search) never raise the capacity: the lowest fail bounds it, deterministically.
    """
    fails = [p.load for p in points if not p.passed]
    hi = min(fails) if fails else None
    passes = [p.load for p in points if p.passed]
    below = [x for x in passes if hi is None or x < hi]
    above = sorted({x for x in passes if hi is not None and x > hi})
    return (max(below) if below else None), hi, above


def within_resolution(mode: Mode, lo: float, hi: float, resolution: float) -> bool:
    """closed: hi - lo <= max(1, resolution * lo); open: hi / lo <= 1 + resolution."""
    if mode == "closed":
        return hi - lo <= max(1.0, resolution * lo)
    return hi / lo <= 1 + resolution + 1e-12


def midpoint(mode: Mode, lo: float, hi: float) -> float | None:
    """Closed: the integer midpoint; open: the geometric mean (rates bisect by ratio), 3 significant
    digits. None when no load lies strictly between."""
    if mode == "closed":
        mid = float((int(lo) + int(hi)) // 2)
    else:
        g = math.sqrt(lo * hi)
        mid = float(f"{g:.3g}")
        if not lo < mid < hi:
            mid = g
    return mid if lo < mid < hi else None


def next_load(
    points: Sequence[CapacityPoint], mode: Mode, ladder: Sequence[float], resolution: float, max_points: int
) -> float | None:
    """The next load to measure, or None when the search is done.

    Bracket: the lowest rung above every measured load, until a point fails (or the ladder ends: the
    capacity is then at least the top). Bisect: the midpoint of [highest pass, lowest fail) until the gap
    is within the resolution. A first rung that fails is bisected downwards (no load is an implicit
    pass) until a load passes or the smallest load (concurrency 1; a rate of 1/8 of the first rung) fails.
    """
    if len(points) >= max_points:
        return None
    lo, hi, _ = interval(points)
    if hi is None:
        top = max((p.load for p in points), default=None)
        rest = [x for x in sorted(ladder) if top is None or x > top]
        return rest[0] if rest else None
    if lo is None:
        floor = 1.0 if mode == "closed" else min(ladder) / 8
        if hi <= floor or (mode == "open" and hi / 2 < floor):
            return None
        return float(max(1, int(hi) // 2)) if mode == "closed" else float(f"{hi / 2:.3g}")
    if within_resolution(mode, lo, hi, resolution):
        return None
    return midpoint(mode, lo, hi)


class CapacityResult(BaseModel):
    """The outcome of a capacity search: the highest load inside the SLO, its points and their evidence."""

    model_config = ConfigDict(extra="forbid")
    schema_version: str = SCHEMA
    slo: Slo = Field(description="the SLO the points were judged against")
    mode: Mode = Field(description="closed (load = concurrency) or open (load = Poisson req/s)")
    ladder: list[float] = Field(description="the bracketing ladder used")
    resolution: float = Field(description="the bisection's stopping gap (see SearchSpec.resolution)")
    max_points: int = Field(description="the point budget")
    capacity: float | None = Field(
        description="the highest load sustained (below the lowest failing load); None: not even the first"
    )
    at_least: bool = Field(
        description="no point failed: the capacity is bounded by the ladder or the point budget, not found"
    )
    complete: bool = Field(description="the search ended (false in a capacity.json written mid-search)")
    interval: tuple[float | None, float | None] = Field(
        description="(highest pass, lowest fail): the true capacity lies in [lo, hi)"
    )
    points: list[CapacityPoint] = Field(description="every point, in the order measured")
    n_points: int = Field(description="points measured")
    output_tok_s: float | None = Field(description="mean output tokens/s at the capacity point")
    req_s: float | None = Field(description="mean successful requests/s at the capacity point")
    statement: str = Field(description="the result in one sentence")
    notes: list[str] = Field(default_factory=list, description="non-monotone points, an unfinished bisection")
    context: MeasurementContext | None = Field(description="the capacity point's measurement context")
    tier: CapacityTier = Field(
        description="VERDICT only when the capacity point's bench is VERDICT; SIMULATED on a simulator"
    )
    tier_reasons: list[str] = Field(default_factory=list, description="why the tier is not VERDICT")


def _trials_text(points: Sequence[CapacityPoint]) -> str:
    ns = sorted({p.trials for p in points})
    if not ns:
        return ""
    each = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    return (
        f"{len(points)} point{'s' if len(points) != 1 else ''}, {each} trial{'s' if ns[-1] != 1 else ''} each"
    )


def summarize(points: Sequence[CapacityPoint], spec: SearchSpec, *, complete: bool = True) -> CapacityResult:
    """The result of the points measured so far: capacity, interval, statement, tier."""
    ladder = ladder_for(spec)
    lo, hi, above = interval(points)
    by_load = {p.load: p for p in points}
    cap_point = by_load.get(lo) if lo is not None else None
    fail_point = by_load.get(hi) if hi is not None else None
    slo_text = spec.slo.statement()
    mode = spec.mode
    notes: list[str] = []
    if above:
        notes.append(
            "non-monotone: "
            + ", ".join(fmt_load(mode, x) for x in above)
            + f" passed above the lowest failing load ({fmt_load(mode, hi or 0)}); the capacity is the "
            "highest pass below the lowest fail"
        )
    unresolved = lo is not None and hi is not None and not within_resolution(mode, lo, hi, spec.resolution)
    if complete and unresolved and len(points) >= spec.max_points:
        notes.append(
            f"stopped at max_points {spec.max_points} before the resolution: the capacity lies in "
            f"[{_opt(lo)}, {_opt(hi)})"
        )
    at_least = lo is not None and hi is None
    tail = _trials_text(points)
    if not points:
        statement = f"no point measured yet ({slo_text})"
    elif lo is None:
        first = min(points, key=lambda p: p.load)
        why = ", ".join(first.reasons)
        statement = (
            f"does not sustain even the lowest load, {fmt_load(mode, first.load)}, at {slo_text} "
            f"({why}); {tail}"
        )
    elif hi is None:
        assert cap_point is not None
        bound = (
            "the top of the ladder passes"
            if lo >= ladder[-1]
            else f"no point failed within max_points {spec.max_points}"
            if len(points) >= spec.max_points
            else "no point has failed yet"
        )
        statement = f"sustains at least {fmt_load(mode, lo)} at {slo_text} ({bound}); {tail}"
    else:
        assert fail_point is not None
        statement = (
            f"sustains {fmt_load(mode, lo)} at {slo_text} (next point {fmt_load(mode, hi)} fails: "
            f"{', '.join(fail_point.reasons)}); {tail}"
        )
    if cap_point is not None and cap_point.marginal:
        statement += "; the capacity point is marginal (a 95% interval straddles a limit)"
    if not complete:
        statement = "searching, so far: " + statement
    simulated = any(p.simulated for p in points) if cap_point is None else cap_point.simulated
    if simulated:
        statement += "; SIMULATED server"
    tier: CapacityTier
    if cap_point is None:
        tier, reasons = ("SIMULATED" if simulated else "DRAFT"), ["no load sustained"]
    elif simulated:
        tier = "SIMULATED"
        reasons = ["simulated server: the numbers are the simulator's, not an engine's"]
    elif cap_point.tier == "VERDICT" and not cap_point.marginal:
        tier, reasons = "VERDICT", []
    elif cap_point.tier == "VERDICT":
        tier, reasons = "DRAFT", ["the capacity point is marginal: a 95% interval straddles a limit"]
    else:
        tier = "DRAFT"
        reasons = list(cap_point.context.tier_reasons) if cap_point.context else ["the point has no context"]
    return CapacityResult(
        slo=spec.slo,
        mode=mode,
        ladder=ladder,
        resolution=spec.resolution,
        max_points=spec.max_points,
        capacity=lo,
        at_least=at_least,
        complete=complete,
        interval=(lo, hi),
        points=list(points),
        n_points=len(points),
        output_tok_s=cap_point.output_tok_s if cap_point else None,
        req_s=cap_point.req_s if cap_point else None,
        statement=statement,
        notes=notes,
        context=cap_point.context if cap_point else None,
        tier=tier,
        tier_reasons=reasons,
    )


Measure = Callable[[float], CapacityPoint]


def search(
    measure: Measure,
    spec: SearchSpec,
    *,
    prior: Sequence[CapacityPoint] = (),
    on_point: Callable[[CapacityResult], None] | None = None,
) -> CapacityResult:
    """Run the bounded search with `measure(load) -> CapacityPoint`; `prior` points count as measured.

    Deterministic given the measurements; `on_point` sees the partial result after every point.
    """
    ladder = ladder_for(spec)
    points = list(prior)
    while (load := next_load(points, spec.mode, ladder, spec.resolution, spec.max_points)) is not None:
        points.append(measure(load))
        if on_point is not None:
            on_point(summarize(points, spec, complete=False))
    return summarize(points, spec)


# ---------------------------------------------------------------- the driver (I/O)


class CapacityConfig(SearchSpec):
    """A capacity search against a live endpoint: the search settings plus how each point is benched."""

    endpoint: str = Field(description="server base URL, e.g. http://127.0.0.1:8000")
    model: str = Field(description="served model name")
    workload: WorkloadSpec = Field(description="the workload of every point (num_requests is set per point)")
    trials: int = Field(3, ge=1, description="counted trials per point")
    requests_per_slot: int = Field(
        2, ge=1, description="closed loop: requests per point = this x concurrency"
    )
    min_requests: int = Field(16, ge=1, description="fewest requests per trial at any point")
    duration_s: float = Field(
        30.0, gt=0, description="open loop: requests per trial = ceil(rate x duration_s)"
    )
    arrival: Arrival = Field("poisson", description="open loop arrival process")
    max_concurrency: int | None = Field(None, ge=1, description="open loop: cap on in-flight requests")
    warmup_requests: int | None = Field(
        None, ge=0, description="minimum warmup requests per point (default: the bench's min(16, n))"
    )
    hardware: str = Field("unknown", description="hardware label for the context, e.g. 1xH100-SXM")
    server_log: str | None = Field(None, description="engine log: compilation during a trial flags it")
    gpu: str | None = Field(None, description="GPU (ceilings.yaml key or alias) for the decode %SoL")
    model_card: str | None = Field(None, description="model (catalog name, folder) for the decode %SoL")
    tp: int = Field(1, ge=1, description="tensor parallel size of the server (for the %SoL only)")
    engine: str | None = Field(None, description="engine label (default: detected from /v1/models)")
    baseline: str | None = Field(None, description="named baseline the points are compared to")
    api_key: str | None = Field(None, description="bearer token, if the server wants one")
    request_timeout_s: float = Field(600.0, gt=0, description="per-request timeout")
    reset_cache: str = Field("auto", description="prefix-cache reset before every trial (see BenchConfig)")
    text_vocab: str | None = Field(None, description="decode token-id prompts to text (see BenchConfig)")


def _hiccup(result: BenchResult) -> bool:
    """The client fell behind in some trials and kept up in others (see run_capacity)."""
    ok = [t.load.valid for t in result.trials]
    return not result.summary.valid and any(ok) and not all(ok)


def requests_for(cfg: CapacityConfig, load: float) -> int:
    """Requests per trial at a load: closed max(min, per_slot x c); open max(min, ceil(rate x duration))."""
    if cfg.mode == "closed":
        n = max(cfg.min_requests, cfg.requests_per_slot * int(load))
    else:
        n = max(cfg.min_requests, math.ceil(load * cfg.duration_s))
    return min(n, MAX_NUM_REQUESTS)


def point_dir(mode: Mode, load: float) -> str:
    """A point's bench folder, relative to the capacity folder: points/closed-48, points/open-2.5."""
    return f"points/{mode}-{int(load) if mode == 'closed' else format(load, 'g')}"


def bench_config(cfg: CapacityConfig, load: float) -> BenchConfig:
    """The bench of one point."""
    closed = cfg.mode == "closed"
    return BenchConfig(
        endpoint=cfg.endpoint,
        model=cfg.model,
        workload=cfg.workload.model_copy(update={"num_requests": requests_for(cfg, load)}),
        concurrency=int(load) if closed else None,
        rate=None if closed else load,
        arrival=cfg.arrival,
        max_concurrency=None if closed else cfg.max_concurrency,
        trials=cfg.trials,
        warmup_requests=cfg.warmup_requests,
        server_log=cfg.server_log,
        gpu=cfg.gpu,
        model_card=cfg.model_card,
        tp=cfg.tp,
        request_timeout_s=cfg.request_timeout_s,
        slo=cfg.slo.bench_slo(),
        api_key=cfg.api_key,
        hardware=cfg.hardware,
        engine=cfg.engine,
        baseline=cfg.baseline,
        reset_cache=cfg.reset_cache,
        text_vocab=cfg.text_vocab,
    )


@dataclass(frozen=True, slots=True)
class CapacityEvent:
    """Progress of a search: a point starts, is done, or was reused from an earlier run's folder."""

    kind: Literal["start", "done", "reused"]
    index: int  # 0-based, in search order
    load: float
    requests: int  # per trial
    point: CapacityPoint | None  # with "done" and "reused"


CapacityObserver = Callable[[CapacityEvent], None]


def _reusable(folder: Path, bcfg: BenchConfig) -> BenchResult | None:
    """A completed point bench in `folder` that matches `bcfg`, or None when there is none.

    A folder holding another configuration's bench is a ConfigError: it is never benched over.
    """
    summary = folder / "summary.json"
    if not summary.is_file():
        return None
    hint = "give the search a new --out folder, or move that one away"
    try:
        res = BenchResult.model_validate_json(summary.read_bytes())
    except (OSError, ValidationError) as e:
        raise ConfigError(f"{summary} cannot be read as a bench summary to resume from", hint=hint) from e
    ctx, wl = res.context, res.context.workload
    assert bcfg.workload is not None
    want = {
        "endpoint": bcfg.endpoint,
        "model": bcfg.model,
        "trials": bcfg.trials,
        "workload": bcfg.workload.kind,
        "num_requests": bcfg.workload.num_requests,
        "concurrency": bcfg.concurrency,
        "rate": bcfg.rate,
    }
    have = {
        "endpoint": ctx.endpoint,
        "model": ctx.model,
        "trials": ctx.trials,
        "workload": wl.kind,
        "num_requests": wl.num_requests,
        "concurrency": wl.concurrency,
        "rate": wl.rate,
    }
    resolved = bcfg.workload.resolved()
    if wl.isl is not None:
        want["isl"], have["isl"] = resolved.isl, wl.isl
    want["osl"], have["osl"] = resolved.osl, wl.osl
    diff = [f"{k} {have[k]} != {want[k]}" for k in want if have[k] != want[k]]
    if diff:
        raise ConfigError(f"{folder} holds a bench of another configuration ({', '.join(diff)})", hint=hint)
    return res


def render_markdown(res: CapacityResult) -> str:
    """capacity.md: the statement, the SLO and its source, the points in search order."""
    ctx = res.context or next((p.context for p in res.points if p.context), None)
    head = f"{ctx.model} @ {ctx.stack.engine_version or ctx.stack.engine}" if ctx else ""
    p = f"p{res.slo.percentile}"
    load = "concurrency" if res.mode == "closed" else "req/s"
    lines = [
        f"# SLO capacity{': ' + head if head else ''}",
        "",
        f"**{res.statement}**",
        "",
        f"- SLO: `{res.slo.name}`: {res.slo.statement()}"
        + (f" ({res.slo.description})" if res.slo.description else ""),
        f"- source: {res.slo.source or '-'}",
        f"- mode: {res.mode} loop; interval [{_opt(res.interval[0])}, {_opt(res.interval[1])})",
        f"- tier: {res.tier}" + (f" ({'; '.join(res.tier_reasons)})" if res.tier_reasons else ""),
    ]
    if ctx is not None:
        w = ctx.workload
        lines.append(f"- workload: {w.kind} isl={w.isl} osl={w.osl}; hardware {ctx.hardware}")
    lines += [
        "",
        f"| # | {load} | result | {p} TTFT ms | {p} TPOT ms | output tok/s | req/s | failed | folder |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, pt in enumerate(res.points, 1):
        verdict = ("pass" if pt.passed else "FAIL") + (" (marginal)" if pt.marginal else "")
        lines.append(
            f"| {i} | {_num(pt.load)} | {verdict} | {_pm(pt.ttft_ms)} | {_pm(pt.tpot_ms)} | "
            f"{fmt_num(pt.output_tok_s)} | {fmt_num(pt.req_s)} | {pt.failed_share:.1%} | {pt.folder or '-'} |"
        )
    if res.notes:
        lines += ["", *[f"- note: {n}" for n in res.notes]]
    return "\n".join(lines) + "\n"


def _opt(x: float | None) -> str:
    return "-" if x is None else _num(x)


def _pm(a: AcrossTrials) -> str:
    if a.mean is None:
        return "-"
    return fmt_num(a.mean) + (f" ± {fmt_num(a.std)}" if a.std is not None else "")


def write_result(res: CapacityResult, out_dir: Path) -> None:
    """capacity.json and capacity.md, each atomically."""
    write_text(
        out_dir / RESULT_NAME,
        orjson.dumps(res.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n",
    )
    write_text(out_dir / REPORT_NAME, render_markdown(res))


def run_capacity(
    cfg: CapacityConfig, out_dir: Path, observer: CapacityObserver | None = None
) -> CapacityResult:
    """Search the SLO capacity against cfg.endpoint; every point benches into out_dir/points/<mode>-<load>.

    capacity.json and capacity.md are rewritten after every point (a killed search keeps its points); a
    re-run into the same out_dir reuses the points whose folder holds a finished bench of the same
    configuration, so the search resumes where it stopped.
    """
    ladder = ladder_for(cfg)
    validate(bench_config(cfg, ladder[0]))  # bad input fails before anything is created or sent
    created = not Path(out_dir).exists()
    out = writable_dir(
        out_dir, what="the capacity folder", hint="pick a folder you can write, e.g. --out ./runs/capacity"
    )
    count = 0

    def attempt(
        load: float, rel: str, bcfg: BenchConfig, before_bench: Callable[[], None]
    ) -> tuple[CapacityPoint, bool]:
        """One bench of a point into rel (before_bench called first), or the one already there:
        (point, worth measuring again). Worth it when the client fell behind in some trials but kept up
        in others: a passing hiccup of the client host. Behind in every trial, the client cannot apply
        this load here."""
        prior = _reusable(out / rel, bcfg)
        if prior is not None:
            return point_from_result(load, prior, cfg.slo, rel), _hiccup(prior)
        before_bench()
        run, paths = bench_to_dir(bcfg, out_dir=out / rel)
        if "fallback" in paths:
            point = point_from_result(load, run.result, cfg.slo, str(Path(paths["summary"]).parent))
            point.notes.append(paths["fallback"])
        else:
            point = point_from_result(load, run.result, cfg.slo, rel)
        return point, _hiccup(run.result)

    def measure(load: float) -> CapacityPoint:
        nonlocal count
        index, count = count, count + 1
        bcfg = bench_config(cfg, load)
        n = bcfg.workload.num_requests if bcfg.workload else 0
        base = point_dir(cfg.mode, load)
        behind: list[str] = []
        benched: list[bool] = []  # non-empty once this point benched (the start event is sent once)

        def starting() -> None:
            if not benched and observer is not None:
                observer(CapacityEvent("start", index, load, n, None))
            benched.append(True)

        for k in range(1 + BEHIND_RETRIES):
            rel = base if k == 0 else f"{base}.retry{k}"
            point, again = attempt(load, rel, bcfg, starting)
            if not again:
                break
            # the client, not the server, fell behind in a trial: that load was never applied, so the
            # point is no evidence either way and is benched again (each attempt keeps its folder)
            behind.append(rel)
        if behind:
            again = len(behind) <= BEHIND_RETRIES
            point.notes.append(
                f"the client fell behind its schedule in {', '.join(behind)}: "
                + ("re-measured" if again else f"still behind after {len(behind)} attempts")
            )
        if observer is not None:
            observer(CapacityEvent("done" if benched else "reused", index, load, n, point))
        return point

    try:
        result = search(measure, cfg, on_point=lambda partial: write_result(partial, out))
    except BaseException:
        if created and not (out / RESULT_NAME).exists():  # nothing measured: leave no empty folder behind
            for d in (out / "points", out):
                with contextlib.suppress(OSError):
                    d.rmdir()
        raise
    write_result(result, out)
    return result
