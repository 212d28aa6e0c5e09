"""Run a bench: warmup, N trials (closed or open loop), decode, summarize. The imperative shell.

Hot path discipline: request bodies are serialized before a trial starts; while it runs the client
only stamps reads; SSE framing, JSON parsing and token counting happen after the trial.
"""

from __future__ import annotations

import asyncio
import gc
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from perftune.bench.client import BenchClient
from perftune.bench.load import Arrival, LoadReport, arrival_offsets, assess_load
from perftune.bench.metrics import DEFINITIONS, TrialResult, across, summarize_trial
from perftune.bench.records import Api, CountTokens, RawCapture, RequestRecord, decode
from perftune.bench.stats import AcrossTrials
from perftune.bench.workloads import Workload, WorkloadSpec, build_workload, request_body, salt_item
from perftune.context import MeasurementContext, WorkloadContext, now_iso, stack_info, tier_for
from perftune.errors import BenchError, ConfigError
from perftune.telemetry.prom import parse_totals, prefix_cache_hit_rate

PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
OPEN_LOOP_LEAD_S = 0.05  # first open-loop send this long after the schedule is laid down
SPIN_WINDOW_S = 0.0015  # event-loop timers are ~1 ms coarse: sleep to just before, then yield-spin


@dataclass(frozen=True, slots=True)
class Progress:
    phase: str  # "warmup" | "trial"
    trial: int
    done: int
    total: int
    output_tokens: int


Observer = Callable[[Progress], None]


Transport = Literal["auto", "aiohttp"]


class BenchConfig(BaseModel):
    """A resolved bench run: where, what, how hard, how many times."""

    model_config = ConfigDict(extra="forbid")
    endpoint: str = Field(description="server base URL, e.g. http://127.0.0.1:8000")
    model: str = Field(description="served model name")
    workload: WorkloadSpec | None = Field(None, description="workload to build (ignored with workload_file)")
    workload_file: str | None = Field(None, description="replay a frozen workload file")
    concurrency: int | None = Field(None, ge=1, description="closed loop: in-flight requests")
    rate: float | None = Field(None, gt=0, description="open loop: requests per second")
    arrival: Arrival = Field("poisson", description="open loop arrival process")
    burstiness: float = Field(1.0, gt=0, description="gamma arrivals: shape (1 = Poisson)")
    max_concurrency: int | None = Field(None, ge=1, description="open loop: cap on in-flight requests")
    trials: int = Field(3, ge=1, description="counted trials")
    warmup_requests: int | None = Field(
        None, ge=0, description="uncounted warmup requests (default: min(16, n))"
    )
    request_timeout_s: float = Field(600.0, gt=0, description="per-request timeout")
    slo: dict[str, float] = Field(default_factory=dict, description="per-request SLO upper bounds, ms")
    api_key: str | None = Field(None, description="bearer token, if the server wants one")
    hardware: str = Field("unknown", description="hardware label for the context")
    engine: str | None = Field(None, description="engine label (default: detected from /v1/models)")
    same_node: bool = Field(True, description="client and all compared runs on one node")
    baseline: str | None = Field(None, description="named baseline this run is compared to")
    transport: Transport = Field(
        "auto",
        description="auto: the lean keep-alive pool for http, aiohttp for https; aiohttp: always aiohttp",
    )
    reset_cache: str = Field(
        "auto",
        description="prefix-cache reset before every trial: auto (by detected engine: vLLM POST "
        "/reset_prefix_cache, SGLang POST /flush_cache), none, or a POST path",
    )
    salt_seed: int | None = Field(
        None,
        description="prompt salt base; default a fresh random value per run, so no two runs share prompts",
    )


class BenchResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: str = "perftune.bench.summary/v1"
    context: MeasurementContext
    summary: dict[str, AcrossTrials | bool | list[str] | dict[str, Any]] = Field(
        description="headline metrics across trials, plus valid / invalid_reasons"
    )
    trials: list[TrialResult]
    definitions: dict[str, str]


@dataclass
class BenchRun:
    result: BenchResult
    workload: Workload
    records: list[RequestRecord]


def _validate(cfg: BenchConfig) -> None:
    if (cfg.concurrency is None) == (cfg.rate is None):
        raise ConfigError(
            "give exactly one of --concurrency (closed loop) or --rate (open loop)",
            hint="e.g. --concurrency 64, or --rate 50 --arrival poisson",
        )
    if cfg.workload is None and cfg.workload_file is None:
        raise ConfigError(
            "no workload given", hint="--workload random|prefix|chat|code|long, or --workload-file"
        )
    if not cfg.endpoint.startswith(("http://", "https://")):
        raise ConfigError(
            f"endpoint '{cfg.endpoint}' is not an http(s) URL", hint="e.g. http://127.0.0.1:8000"
        )


Prepared = tuple[tuple[str, bytes, bytes | None], "RequestItemInfo"]


def _serialize(client: BenchClient, wl: Workload, model: str, salt: int) -> list[Prepared]:
    out = []
    for item in wl.items:
        s = salt_item(item, salt, wl.spec)
        info = RequestItemInfo(s.api, s.expected_input_tokens, s.max_tokens if s.fixed_output else None)
        out.append((client.prepare(PATHS[s.api], orjson.dumps(request_body(s, model))), info))
    return out


@dataclass(frozen=True, slots=True)
class RequestItemInfo:
    api: Api
    expected_input_tokens: int | None
    expected_output_tokens: int | None

    def capture(self, idx: int, trial: int, t_sched_ns: int) -> RawCapture:
        """A fresh capture for sending this request, scheduled at t_sched_ns."""
        return RawCapture(
            idx=idx,
            trial=trial,
            api=self.api,
            t_sched_ns=t_sched_ns,
            expected_input_tokens=self.expected_input_tokens,
            expected_output_tokens=self.expected_output_tokens,
        )


async def _closed_loop(
    client: BenchClient,
    bodies: Sequence[Prepared],
    concurrency: int,
    trial: int,
    on_done: Callable[[RawCapture], None],
) -> list[RawCapture]:
    caps: list[RawCapture] = []
    it = iter(range(len(bodies)))

    async def slot() -> None:
        t_free = time.monotonic_ns()
        for i in it:  # a shared iterator: each slot takes the next request the moment it frees
            body, info = bodies[i]
            cap = info.capture(i, trial, t_free)
            caps.append(cap)
            await client.send(body, cap)
            on_done(cap)
            t_free = cap.t_end_ns

    await asyncio.gather(*(slot() for _ in range(min(concurrency, len(bodies)))))
    return caps


async def _open_loop(
    client: BenchClient,
    bodies: Sequence[Prepared],
    offsets_s: Sequence[float],
    max_concurrency: int | None,
    trial: int,
    on_done: Callable[[RawCapture], None],
) -> list[RawCapture]:
    caps: list[RawCapture] = []
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    tasks: list[asyncio.Task[None]] = []

    async def one(body: tuple[str, bytes, bytes | None], cap: RawCapture) -> None:
        if sem is None:
            await client.send(body, cap)
        else:
            async with sem:  # waiting here is client queueing: it shows in client_queue_ms
                await client.send(body, cap)
        on_done(cap)

    t0 = time.monotonic_ns() + int(OPEN_LOOP_LEAD_S * 1e9)
    for i, ((body, info), off) in enumerate(zip(bodies, offsets_s, strict=True)):
        target = t0 + int(off * 1e9)
        delay = (target - time.monotonic_ns()) / 1e9
        if delay > SPIN_WINDOW_S:
            await asyncio.sleep(delay - SPIN_WINDOW_S)
        while time.monotonic_ns() < target:  # noqa: ASYNC110 - a deliberate yield-spin to a ns deadline
            await asyncio.sleep(0)
        cap = info.capture(i, trial, target)
        caps.append(cap)
        tasks.append(asyncio.create_task(one(body, cap)))
    await asyncio.gather(*tasks)
    return caps


def _count_out_tokens_estimate(cap: RawCapture) -> int:
    """Cheap live estimate for the progress bar: the last completion_tokens in the final read."""
    if not cap.reads:
        return 0
    tail = cap.reads[-1][1]
    k = tail.rfind(b'"completion_tokens":')
    if k < 0:
        return 0
    digits = tail[k + 20 : k + 32].lstrip()
    n = 0
    for ch in digits:
        if 48 <= ch <= 57:
            n = n * 10 + ch - 48
        else:
            break
    return n


def resolve_workload(cfg: BenchConfig) -> Workload:
    from perftune.bench.workloads import load_workload

    if cfg.workload_file:
        wl = load_workload(cfg.workload_file)
    else:
        assert cfg.workload is not None
        wl = build_workload(cfg.workload)
    if cfg.rate is not None and wl.arrival_offsets_s is None:
        offs = arrival_offsets(
            len(wl.items), cfg.rate, cfg.arrival, burstiness=cfg.burstiness, seed=wl.spec.seed
        )
        wl = wl.model_copy(update={"arrival_offsets_s": offs}).sealed()
    return wl


async def run_bench(
    cfg: BenchConfig,
    *,
    observer: Observer | None = None,
    count_tokens: CountTokens | None = None,
    between_trials: Callable[[], Awaitable[None]] | None = None,
) -> BenchRun:
    """Warmup, then `cfg.trials` trials; returns the summary, the frozen workload and all records."""
    _validate(cfg)
    wl = resolve_workload(cfg)
    n = len(wl.items)
    warm_n = cfg.warmup_requests if cfg.warmup_requests is not None else min(16, n)
    conc = cfg.concurrency or cfg.max_concurrency or max(1, min(n, 256))
    started = now_iso()
    # Salts are unique per run and per trial: a prefix cache warmed by an earlier run, the warmup or an
    # earlier trial can never serve these prompts.
    run_salt = cfg.salt_seed if cfg.salt_seed is not None else secrets.randbits(40) * 1000
    records: list[RequestRecord] = []
    trial_results: list[TrialResult] = []

    async with BenchClient(
        cfg.endpoint,
        max_connections=conc,
        request_timeout_s=cfg.request_timeout_s,
        api_key=cfg.api_key,
        transport=cfg.transport,
    ) as client:
        facts = await client.preflight(cfg.model)
        reset_path = _reset_path(cfg.reset_cache, _detect_engine(facts.get("owned_by")))
        cache_resets: list[int] = []
        progress_tokens = 0

        def make_on_done(phase: str, trial: int, total: int) -> Callable[[RawCapture], None]:
            done = 0

            def on_done(cap: RawCapture) -> None:
                nonlocal done, progress_tokens
                done += 1
                if observer is not None:
                    progress_tokens += _count_out_tokens_estimate(cap)
                    observer(Progress(phase, trial, done, total, progress_tokens))

            return on_done

        if warm_n:
            warm_bodies = _serialize(client, wl, cfg.model, salt=run_salt)[:warm_n]
            await client.prewarm(min(conc, warm_n))
            caps = await _closed_loop(
                client, warm_bodies, min(conc, warm_n), -1, make_on_done("warmup", -1, warm_n)
            )
            bad = [decode(c, count_tokens) for c in caps]
            if all(not r.ok for r in bad):  # nothing worked: show the server's own message
                raise BenchError(
                    f"every warmup request failed: {bad[0].error_message}",
                    hint="check --model, the prompt length against the server's max length, and its log",
                )
        for trial in range(cfg.trials):
            if between_trials is not None:
                await between_trials()
            if reset_path is not None:
                status = await client.post_status(reset_path)
                cache_resets.append(status)
            bodies = _serialize(client, wl, cfg.model, salt=run_salt + 1 + trial)
            await client.prewarm(min(conc, n))
            on_done = make_on_done("trial", trial, n)
            # No collector pauses inside the measured window: a gen-2 pass over the trial's captures
            # takes milliseconds and would land inside somebody's TTFT. Collect after the trial.
            before = await client.metrics_text()
            gc.collect()
            gc.disable()
            try:
                if cfg.rate is not None:
                    assert wl.arrival_offsets_s is not None
                    caps = await _open_loop(
                        client, bodies, wl.arrival_offsets_s, cfg.max_concurrency, trial, on_done
                    )
                else:
                    assert cfg.concurrency is not None
                    caps = await _closed_loop(client, bodies, cfg.concurrency, trial, on_done)
            finally:
                gc.enable()
            after = await client.metrics_text()
            hit_rate = _hit_rate(before, after)
            recs = [decode(c, count_tokens) for c in sorted(caps, key=lambda c: c.idx)]
            load = _load_report(caps, cfg)
            trial_results.append(
                summarize_trial(trial, recs, load, cfg.slo, engine_prefix_cache_hit_rate=hit_rate)
            )
            records.extend(recs)

    facts["cache_reset"] = {"path": reset_path, "statuses": cache_resets}
    return BenchRun(assemble(cfg, wl, facts, warm_n, started, trial_results, run_salt), wl, records)


RESET_PATHS = {
    "vllm": "/reset_prefix_cache",
    "sglang": "/flush_cache",
    "perftune-mock": "/reset_prefix_cache",
    "perftune-sim": "/reset_prefix_cache",
}


def _hit_rate(before: str | None, after: str | None) -> float | None:
    """Prefix-cache hit rate between two scrapes; unreadable telemetry never fails a measured trial."""
    if not before or not after:
        return None
    try:
        return prefix_cache_hit_rate(parse_totals(before), parse_totals(after))
    except ValueError:
        return None


def _reset_path(setting: str, engine: str) -> str | None:
    if setting == "none":
        return None
    if setting == "auto":
        return RESET_PATHS.get(engine)
    if not setting.startswith("/"):
        raise ConfigError(f"--reset-cache '{setting}' is not auto, none or a path", hint="e.g. /flush_cache")
    return setting


def _load_report(caps: Sequence[RawCapture], cfg: BenchConfig) -> LoadReport:
    sent = [c for c in caps if c.t_send_ns]
    return assess_load(
        [c.t_sched_ns for c in sent],
        [c.t_send_ns for c in sent],
        concurrency=cfg.concurrency,
        requested_rate=cfg.rate,
    )


def _detect_engine(owned_by: str | None) -> str:
    o = (owned_by or "").lower()
    for name in ("vllm", "sglang", "llamacpp", "perftune-sim", "perftune-mock"):
        if name in o.replace(".", "").replace("_", ""):
            return name
    return o or "unknown"


def assemble(
    cfg: BenchConfig,
    wl: Workload,
    facts: dict[str, Any],
    warm_n: int,
    started: str,
    trials: list[TrialResult],
    run_salt: int,
) -> BenchResult:
    engine = cfg.engine or _detect_engine(facts.get("owned_by"))
    simulated = engine.startswith("perftune-")
    tier, reasons = tier_for(trials=len(trials), same_node=cfg.same_node, baseline=cfg.baseline)
    if simulated:
        reasons = [*reasons, "simulated server"]
        tier = "DRAFT"
    spec = wl.spec
    ctx = MeasurementContext(
        model=cfg.model,
        endpoint=cfg.endpoint,
        hardware=cfg.hardware,
        stack=stack_info(engine, facts.get("version"), simulated),
        workload=WorkloadContext(
            kind=spec.kind,
            source=wl.source,
            isl=spec.isl if spec.kind in ("random", "prefix", "long") else None,
            osl=spec.osl,
            fixed_output=bool(spec.fixed_output),
            num_requests=len(wl.items),
            sha256=wl.sha256,
            concurrency=cfg.concurrency,
            rate=cfg.rate,
            arrival=cfg.arrival if cfg.rate else None,
            max_concurrency=cfg.max_concurrency,
        ),
        regime=f"cold: prompts salted per run and trial (salt base {run_salt}), no prefix-cache carry-over",
        trials=len(trials),
        warmup_requests=warm_n,
        same_node=cfg.same_node,
        baseline=cfg.baseline,
        tier=tier,
        tier_reasons=reasons,
        started_at=started,
    )
    invalid = [f"trial {t.trial}: {r}" for t in trials for r in t.load.invalid_reasons]
    summary: dict[str, AcrossTrials | bool | list[str] | dict[str, Any]] = dict(across(trials))
    if cfg.slo:
        summary.update(across(trials, ("goodput_req_s", "goodput_fraction")))
    if any(t.engine_prefix_cache_hit_rate is not None for t in trials):
        summary.update(across(trials, ("engine_prefix_cache_hit_rate",)))
    summary["valid"] = not invalid
    summary["invalid_reasons"] = invalid
    reset = facts.get("cache_reset") or {}
    statuses = reset.get("statuses") or []
    summary["cache_reset"] = {
        "path": reset.get("path"),
        "ok_trials": sum(1 for s in statuses if s == 200),
        "failed_statuses": [s for s in statuses if s != 200],
    }
    summary["schedule_lag_ms"] = {
        "p50_max": max(t.load.lag_p50_ms for t in trials),
        "p99_max": max(t.load.lag_p99_ms for t in trials),
    }
    if cfg.rate is not None:
        summary["rate"] = {
            "requested": cfg.rate,
            "achieved_min": min((t.load.achieved_rate or 0.0) for t in trials),
        }
    return BenchResult(context=ctx, summary=summary, trials=trials, definitions=DEFINITIONS)
