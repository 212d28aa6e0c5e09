"""The bench client's pure core against wire transcripts recorded from real vLLM 0.26.0."""

from pathlib import Path

import pytest

from perftune.bench.records import RawCapture, decode
from perftune.telemetry.prom import parse_totals, prefix_cache_hit_rate

T = Path(__file__).parent / "transcripts" / "vllm-0.26.0"


def _decode(name: str, api: str) -> object:
    data = (T / name).read_bytes()
    # Feed it as the network would: arbitrary read boundaries, one ms apart.
    reads = [(i * 1_000_000, data[k : k + 97]) for i, k in enumerate(range(0, len(data), 97))]
    cap = RawCapture(idx=0, trial=0, api=api, t_sched_ns=0, t_send_ns=0, status=200)  # type: ignore[arg-type]
    cap.reads, cap.t_end_ns = reads, reads[-1][0]
    return decode(cap)


def test_completions_stream_counts_tokens_from_usage_deltas() -> None:
    r = _decode("completions_stream.sse", "completions")
    assert r.ok and r.token_source == "usage_delta"  # type: ignore[attr-defined]
    assert r.output_tokens == 6 and r.input_tokens == 4  # type: ignore[attr-defined]


def test_chat_stream_role_chunk_carries_zero_tokens() -> None:
    r = _decode("chat_stream.sse", "chat")
    assert r.ok and r.output_tokens == 6  # type: ignore[attr-defined]
    assert r.chunks[0].tokens == 0 and r.chunks[0].text_len == 0  # type: ignore[attr-defined]
    assert r.token_chunks[0] is r.chunks[1]  # type: ignore[attr-defined]


def test_chat_stream_without_usage_falls_back_to_chunk_count() -> None:
    r = _decode("chat_stream_no_usage.sse", "chat")
    assert r.ok and r.token_source == "chunk_count" and r.output_tokens == 4  # type: ignore[attr-defined]


def test_vllm_metrics_prefix_cache_counters() -> None:
    before = parse_totals((T / "metrics.prom").read_text())
    after = parse_totals((T / "metrics_after.prom").read_text())
    assert before["vllm:prefix_cache_queries_total"] == 24.0
    rate = prefix_cache_hit_rate(before, after)
    assert rate == pytest.approx((209664.0 - 0.0) / (1.277976e06 - 24.0))
