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


def parse_totals(text: str) -> dict[str, float]:
    """Sum every sample by name over its labels (engines, models): {sample_name: value}. Samples with a
    `mode` label are also summed per mode, as `name[mode=VALUE]`."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
            if "mode" in s.labels:
                key = f"{s.name}[mode={s.labels['mode']}]"
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
