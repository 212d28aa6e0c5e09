"""Prometheus text -> counters, with prometheus-client's own parser; pure except `scrape`.

Used by the bench to verify cache hygiene from the engine's counters instead of assuming it: the
prefix-cache hit rate of each trial is the change in hits over the change in queries.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

# perftune telemetry field -> each engine's Prometheus name (counters without their _total suffix is
# fine: lookups try both). One schema for every engine; a field an engine does not export stays None.
METRICS: dict[str, dict[str, str]] = {
    "vllm": {
        "running": "vllm:num_requests_running",
        "waiting": "vllm:num_requests_waiting",
        "kv_usage": "vllm:kv_cache_usage_perc",
        "prefix_queries": "vllm:prefix_cache_queries_total",
        "prefix_hits": "vllm:prefix_cache_hits_total",
        "preemptions": "vllm:num_preemptions_total",
        "spec_drafts": "vllm:spec_decode_num_drafts_total",
        "spec_drafted": "vllm:spec_decode_num_draft_tokens_total",
        "spec_accepted": "vllm:spec_decode_num_accepted_tokens_total",
    },
    "sglang": {
        "running": "sglang:num_running_reqs",
        "waiting": "sglang:num_queue_reqs",
        "kv_usage": "sglang:token_usage",
        "prefix_hits": "sglang:realtime_tokens_total[mode=prefill_cache]",
        "prefix_computed": "sglang:realtime_tokens_total[mode=prefill_compute]",
        "prefix_hit_rate": "sglang:cache_hit_rate",
        "spec_accept_length": "sglang:spec_accept_length",
    },
    "llamacpp": {},
}
METRICS["sim"] = METRICS["vllm"]  # the simulator exports vLLM's names


class EngineTelemetry(BaseModel):
    """One /metrics scrape in perftune's engine-neutral schema (sums over label sets)."""

    model_config = ConfigDict(extra="forbid")
    engine: str
    running: float | None = Field(None, description="requests in the running batch")
    waiting: float | None = Field(None, description="requests queued")
    kv_usage: float | None = Field(None, description="KV-cache usage, 0..1")
    prefix_queries: float | None = Field(None, description="cumulative prefix-cache queries (vLLM: tokens)")
    prefix_hits: float | None = Field(None, description="cumulative prefix-cache hits (vLLM: tokens)")
    prefix_computed: float | None = Field(None, description="cumulative prompt tokens computed (SGLang)")
    prefix_hit_rate: float | None = Field(None, description="engine-reported hit rate (SGLang gauge)")
    preemptions: float | None = Field(None, description="cumulative preemptions")
    spec_drafts: float | None = Field(None, description="cumulative verify steps that carried a draft")
    spec_drafted: float | None = Field(None, description="cumulative drafted speculative tokens")
    spec_accepted: float | None = Field(None, description="cumulative accepted speculative tokens")
    spec_accept_length: float | None = Field(None, description="mean accepted length (SGLang gauge)")


def snapshot(text: str, engine: str) -> EngineTelemetry:
    totals = parse_totals(text)
    values: dict[str, float | None] = {}
    for field_name, metric in METRICS.get(engine, {}).items():
        base = metric.removesuffix("_total")
        values[field_name] = next((totals[n] for n in (metric, base, base + "_total") if n in totals), None)
    return EngineTelemetry(engine=engine, **values)


# (query counters summed, hit counter) per engine, in prompt tokens, as exposed on /metrics. SGLang
# 0.5.x has no hit/query pair: it counts prompt tokens by how they were served, under
# sglang:realtime_tokens_total{mode="prefill_cache" | "prefill_compute" | "decode"}.
PREFIX_CACHE_COUNTERS: dict[str, tuple[tuple[str, ...], str]] = {
    "vllm": (("vllm:prefix_cache_queries_total",), "vllm:prefix_cache_hits_total"),
    "sglang": (
        (
            "sglang:realtime_tokens_total[mode=prefill_cache]",
            "sglang:realtime_tokens_total[mode=prefill_compute]",
        ),
        "sglang:realtime_tokens_total[mode=prefill_cache]",
    ),
}


SPLIT_LABELS = ("mode", "position")


def parse_totals(text: str) -> dict[str, float]:
    """Sum every sample by name over its labels (engines, models): {sample_name: value}. Samples with a
    `mode` or `position` label are also summed per value, as `name[mode=VALUE]`, `name[position=0]`."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
            for label in SPLIT_LABELS:
                if label in s.labels:
                    key = f"{s.name}[{label}={s.labels[label]}]"
                    out[key] = out.get(key, 0.0) + float(s.value)
    return out


def prefix_cache_hit_rate(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Hits / queries between two snapshots, for whichever engine's counters are present."""
    for queries, hits in PREFIX_CACHE_COUNTERS.values():
        if all(q in after for q in queries):
            dq = sum(after[q] - before.get(q, 0.0) for q in queries)
            dh = after.get(hits, 0.0) - before.get(hits, 0.0)
            return dh / dq if dq > 0 else None
    return None


# ---------------------------------------------------------------- the engine's own figures per trial

# (vLLM name, SGLang name) per figure; histograms by their base name (_sum and _count are read).
_HIST = {
    "itl": ("vllm:inter_token_latency_seconds", "sglang:inter_token_latency_seconds"),
    "ttft": ("vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds"),
    "queue": ("vllm:request_queue_time_seconds", "sglang:queue_time_seconds"),
    "step_tokens": ("vllm:iteration_tokens_total", ""),
}
_COUNTERS = {
    "generation_tokens": ("vllm:generation_tokens_total", "sglang:generation_tokens_total"),
    "preemptions": (METRICS["vllm"]["preemptions"], ""),  # SGLang's retracted count is a gauge
    "server_cpu_s": ("process_cpu_seconds_total", "sglang:process_cpu_seconds_total"),
}
# The queue gauges, by the engine-neutral names of METRICS.
_GAUGES = {k: (METRICS["vllm"][k], METRICS["sglang"][k]) for k in ("running", "waiting", "kv_usage")}


# ---------------------------------------------------------------- speculative decoding acceptance

# vLLM's spec-decode counters (vllm/v1/spec_decode/metrics.py). SGLang (0.5.16) has gauges of its most
# recent log window (sglang:spec_accept_length, which counts the bonus token; sglang:spec_accept_rate)
# and, per finished request, counters of verify steps, generated tokens and requests: over a trial,
# (generated - requests) / verify steps is what each verify step yielded (a request's first token comes
# from its prefill), SGLang's own per-request accept length (completion tokens / verify steps) without
# that first token. It exports no per-position acceptance.
SPEC_VLLM = {
    "drafts": "vllm:spec_decode_num_drafts_total",
    "draft_tokens": "vllm:spec_decode_num_draft_tokens_total",
    "accepted": "vllm:spec_decode_num_accepted_tokens_total",
    "per_pos": "vllm:spec_decode_num_accepted_tokens_per_pos_total",
}
SPEC_SGLANG = {
    "accept_length": "sglang:spec_accept_length",
    "accept_rate": "sglang:spec_accept_rate",
    "verify": "sglang:spec_verify_calls_total",
    "generated": "sglang:generation_tokens_total",
    "requests": "sglang:num_requests_total",
    "draft_tokens": "sglang:spec_num_draft_tokens",  # gauge: tokens verified per step, bonus slot included
}


class SpecFigures(BaseModel):
    """Speculative decoding over one trial, as the engine counted it."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="where the figures come from: the engine's counters or its gauge")
    drafts: float | None = Field(
        None, description="verify steps that carried a draft (vLLM); verify steps (SGLang's counters)"
    )
    draft_tokens: float | None = Field(
        None, description="tokens drafted (vLLM; SGLang: verify steps x its draft tokens per step)"
    )
    accepted: float | None = Field(None, description="draft tokens accepted (vLLM; SGLang's counters)")
    accept_rate: float | None = Field(None, description="accepted / drafted tokens")
    accept_length: float | None = Field(
        None, description="mean acceptance length: 1 + accepted per draft (the tokens a verify step yields)"
    )
    per_pos: list[float] = Field(
        default_factory=list, description="share of drafts accepted at each position"
    )


def spec_figures(b: dict[str, float], a: dict[str, float]) -> SpecFigures | None:
    """Acceptance between two parse_totals scrapes: vLLM's counters as deltas; SGLang's per-request
    counters as deltas, else its gauges as the value after the trial (its own most recent window). None
    when the engine exports neither."""
    if SPEC_VLLM["drafts"] in a:
        d = {k: a.get(n, 0.0) - b.get(n, 0.0) for k, n in SPEC_VLLM.items() if k != "per_pos"}
        pos: list[float] = []
        while (n := f"{SPEC_VLLM['per_pos']}[position={len(pos)}]") in a:
            pos.append(a[n] - b.get(n, 0.0))
        drafts = d["drafts"]
        if drafts <= 0:
            return SpecFigures(source="vllm counters (no draft in this trial)", drafts=0.0)
        return SpecFigures(
            source="vllm counters",
            drafts=drafts,
            draft_tokens=d["draft_tokens"],
            accepted=d["accepted"],
            accept_rate=d["accepted"] / d["draft_tokens"] if d["draft_tokens"] > 0 else None,
            accept_length=1.0 + d["accepted"] / drafts,
            per_pos=[x / drafts for x in pos],
        )
    if SPEC_SGLANG["verify"] in a:
        counted = _sglang_counted(b, a)
        if counted is not None:
            return counted
    if SPEC_SGLANG["accept_length"] in a:
        if a[SPEC_SGLANG["accept_length"]] < 1.0:  # SGLang exports 0.0 while it does not speculate
            return SpecFigures(source="sglang gauge (0: no verify step; speculation is off)")
        return SpecFigures(
            source="sglang gauge (most recent window)",
            accept_length=a[SPEC_SGLANG["accept_length"]],
            accept_rate=a.get(SPEC_SGLANG["accept_rate"]),
        )
    return None


def _sglang_counted(b: dict[str, float], a: dict[str, float]) -> SpecFigures | None:
    """SGLang's acceptance from its per-request counters over the window: verify steps, and the decode
    tokens they yielded (generated - finished requests). None when the window's counters do not add up
    (a request counted on one side only), so that the caller falls back to the gauge."""
    d = {
        k: a.get(SPEC_SGLANG[k], 0.0) - b.get(SPEC_SGLANG[k], 0.0)
        for k in ("verify", "generated", "requests")
    }
    if d["verify"] <= 0:
        return SpecFigures(source="sglang counters (no verify step in this trial)", drafts=0.0)
    decode = d["generated"] - d["requests"]
    accepted = decode - d["verify"]  # each verify step yields one token of its own, the rest were drafts
    if accepted < 0:
        return None
    per_step = a.get(SPEC_SGLANG["draft_tokens"], 0.0) - 1.0
    draft_tokens = d["verify"] * per_step if per_step > 0 else None
    return SpecFigures(
        source="sglang counters",
        drafts=d["verify"],
        draft_tokens=draft_tokens,
        accepted=accepted,
        accept_rate=accepted / draft_tokens if draft_tokens else None,
        accept_length=decode / d["verify"],
    )


class EngineTrialFigures(BaseModel):
    """What the engine itself says about one trial: deltas of its /metrics counters and histograms
    between the scrapes before and after the trial, and its queue gauges polled during it."""

    model_config = ConfigDict(extra="forbid")
    itl_ms_mean: float | None = Field(None, description="the engine's mean inter-token latency")
    ttft_ms_mean: float | None = Field(None, description="the engine's mean time to first token")
    queue_ms_mean: float | None = Field(None, description="the engine's mean time a request queued")
    steps: float | None = Field(None, description="engine steps (vLLM: iteration_tokens_total count)")
    step_ms_mean: float | None = Field(
        None, description="trial span / engine steps: the mean engine step time while the trial ran"
    )
    tokens_per_step_mean: float | None = Field(None, description="tokens scheduled per engine step")
    generation_tokens: float | None = Field(None, description="output tokens the engine generated")
    preemptions: float | None = Field(None, description="preemptions during the trial (vLLM)")
    server_cpu_s: float | None = Field(
        None,
        description="CPU seconds of the process serving /metrics (vLLM: the API server; SGLang: "
        "its processes' own counter) during the trial",
    )
    polls: int = Field(0, description="/metrics polls during the trial")
    waiting_max: float | None = Field(None, description="most requests waiting in the engine's queue")
    running_mean: float | None = Field(None, description="mean requests in the running batch")
    kv_usage_max: float | None = Field(None, description="highest KV-cache usage, 0..1")
    spec: SpecFigures | None = Field(
        None, description="speculative decoding acceptance, when the engine exports it"
    )


def _pick(totals: dict[str, float], names: tuple[str, str], suffix: str = "") -> str | None:
    return next((n + suffix for n in names if n and n + suffix in totals), None)


def gauges(text: str) -> dict[str, float]:
    """The queue gauges of one scrape, whichever engine's names are present."""
    totals = parse_totals(text)
    out = {}
    for key, names in _GAUGES.items():
        name = _pick(totals, names)
        if name is not None:
            out[key] = totals[name]
    return out


def trial_figures(
    b: dict[str, float] | None, a: dict[str, float] | None, polled: list[dict[str, float]], span_s: float
) -> EngineTrialFigures | None:
    """The engine's own figures for one trial, from its /metrics totals (parse_totals) before and after
    it (None where it has no /metrics). Pure."""
    if not b or not a:
        return None
    vals: dict[str, float | None] = {}
    for key, names in _HIST.items():
        s, c = _pick(a, names, "_sum"), _pick(a, names, "_count")
        if s is None or c is None:
            continue
        dc = a[c] - b.get(c, 0.0)
        ds = a[s] - b.get(s, 0.0)
        if key == "step_tokens":
            vals["steps"] = dc
            vals["tokens_per_step_mean"] = ds / dc if dc > 0 else None
            vals["step_ms_mean"] = span_s * 1e3 / dc if dc > 0 else None
        else:
            vals[f"{key}_ms_mean"] = ds / dc * 1e3 if dc > 0 else None
    for key, names in _COUNTERS.items():
        n = _pick(a, names)
        if n is not None:
            vals[key] = a[n] - b.get(n, 0.0)
    fig = EngineTrialFigures(**vals, polls=len(polled), spec=spec_figures(b, a))
    if polled:
        run = [p["running"] for p in polled if "running" in p]
        wait = [p["waiting"] for p in polled if "waiting" in p]
        kv = [p["kv_usage"] for p in polled if "kv_usage" in p]
        fig.running_mean = sum(run) / len(run) if run else None
        fig.waiting_max = max(wait) if wait else None
        fig.kv_usage_max = max(kv) if kv else None
    return fig
