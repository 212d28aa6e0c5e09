"""`perftune sim predict`: the bench client's metrics in virtual time, in milliseconds.

The same workload builder, salting, closed/open-loop discipline and metric code as a real bench
run drive the engine core on a virtual clock: a closed-loop slot sends its next request the moment
the previous one ends; a request that arrives during a step joins at the next step; every token a
step produces is stamped at the step's end, or, with async scheduling, once the next step is launched
when that step's host-bound launches end later (StepResult.held_s). Results are labelled simulated.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import perftune
from perftune.bench.load import arrival_offsets, assess_load
from perftune.bench.metrics import summarize_trial
from perftune.bench.records import Chunk, RequestRecord
from perftune.bench.runner import BenchConfig, BenchResult, assemble
from perftune.bench.workloads import Workload, WorkloadSpec, build_workload, salt_item
from perftune.context import now_iso
from perftune.errors import ConfigError
from perftune.hardware.ceilings import Gpu
from perftune.models.card import ModelCard
from perftune.sim.calibration import Calibration
from perftune.sim.config import SimConfig
from perftune.sim.core import EngineCore, Frontend, SimRequest, StepResult, block_hashes
from perftune.sim.tokens import PromptTokenizer


@dataclass(slots=True)
class _Timeline:
    req: SimRequest
    idx: int
    t_sched: float
    t_send: float = 0.0
    tokens: list[float] = field(default_factory=list)
    t_end: float = 0.0


class PredictSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workload: WorkloadSpec
    concurrency: int | None = Field(None, ge=1, description="closed loop slots")
    rate: float | None = Field(None, gt=0, description="open loop req/s")
    trials: int = Field(3, ge=1)
    salt_seed: int = Field(0, description="prompt salt base (deterministic)")


def run_trial(
    core: EngineCore,
    reqs: Sequence[SimRequest],
    *,
    concurrency: int | None,
    offsets: Sequence[float] | None,
    t0: float,
    keep_tokens: bool = True,
) -> list[_Timeline]:
    """Drive one trial from virtual time t0; returns each request's timeline (seconds)."""
    lines = [_Timeline(r, i, 0.0) for i, r in enumerate(reqs)]
    by_req = {id(tl.req): tl for tl in lines}
    front = Frontend(core.cal)
    # (time, idx): the client sends request idx; the API server (`Frontend`) admits it to the engine.
    events: list[tuple[float, int]] = []
    nxt = 0
    if offsets is not None:
        events = [(t0 + off, i) for i, off in enumerate(offsets)]
        nxt = len(reqs)
    else:
        assert concurrency is not None
        for _ in range(min(concurrency, len(reqs))):
            events.append((t0, nxt))
            nxt += 1
    heapq.heapify(events)

    def send(upto: float) -> None:
        """The client's sends up to `upto` reach the API server, in time order."""
        while events and events[0][0] <= upto:
            t, i = heapq.heappop(events)
            lines[i].t_sched = lines[i].t_send = t
            front.arrive(t, i)

    def next_event() -> float:
        at = [x for x in (events[0][0] if events else None, front.next_ready()) if x is not None]
        if not at:
            raise RuntimeError("simulator stalled: requests waiting but nothing schedulable")
        return min(at)

    done = 0

    def hand_out(t: float, res: StepResult) -> None:
        """A step's tokens leave the engine at `t`; a finished request frees its client's slot."""
        nonlocal done, nxt
        send(t)  # sends until then reach the API server before these tokens stream
        front.stream(t, len(res.emitted))
        for r in res.emitted:
            tl = by_req[id(r)]
            if keep_tokens or not tl.tokens:
                tl.tokens.append(t)
        for r in res.finished:
            tl = by_req[id(r)]
            tl.t_end = t
            done += 1
            if offsets is None and nxt < len(reqs):
                heapq.heappush(events, (t, nxt))
                nxt += 1

    now = t0
    held: StepResult | None = None  # a step whose tokens wait for the next one's launch
    while done < len(reqs):
        send(now)
        for i in front.admit(now):
            core.add(lines[i].req)
        if not core.has_work():
            now = max(now, next_event())
            continue
        res = core.step()
        if held is not None:  # with async scheduling: handed out once this step (from `now`) is launched
            hand_out(now + res.held_s, held)
            held = None
        if res.scheduled == 0:
            now = max(now, next_event())
            continue
        now += res.duration_s
        if core.has_work():
            held = res
            send(now)
        else:
            hand_out(now, res)
    return lines


def _records(lines: Sequence[_Timeline], trial: int, fixed: Sequence[bool]) -> list[RequestRecord]:
    ns = 1e9
    out = []
    for tl in lines:
        r = tl.req
        out.append(
            RequestRecord(
                idx=tl.idx,
                trial=trial,
                api="completions",
                ok=True,
                error_kind=None,
                error_message="",
                status=200,
                t_sched_ns=round(tl.t_sched * ns),
                t_send_ns=round(tl.t_send * ns),
                t_end_ns=round(tl.t_end * ns),
                input_tokens=r.prompt_len,
                output_tokens=r.output,
                token_source="usage_delta",
                expected_input_tokens=r.prompt_len,
                expected_output_tokens=r.max_tokens if fixed[tl.idx] else None,
                chunks=[Chunk(round(t * ns), 1, 1) for t in tl.tokens],
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class TrialFigures:
    """What one virtual-time trial shows, by the bench's definitions."""

    output_tok_s: float  # output tokens / (last end - first send)
    ttft_ms: float  # mean over requests
    tpots_ms: list[float]  # per request with >= 2 output tokens
    end_s: float  # virtual time the last request ended


def figures(lines: Sequence[_Timeline]) -> TrialFigures:
    end = max(tl.t_end for tl in lines)
    span = end - min(tl.t_sched for tl in lines)
    return TrialFigures(
        output_tok_s=sum(tl.req.output for tl in lines) / span,
        ttft_ms=float(np.mean([tl.tokens[0] - tl.t_send for tl in lines])) * 1e3,
        tpots_ms=[(tl.t_end - tl.tokens[0]) / (tl.req.output - 1) * 1e3 for tl in lines if tl.req.output > 1],
        end_s=end,
    )


@cache
def _pristine(isl: int, osl: int, n: int, salt: int, block_size: int) -> tuple[SimRequest, ...]:
    wl = build_workload(WorkloadSpec(kind="random", isl=isl, osl=osl, num_requests=n))
    reqs = sim_requests(wl, salt, PromptTokenizer(None))
    for r in reqs:
        r.hashes = block_hashes(r.prompt_ids, block_size)
    return tuple(reqs)


def replay_random(
    core: EngineCore, *, isl: int, osl: int, n: int, salt: int, concurrency: int, t0: float
) -> TrialFigures:
    """One closed-loop trial of the random workload in virtual time, for fitting and tuning: the
    prompts (and their block hashes) are built once per shape and copied per use (the core mutates
    requests)."""
    reqs = [replace(r, held=[]) for r in _pristine(isl, osl, n, salt, core.cfg.block_size)]
    return figures(run_trial(core, reqs, concurrency=concurrency, offsets=None, t0=t0, keep_tokens=False))


def sim_requests(wl: Workload, salt: int, tok: PromptTokenizer) -> list[SimRequest]:
    out = []
    for i, item in enumerate(wl.items):
        s = salt_item(item, salt, wl.spec)
        if s.prompt_ids is not None:
            ids = list(s.prompt_ids)
        elif s.messages is not None:
            ids = tok.prompt_ids({"messages": s.messages})
        else:
            ids = tok.prompt_ids({"prompt": s.prompt or ""})
        out.append(SimRequest(rid=i, prompt_len=len(ids), max_tokens=s.max_tokens, prompt_ids=ids))
    return out


def predict(
    card: ModelCard,
    g: Gpu,
    cfg: SimConfig,
    cal: Calibration,
    spec: PredictSpec,
    *,
    model_dir: str | None = None,
) -> BenchResult:
    if (spec.concurrency is None) == (spec.rate is None):
        raise ConfigError("give exactly one of --concurrency or --rate", hint="e.g. --concurrency 16")
    wl = build_workload(spec.workload)
    offsets = None
    if spec.rate is not None:
        offsets = arrival_offsets(len(wl.items), spec.rate, "poisson", seed=wl.spec.seed)
        wl = wl.model_copy(update={"arrival_offsets_s": offsets}).sealed()
    core = EngineCore(card, g, cfg, cal)
    tok = PromptTokenizer(model_dir)
    fixed = [it.fixed_output for it in wl.items]
    trials = []
    t = 0.0
    for k in range(spec.trials):
        core.reset_prefix_cache()
        q0, h0 = core.counters.prefix_queries, core.counters.prefix_hits
        lines = run_trial(
            core,
            sim_requests(wl, spec.salt_seed + k + 1, tok),
            concurrency=spec.concurrency,
            offsets=offsets,
            t0=t,
        )
        t = max(tl.t_end for tl in lines) + 1.0
        recs = _records(lines, k, fixed)
        ns = [r.t_sched_ns for r in recs]
        load = assess_load(ns, ns, concurrency=spec.concurrency, requested_rate=spec.rate)
        dq = core.counters.prefix_queries - q0
        hit = (core.counters.prefix_hits - h0) / dq if dq else None
        trials.append(summarize_trial(k, recs, load, {}, engine_prefix_cache_hit_rate=hit))
    bcfg = BenchConfig(
        endpoint="virtual://perftune-sim",
        model=cfg.served_name or card.name,
        workload=spec.workload,
        concurrency=spec.concurrency,
        rate=spec.rate,
        trials=spec.trials,
        warmup_requests=0,
        hardware=f"{cfg.tensor_parallel_size}x{g.key} (simulated)",
        engine="perftune-sim",
    )
    facts = {"owned_by": "perftune-sim", "version": sim_version(cal)}
    return assemble(bcfg, wl, facts, 0, now_iso(), trials, spec.salt_seed)


def sim_version(cal: Calibration) -> str:
    base = f"perftune-sim {perftune.__version__}"
    if cal.fitted:
        return f"{base} (calibrated on {cal.engine} {cal.engine_version or '?'} {cal.gpu})"
    return f"{base} (uncalibrated priors for {cal.gpu})"
