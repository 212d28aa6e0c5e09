"""Run a bench: warmup until stable, N trials (closed or open loop), decode, summarize. The imperative shell.

Hot path discipline: request bodies are serialized before a trial starts; while it runs the client
only stamps reads, and hands each finished request's raw capture, unparsed, to a buffered
partial-records writer on the next loop pass (after a closed-loop slot has sent its next request);
SSE framing, JSON parsing and token counting happen after the trial.

Measurement quality is judged, not assumed: the warmup runs at the trial's own concurrency and shapes
until two rounds agree; trials that disagree (an outlier, a high CV), compilation in the engine log
during a trial, or a simulator behind its schedule are flagged and keep the result DRAFT.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import re
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from perftune.bench import accounting, drift
from perftune.bench.accounting import AccountingReport, TokenAccounting
from perftune.bench.client import BenchClient
from perftune.bench.load import Arrival, LoadReport, arrival_offsets, assess_load
from perftune.bench.metrics import DEFINITIONS, TrialResult, across, summarize_trial, tpot_median
from perftune.bench.records import (
    Api,
    CountTokens,
    PartialSink,
    RawCapture,
    RequestRecord,
    decode,
)
from perftune.bench.stats import (
    HIGH_CV,
    OUTLIER_TOLERANCE,
    WARMUP_TOLERANCE,
    AcrossTrials,
    high_cv,
    outlier_trials,
    rel_diff,
    warmup_stable,
)
from perftune.bench.workloads import (
    MAX_NUM_REQUESTS,
    RequestItem,
    Workload,
    WorkloadSpec,
    build_workload,
    request_body,
    salt_item,
)
from perftune.context import (
    Claim,
    MeasurementContext,
    WorkloadContext,
    metric_isolation,
    now_iso,
    stack_info,
    tier_for,
)
from perftune.errors import BenchError, ConfigError
from perftune.serving.registry import by_owned_by
from perftune.telemetry.gpu import NvmlSampler, endpoint_is_local
from perftune.telemetry.prom import gauges, parse_totals, prefix_cache_hit_rate, trial_figures

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
        None,
        ge=0,
        description="minimum uncounted warmup requests (default: min(16, n)); 0 turns the warmup off",
    )
    warmup_until_stable: bool = Field(
        True,
        description="after the minimum, keep running warmup rounds (each `concurrency` requests of the "
        "workload's own shapes at the trial's concurrency; open loop: ~1 s of its own schedule) until two "
        "consecutive rounds agree within 10% (closed loop: output tok/s; open loop: median TPOT)",
    )
    warmup_max_rounds: int = Field(3, ge=1, description="cap on warmup rounds spent waiting for stability")
    warmup_max_s: float = Field(
        300.0, gt=0, description="no new stability round starts after this many seconds of warmup"
    )
    server_log: str | None = Field(
        None,
        description="engine log file: the bytes it gains during each trial are scanned for compilation "
        "(torch.compile, Triton JIT, autotuning, CUDA graph capture) and the trial is flagged",
    )
    gpu: str | None = Field(None, description="GPU (ceilings.yaml key or alias) for the decode %SoL")
    model_card: str | None = Field(
        None, description="model (catalog name, folder or config.json) for the decode %SoL"
    )
    tp: int = Field(1, ge=1, description="tensor parallel size of the server (for the decode %SoL only)")
    serving: dict[str, Any] = Field(
        default_factory=dict,
        description="what the deploy knew and the client cannot (model_path, weights, parallelism, "
        "quantization, kv_cache_dtype, levers): written into the result's context as given",
    )
    sol_levers: dict[str, Any] = Field(
        default_factory=dict,
        description="the server's levers: those that change the bytes a decode step reads "
        "(quantization, kv-cache-dtype) for the decode %SoL (the checkpoint's own dtype is read from "
        "the model card), and those that make a chunk carry several tokens (speculative decoding, "
        "multi-step) for the token accounting",
    )
    token_accounting: TokenAccounting = Field(
        "auto",
        description="auto: ask for the final usage only and check one token per chunk on the warmup "
        "(per-chunk usage where a lever or the warmup says chunks carry several tokens); final; "
        "per-chunk: usage on every chunk (costs the server CPU at high concurrency)",
    )
    gpu_telemetry: bool = Field(
        True,
        description="sample this host's GPUs through NVML during every trial (clocks, power, throttle "
        "reasons) when the server runs on this host",
    )
    engine_poll_s: float = Field(
        1.0, ge=0, description="poll the engine's /metrics queue gauges this often during a trial (0: off)"
    )
    text_vocab: str | None = Field(
        None,
        description="a GGUF whose vocabulary turns token-id prompts into text, for a server that takes "
        "text prompts only (llama-cpp-python's); the engine re-tokenizes, so input lengths are approximate",
    )
    request_timeout_s: float = Field(600.0, gt=0, description="per-request timeout")
    slo: dict[str, float] = Field(default_factory=dict, description="per-request SLO upper bounds, ms")
    api_key: str | None = Field(None, description="bearer token, if the server wants one")
    hardware: str = Field("unknown", description="hardware label for the context")
    engine: str | None = Field(None, description="engine label (default: detected from /v1/models)")
    same_node: bool = Field(True, description="client and all compared runs on one node")
    baseline: str | None = Field(None, description="named baseline this run is compared to")
    claim: Claim | None = Field(
        None,
        description="what the run's headline is a claim about: throughput (judged on output tok/s) or "
        "latency (judged on median TPOT); the tier needs the claim's metric isolated",
    )
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


class CacheResetReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(description="the POST path used before each trial (None: no reset)")
    ok_trials: int = Field(description="trials whose reset answered 200")
    failed_statuses: list[int] = Field(description="statuses of resets that did not")


class LagReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    p50_max: float = Field(description="largest per-trial median schedule lag, ms")
    p99_max: float = Field(description="largest per-trial p99 schedule lag, ms")


class RateReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requested: float = Field(description="open loop: requested requests/s")
    achieved_min: float = Field(description="the lowest achieved rate of any trial")


class BenchSummary(BaseModel):
    """A bench's headline across trials (mean, std, CV, 95% interval each) and its reports."""

    model_config = ConfigDict(extra="forbid")
    ttft_ms: AcrossTrials
    tpot_ms: AcrossTrials
    tpot_median_ms: AcrossTrials | None = Field(None, description="per-trial median TPOT across trials")
    itl_ms: AcrossTrials
    e2e_ms: AcrossTrials
    output_tok_s: AcrossTrials
    req_s: AcrossTrials
    goodput_req_s: AcrossTrials | None = Field(None, description="with --slo")
    goodput_fraction: AcrossTrials | None = Field(None, description="with --slo")
    engine_prefix_cache_hit_rate: AcrossTrials | None = Field(None, description="where /metrics has it")
    accounting: AccountingReport | None = Field(None, description="how output tokens were counted")
    drift_notes: list[str] = Field(
        default_factory=list,
        description="what the GPU, the engine's /metrics and the first wave showed across trials",
    )
    valid: bool = Field(description="the client kept its schedule in every trial")
    invalid_reasons: list[str] = Field(default_factory=list)
    cache_reset: CacheResetReport | None = None
    schedule_lag_ms: LagReport | None = None
    rate: RateReport | None = Field(None, description="open loop only")
    flags: list[str] = Field(default_factory=list, description="quality flags (outliers, CV, compilation)")
    warmup: WarmupReport | None = None
    sol: dict[str, Any] | None = Field(None, description="analytical decode %SoL, with --gpu/--model-card")
    partial_records: dict[str, str] | None = Field(None, description="a failure of the streamed records")

    def get_metric(self, name: str) -> AcrossTrials | None:
        """A metric by name (None where this run has none), for tables that list metrics by name."""
        v = getattr(self, name, None)
        return v if isinstance(v, AcrossTrials) else None


class BenchResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: str = "perftune.bench.summary/v1"
    context: MeasurementContext
    summary: BenchSummary = Field(description="headline metrics across trials and the run's reports")
    trials: list[TrialResult]
    definitions: dict[str, str]

    def metric(self, name: str) -> AcrossTrials:
        """A headline metric across trials; KeyError where the run has none."""
        v = self.summary.get_metric(name)
        if v is None:
            raise KeyError(f"{name} is not a metric of this summary")
        return v

    def flags(self) -> list[str]:
        return list(self.summary.flags)


@dataclass
class BenchRun:
    result: BenchResult
    workload: Workload
    records: list[RequestRecord]


def validate(cfg: BenchConfig) -> None:
    """Reject a config that cannot run, before anything is sent or written."""
    if cfg.workload is not None and cfg.workload.num_requests > MAX_NUM_REQUESTS:
        raise ConfigError(
            f"num_requests {cfg.workload.num_requests:,} is above the bound {MAX_NUM_REQUESTS:,}",
            hint="every request's records stay in memory until the trial ends; run several benches, "
            "or raise --trials instead",
        )
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


def _serialize(
    client: BenchClient,
    wl: Workload,
    model: str,
    salt: int,
    items: Sequence[RequestItem] | None = None,
    *,
    per_chunk_usage: bool,
) -> list[Prepared]:
    out = []
    for item in wl.items if items is None else items:
        s = salt_item(item, salt, wl.spec)
        info = RequestItemInfo(s.api, s.expected_input_tokens, s.max_tokens if s.fixed_output else None)
        body = orjson.dumps(request_body(s, model, per_chunk_usage=per_chunk_usage))
        out.append((client.prepare(PATHS[s.api], body), info))
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
    """Cheap live estimate for the progress bar: the last completion_tokens in the last reads (a
    server may send its final usage chunk in one read and `[DONE]` in the next)."""
    tail = b""
    for _t, data in reversed(cap.reads[-3:]):
        tail = data + tail
        if b'"completion_tokens":' in tail:
            break
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
    from perftune.bench.workloads import as_text, load_workload

    if cfg.workload_file:
        wl = load_workload(cfg.workload_file)
    else:
        assert cfg.workload is not None
        wl = build_workload(cfg.workload)
    if cfg.text_vocab is not None:
        wl = as_text(wl, cfg.text_vocab)
    if cfg.rate is not None and wl.arrival_offsets_s is None:
        offs = arrival_offsets(
            len(wl.items), cfg.rate, cfg.arrival, burstiness=cfg.burstiness, seed=wl.spec.seed
        )
        wl = wl.model_copy(update={"arrival_offsets_s": offs}).sealed()
    return wl


class WarmupReport(BaseModel):
    """What the warmup did, and whether the engine looked warm when the trials began."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(description="warmup rounds run")
    requests: int = Field(description="warmup requests sent (uncounted)")
    round_size: int = Field(description="requests per round (closed loop: the trial's concurrency)")
    concurrency: int | None = Field(description="closed loop: in-flight requests, as in the trials")
    metric: str = Field(description="what the stability rule compares: output_tok_s or tpot_median_ms")
    round_values: list[float | None] = Field(description="that metric per round, in order")
    until_stable: bool = Field(description="rounds continued until two consecutive ones agreed")
    stabilized: bool | None = Field(description="the last two rounds agreed (None: not asked or < 2 rounds)")
    stop: str = Field(description="why the warmup stopped: off | count | stable | max_rounds | time")
    rule: str = Field(description="the stability rule, in words")
    engine_log_compile_lines: int | None = Field(
        None, description="compilation-marker lines the engine log gained during the warmup"
    )


# Engine-log lines that mean "compiling or capturing now" (vLLM, SGLang, torch.compile/inductor, Triton).
# Matched case-insensitively, one label per marker; the first matching label names a line.
ENGINE_LOG_MARKERS: tuple[tuple[str, str], ...] = (
    ("torch.compile", r"torch\.compile|torch\._dynamo|\bdynamo\b|\binductor\b|recompil"),
    ("compiling", r"\bcompil(?:e|es|ed|ing|ation)\b"),
    ("Triton", r"\btriton\b"),
    ("JIT", r"\bjit\b"),
    ("autotuning", r"autotun"),
    ("CUDA graph capture", r"captur\w*\s+(?:cuda\s*graph|cudagraph)|cuda\s*graphs?\b.*\bcaptur"),
)
_MARKERS = [(label, re.compile(rx, re.IGNORECASE)) for label, rx in ENGINE_LOG_MARKERS]
LOG_SCAN_MAX_BYTES = 8 * 1024 * 1024  # a trial's log growth beyond this is scanned from its tail


def compile_markers(text: str) -> list[tuple[str, str]]:
    """(marker label, line) for each log line that shows compilation or graph capture. Pure."""
    out = []
    for line in text.splitlines():
        for label, rx in _MARKERS:
            if rx.search(line):
                out.append((label, line.strip()))
                break
    return out


class EngineLog:
    """The engine's log file, read by offset: what it gained between two points. Never raises."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def since(self, offset: int) -> str:
        try:
            with self.path.open("rb") as fh:
                end = fh.seek(0, 2)
                if end < offset:  # truncated or rotated: all of it is new
                    offset = 0
                fh.seek(max(offset, end - LOG_SCAN_MAX_BYTES))
                return fh.read().decode(errors="replace")
        except OSError:
            return ""


def compile_flag(trial: int, hits: Sequence[tuple[str, str]]) -> str | None:
    if not hits:
        return None
    more = f" (+{len(hits) - 1} more line(s))" if len(hits) > 1 else ""
    return f"engine log shows compilation during trial {trial}: {hits[0][1][:200]}{more}"


def sim_flag(trial: int, stats: dict[str, Any] | None) -> str | None:
    if not stats or stats.get("faithful") is not False:
        return None
    lag = stats.get("schedule_lag_ms") or {}
    detail = ", ".join(
        x
        for x in (
            f"schedule lag p99 {lag['p99']:.2f} ms" if isinstance(lag.get("p99"), int | float) else "",
            f"{stats['late_steps']} late steps" if stats.get("late_steps") is not None else "",
        )
        if x
    )
    return f"trial {trial}: simulator fell behind its virtual schedule" + (f" ({detail})" if detail else "")


def _round_values(recs: Sequence[RequestRecord]) -> tuple[float, float | None]:
    """(output tok/s, median TPOT ms) of one warmup round."""
    ok = [r for r in recs if r.ok]
    t0 = min((r.t_sched_ns for r in recs), default=0)
    t1 = max((r.t_end_ns for r in recs), default=t0)
    span = max((t1 - t0) / 1e9, 1e-9)
    tpots = sorted(v for r in ok if (v := r.tpot_ms) is not None)
    med = None
    if tpots:
        m = len(tpots) // 2
        med = tpots[m] if len(tpots) % 2 else (tpots[m - 1] + tpots[m]) / 2
    return sum(r.output_tokens for r in ok) / span, med


async def _warmup(
    client: BenchClient,
    wl: Workload,
    cfg: BenchConfig,
    salt: int,
    count_tokens: CountTokens | None,
    on_done_for: Callable[[str, int, int], Callable[[RawCapture], None]],
    log: EngineLog | None,
    per_chunk_usage: bool,
) -> tuple[WarmupReport, list[RequestRecord]]:
    """Warm the engine at the trial's own concurrency and shapes until two rounds agree (bounded).
    Returns the report and the warmup's decoded records (the token accounting is checked on them)."""
    n = len(wl.items)
    open_loop = cfg.rate is not None
    if open_loop:  # about one second of the trial's own arrival schedule per round
        size = min(n, max(8, math.ceil(cfg.rate or 0)))
    else:
        assert cfg.concurrency is not None
        size = min(n, cfg.concurrency)
    warm_min = cfg.warmup_requests if cfg.warmup_requests is not None else min(16, n)
    # Open loop: the rate fixes tok/s, so a cold engine shows in latency; closed loop: in throughput.
    metric = "tpot_median_ms" if open_loop and (wl.spec.osl or 0) >= 2 else "output_tok_s"
    rule = (
        f"two consecutive rounds' {metric} within {WARMUP_TOLERANCE:.0%} (|a-b| / max), at most "
        f"{cfg.warmup_max_rounds} rounds and {cfg.warmup_max_s:g} s once the minimum {warm_min} is met"
    )
    values: list[float | None] = []
    warm_recs: list[RequestRecord] = []
    total, stop = 0, "off" if warm_min == 0 else "count"
    log_mark = log.size() if log is not None else 0
    t0 = time.monotonic()
    while warm_min > 0:
        need_count = total < warm_min
        have = [v for v in values if v is not None]
        if cfg.warmup_until_stable and warmup_stable(have) and not need_count:
            stop = "stable"
            break
        if not need_count:
            if not cfg.warmup_until_stable:
                stop = "count"
                break
            if len(values) >= cfg.warmup_max_rounds:
                stop = "max_rounds"
                break
            if time.monotonic() - t0 >= cfg.warmup_max_s:
                stop = "time"
                break
        r = len(values)
        k = size if cfg.warmup_until_stable else min(size, warm_min - total)
        items = [wl.items[(total + i) % n] for i in range(k)]
        # Each round its own salt, distinct from every trial's: round 2 cannot hit round 1's prefix cache.
        bodies = _serialize(
            client, wl, cfg.model, salt=salt - 1 - r, items=items, per_chunk_usage=per_chunk_usage
        )
        on_done = on_done_for("warmup", r, k)
        if open_loop:
            assert wl.arrival_offsets_s is not None
            await client.prewarm(min(k, cfg.max_concurrency or k))
            caps = await _open_loop(
                client, bodies, wl.arrival_offsets_s[:k], cfg.max_concurrency, -1, on_done
            )
        else:
            await client.prewarm(k)
            caps = await _closed_loop(client, bodies, k, -1, on_done)
        recs = [decode(c, count_tokens) for c in caps]
        if r == 0 and all(not x.ok for x in recs):  # nothing worked: show the server's own message
            raise BenchError(
                f"every warmup request failed: {recs[0].error_message}",
                hint="check --model, the prompt length against the server's max length, and its log",
            )
        warm_recs.extend(recs)
        tok_s, tpot = _round_values(recs)
        values.append(tpot if metric == "tpot_median_ms" else tok_s)
        total += k
    have = [v for v in values if v is not None]
    stabilized: bool | None = None
    if cfg.warmup_until_stable and values:
        stabilized = stop == "stable" or (False if stop in ("max_rounds", "time") else None)
    report = WarmupReport(
        rounds=len(values),
        requests=total,
        round_size=size,
        concurrency=cfg.concurrency,
        metric=metric,
        round_values=values,
        until_stable=cfg.warmup_until_stable,
        stabilized=stabilized,
        stop=stop,
        rule=rule,
        engine_log_compile_lines=len(compile_markers(log.since(log_mark))) if log is not None else None,
    )
    return report, warm_recs


async def _sim_stats(client: BenchClient) -> dict[str, Any] | None:
    """perftune-sim's own timing health for the last trial; absent on older simulators (404 -> None)."""
    try:
        d = await client.get_json("/sim/stats", timeout_s=2.0)
    except BenchError:
        return None
    if not isinstance(d, dict):
        return None
    keep = {k: d[k] for k in ("schedule_lag_ms", "late_steps", "faithful") if k in d}
    return keep or None


@dataclass(frozen=True)
class SolInputs:
    """What the decode %SoL needs besides the measurement: the model card and the GPU."""

    card: Any  # perftune.models.card.ModelCard (imported lazily: a plain bench needs none of it)
    gpu: Any  # perftune.hardware.ceilings.Gpu
    tp: int
    ref: str
    levers: dict[str, Any] = field(default_factory=dict)  # quantization / kv-cache-dtype levers


def sol_inputs(cfg: BenchConfig) -> SolInputs | None:
    """Resolve --model-card and --gpu before measuring (a bad name fails before any request)."""
    if not cfg.gpu or not cfg.model_card:
        return None
    from perftune.hardware.ceilings import gpu
    from perftune.hardware.roofline import effective_dtypes
    from perftune.models.resolve import model_card

    card = model_card(cfg.model_card)
    effective_dtypes(card, cfg.sol_levers)  # a bad lever value fails before any request
    return SolInputs(card, gpu(cfg.gpu), cfg.tp, cfg.model_card, dict(cfg.sol_levers))


def decode_sol(sol: SolInputs, trials: Sequence[TrialResult], concurrency: int | None) -> dict[str, Any]:
    """Analytical decode %SoL: roofline step floor / measured median TPOT (closed loop only)."""
    from perftune.hardware.roofline import roofline, sol_pct

    med = tpot_median(trials).mean
    out: dict[str, Any] = {
        "model_card": sol.ref,
        "gpu": sol.gpu.key,
        "tp": sol.tp,
        "basis": "analytical: roofline decode step floor / measured median TPOT",
        "tpot_median_ms": med,
        "decode_sol_pct": None,
    }
    if concurrency is None:
        out["note"] = "open loop: the decode batch is not fixed, no %SoL"
        return out
    ok = sum(t.counts.ok for t in trials)
    osl = sum(t.counts.output_tokens for t in trials) / ok if ok else 0.0
    context = max(1, round(sum(t.counts.input_tokens for t in trials) / ok + osl / 2)) if ok else 1
    rf = roofline(sol.card, sol.gpu, tp=sol.tp, batch=concurrency, context=context, levers=sol.levers)
    out.update(
        basis=f"analytical: roofline decode step floor ({rf.weight_dtype} weights: {rf.weight_source}; "
        f"{rf.kv_dtype} KV: {rf.kv_source}) / measured median TPOT",
        batch=concurrency,
        context=context,
        decode_step_floor_ms=rf.decode_step_floor_ms,
        bound=rf.decode_bound,
        ceiling_key=rf.ceiling_key,
        decode_sol_pct=sol_pct(rf.decode_step_floor_ms, med) if med else None,
    )
    return out


async def run_bench(
    cfg: BenchConfig,
    *,
    observer: Observer | None = None,
    count_tokens: CountTokens | None = None,
    between_trials: Callable[[], Awaitable[None]] | None = None,
    partial_path: str | Path | None = None,
) -> BenchRun:
    """Warmup, then `cfg.trials` trials; returns the summary, the frozen workload and all records.

    With `partial_path`, every finished trial request's raw capture is appended there as it finishes
    (see records.PartialSink), so a killed run keeps what it measured.
    """
    validate(cfg)
    sol = sol_inputs(cfg)
    wl = resolve_workload(cfg)
    n = len(wl.items)
    conc = cfg.concurrency or cfg.max_concurrency or max(1, min(n, 256))
    started = now_iso()
    # Salts are unique per run and per trial: a prefix cache warmed by an earlier run, the warmup or an
    # earlier trial can never serve these prompts.
    run_salt = cfg.salt_seed if cfg.salt_seed is not None else secrets.randbits(40) * 1000
    records: list[RequestRecord] = []
    trial_results: list[TrialResult] = []
    log = EngineLog(cfg.server_log) if cfg.server_log else None
    sink: PartialSink | None = None

    async with BenchClient(
        cfg.endpoint,
        max_connections=conc,
        request_timeout_s=cfg.request_timeout_s,
        api_key=cfg.api_key,
        transport=cfg.transport,
    ) as client:
        facts = await client.preflight(cfg.model)
        detected = _detect_engine(facts.get("owned_by"))
        reset_path = _reset_path(cfg.reset_cache, detected)
        is_sim = "perftune-sim" in (detected, cfg.engine)
        cache_resets: list[int] = []
        progress_tokens = 0

        loop = asyncio.get_running_loop()

        def make_on_done(phase: str, trial: int, total: int) -> Callable[[RawCapture], None]:
            done = 0
            add = sink.add if sink is not None and phase == "trial" else None

            def on_done(cap: RawCapture) -> None:
                nonlocal done, progress_tokens
                done += 1
                if add is not None:
                    # Streamed on the next loop pass: a closed-loop slot sends its next request first,
                    # so writing the record never shows up as client queueing.
                    loop.call_soon(add, cap)
                if observer is not None:
                    progress_tokens += _count_out_tokens_estimate(cap)
                    observer(Progress(phase, trial, done, total, progress_tokens))

            return on_done

        first_mode, _ = accounting.before_warmup(cfg.token_accounting, cfg.sol_levers)
        warm, warm_recs = await _warmup(
            client, wl, cfg, run_salt, count_tokens, make_on_done, log, first_mode == "per-chunk"
        )
        acct = accounting.after_warmup(cfg.token_accounting, cfg.sol_levers, warm_recs)
        del warm_recs
        sampler = _gpu_sampler(cfg)
        if partial_path is not None:
            sink = PartialSink(
                partial_path,
                {
                    "note": "bench in progress or killed: one raw capture per finished request; "
                    "summary.json appears only when the run completes (decode with "
                    "perftune.bench.records.read_partial + decode)",
                    "started_at": started,
                    "endpoint": cfg.endpoint,
                    "model": cfg.model,
                    "trials": cfg.trials,
                    "num_requests": n,
                    "concurrency": cfg.concurrency,
                    "rate": cfg.rate,
                    "workload_sha256": wl.sha256,
                },
            )
        try:
            for trial in range(cfg.trials):
                if between_trials is not None:
                    await between_trials()
                if reset_path is not None:
                    status = await client.post_status(reset_path)
                    cache_resets.append(status)
                bodies = _serialize(
                    client, wl, cfg.model, salt=run_salt + 1 + trial, per_chunk_usage=acct.used == "per-chunk"
                )
                await client.prewarm(min(conc, n))
                on_done = make_on_done("trial", trial, n)
                # No collector pauses inside the measured window: a gen-2 pass over the trial's captures
                # takes milliseconds and would land inside somebody's TTFT. Collect after the trial.
                before = await client.metrics_text()
                log_mark = log.size() if log is not None else 0
                polled: list[str] = []
                poller = (
                    asyncio.create_task(_poll_gauges(client, cfg.engine_poll_s, polled))
                    if before is not None and cfg.engine_poll_s > 0
                    else None
                )
                if sampler is not None:
                    sampler.start()
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
                    if poller is not None:
                        poller.cancel()
                        await asyncio.gather(poller, return_exceptions=True)
                    gpu_state = sampler.stop() if sampler is not None else None
                if sink is not None:
                    await asyncio.sleep(0)  # let the last deferred record writes run
                    sink.flush()
                after = await client.metrics_text()
                hits = compile_markers(log.since(log_mark)) if log is not None else []
                sim = await _sim_stats(client) if is_sim else None
                totals_before, totals_after = _totals(before), _totals(after)
                hit_rate = _hit_rate(totals_before, totals_after)
                recs = [decode(c, count_tokens) for c in sorted(caps, key=lambda c: c.idx)]
                load = _load_report(caps, cfg)
                t = summarize_trial(trial, recs, load, cfg.slo, engine_prefix_cache_hit_rate=hit_rate)
                acct_flag, acct_note = accounting.trial_check(trial, acct.used, recs, "itl_ms" in cfg.slo)
                if acct_note:
                    acct.notes.append(acct_note)
                flags = [f for f in (compile_flag(trial, hits), sim_flag(trial, sim), acct_flag) if f]
                trial_results.append(
                    t.model_copy(
                        update={
                            "flags": flags,
                            "engine_log_compile_lines": len(hits) if log is not None else None,
                            "sim_stats": sim,
                            "gpu": gpu_state,
                            "engine": trial_figures(totals_before, totals_after, _gauges(polled), t.span_s),
                            "first_wave_s": drift.first_wave(recs, cfg.concurrency),
                        }
                    )
                )
                records.extend(recs)
        finally:
            if sink is not None:
                sink.close()
            if sampler is not None:
                sampler.close()

    facts["cache_reset"] = {"path": reset_path, "statuses": cache_resets}
    facts["accounting"] = acct
    if sink is not None and sink.error:
        facts["partial_records_error"] = sink.error
    result = assemble(cfg, wl, facts, warm.requests, started, trial_results, run_salt, warmup=warm, sol=sol)
    return BenchRun(result, wl, records)


def _gpu_sampler(cfg: BenchConfig) -> NvmlSampler | None:
    """This host's NVML sampler, where the server runs here (else no GPU state: another host's)."""
    if not cfg.gpu_telemetry or not endpoint_is_local(cfg.endpoint):
        return None
    return NvmlSampler()


async def _poll_gauges(client: BenchClient, period_s: float, out: list[str]) -> None:
    """The engine's /metrics text every `period_s` during a trial, kept raw: parsing ~100 KB of
    Prometheus text takes milliseconds, which inside the measured window would land in somebody's
    TTFT; the gauges are read after the trial (`_gauges`)."""
    while len(out) < MAX_POLLS:
        await asyncio.sleep(period_s)
        text = await client.metrics_text()
        if text:
            out.append(text)


MAX_POLLS = 900  # raw scrapes kept per trial (15 min at 1 Hz, ~100 MB at most for vLLM's ~100 KB)


def _gauges(texts: list[str]) -> list[dict[str, float]]:
    out = []
    for text in texts:
        with contextlib.suppress(ValueError):
            out.append(gauges(text))
    return out


def _totals(text: str | None) -> dict[str, float] | None:
    """One /metrics scrape parsed once (None: no scrape, or unreadable: telemetry never fails a trial)."""
    if not text:
        return None
    try:
        return parse_totals(text)
    except ValueError:
        return None


def _hit_rate(before: dict[str, float] | None, after: dict[str, float] | None) -> float | None:
    """Prefix-cache hit rate between two scrapes' totals."""
    if not before or not after:
        return None
    return prefix_cache_hit_rate(before, after)


def _reset_path(setting: str, engine: str) -> str | None:
    if setting == "none":
        return None
    if setting == "auto":
        info = by_owned_by(engine)
        return info.reset_path if info is not None else None
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
    """The engine's label from what the server says it is (the registry knows each engine's)."""
    info = by_owned_by(owned_by)
    return info.owned_by if info is not None else (owned_by or "").lower() or "unknown"


def quality_flags(
    trials: list[TrialResult], summary: dict[str, AcrossTrials], warmup: WarmupReport | None
) -> tuple[list[TrialResult], list[int], dict[str, float], list[str], list[str]]:
    """Judge the trials: (trials with `outlier` set, outlier indexes, high-CV metrics, other flags,
    every flag as text). Pure."""
    tok = [t.output_tok_s for t in trials]
    outs = outlier_trials(tok)
    marked = [t.model_copy(update={"outlier": i in outs}) for i, t in enumerate(trials)]
    med = statistics.median(tok)
    text = [
        f"trial {i} is an outlier: output {tok[i]:,.1f} tok/s is {(tok[i] - med) / med:+.0%} off the median "
        f"{med:,.1f} of all trials (rule: > {OUTLIER_TOLERANCE:.0%})"
        for i in outs
    ]
    cvs = high_cv({k: summary[k] for k in ("output_tok_s", "tpot_median_ms") if k in summary})
    text += [f"high CV across trials: {k} {cv:.1%} > {HIGH_CV:.0%}" for k, cv in cvs.items()]
    other = [f for t in trials for f in t.flags]
    if warmup is not None and warmup.stabilized is False:
        vals = warmup.round_values[-2:]
        a, b = (vals[0], vals[1]) if len(vals) == 2 else (None, None)
        diff = f"differ by {rel_diff(a, b):.0%}" if a is not None and b is not None else "cannot be compared"
        other.append(
            f"warmup did not stabilize: the last two of {warmup.rounds} rounds' {warmup.metric} {diff} "
            f"(> {WARMUP_TOLERANCE:.0%}; stopped on {warmup.stop})"
        )
    return marked, outs, cvs, other, text + other


def assemble(
    cfg: BenchConfig,
    wl: Workload,
    facts: dict[str, Any],
    warm_n: int,
    started: str,
    trials: list[TrialResult],
    run_salt: int,
    *,
    warmup: WarmupReport | None = None,
    sol: SolInputs | None = None,
) -> BenchResult:
    engine = cfg.engine or _detect_engine(facts.get("owned_by"))
    simulated = engine.startswith("perftune-")
    per_trial, drift_flags, drift_notes = drift.assess(
        [t.gpu for t in trials], [t.engine for t in trials], [t.first_wave_s for t in trials]
    )
    trials = [
        t.model_copy(update={"flags": [*t.flags, *per_trial[t.trial]]}) if t.trial in per_trial else t
        for t in trials
    ]
    headline: dict[str, AcrossTrials] = dict(across(trials))
    headline["tpot_median_ms"] = tpot_median(trials)
    trials, outs, cvs, other, flags = quality_flags(trials, headline, warmup)
    other, flags = [*other, *drift_flags], [*flags, *drift_flags]
    isolated, claim_metric, why = metric_isolation(
        cfg.claim, num_requests=len(wl.items), concurrency=cfg.concurrency
    )
    tier, reasons = tier_for(
        trials=len(trials),
        same_node=cfg.same_node,
        baseline=cfg.baseline,
        metric_isolated=isolated is not False,
        isolation=why,
        outlier_trials=outs,
        high_cv=cvs,
        flags=other,
    )
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
        claim=cfg.claim,
        claim_metric=claim_metric,
        metric_isolated=isolated,
        tier=tier,
        tier_reasons=reasons,
        started_at=started,
    )
    if cfg.serving:
        ctx = MeasurementContext.model_validate({**ctx.model_dump(), **cfg.serving})
    invalid = [f"trial {t.trial}: {r}" for t in trials for r in t.load.invalid_reasons]
    reset = facts.get("cache_reset") or {}
    statuses = reset.get("statuses") or []
    summary = BenchSummary(
        **headline,
        **(across(trials, ("goodput_req_s", "goodput_fraction")) if cfg.slo else {}),
        **(
            across(trials, ("engine_prefix_cache_hit_rate",))
            if any(t.engine_prefix_cache_hit_rate is not None for t in trials)
            else {}
        ),
        accounting=facts.get("accounting"),
        drift_notes=drift_notes,
        valid=not invalid,
        invalid_reasons=invalid,
        cache_reset=CacheResetReport(
            path=reset.get("path"),
            ok_trials=sum(1 for s in statuses if s == 200),
            failed_statuses=[s for s in statuses if s != 200],
        ),
        schedule_lag_ms=LagReport(
            p50_max=max(t.load.lag_p50_ms for t in trials), p99_max=max(t.load.lag_p99_ms for t in trials)
        ),
        rate=RateReport(requested=cfg.rate, achieved_min=min((t.load.achieved_rate or 0.0) for t in trials))
        if cfg.rate is not None
        else None,
        flags=flags,
        warmup=warmup,
        sol=decode_sol(sol, trials, cfg.concurrency) if sol is not None else None,
        partial_records={"error": str(facts["partial_records_error"])}
        if facts.get("partial_records_error")
        else None,
    )
    return BenchResult(context=ctx, summary=summary, trials=trials, definitions=DEFINITIONS)
