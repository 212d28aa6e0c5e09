"""Prometheus text -> counters, with prometheus-client's own parser; pure except `scrape`.

Used by the bench to verify cache hygiene from the engine's counters instead of assuming it: the
prefix-cache hit rate of each trial is the change in hits over the change in queries.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

# (queries, hits) counter names per engine, as exposed on /metrics. vLLM counts tokens.
PREFIX_CACHE_COUNTERS: dict[str, tuple[str, str]] = {
    "vllm": ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"),
}


def parse_totals(text: str) -> dict[str, float]:
    """Sum every sample by name over its labels (engines, models): {sample_name: value}."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
    return out


def prefix_cache_hit_rate(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Hits / queries between two snapshots, for whichever engine's counters are present."""
    for queries, hits in PREFIX_CACHE_COUNTERS.values():
        if queries in before and queries in after:
            dq = after[queries] - before[queries]
            dh = after.get(hits, 0.0) - before.get(hits, 0.0)
            return dh / dq if dq > 0 else None
    return None


def known_counter_names() -> Iterable[str]:
    for pair in PREFIX_CACHE_COUNTERS.values():
        yield from pair
