"""The tier rule's metric isolation: a latency claim is judged on median TPOT, a throughput claim on
output tok/s only where the steady state dominates."""

from __future__ import annotations

import pytest

from perftune.context import metric_isolation, tier_for


def test_latency_claim_is_isolated_on_median_tpot_at_any_request_count() -> None:
    ok, metric, why = metric_isolation("latency", num_requests=4, concurrency=16)
    assert ok is True and metric == "tpot_median_ms" and "decode" in why


def test_throughput_claim_at_few_requests_per_slot_is_not_isolated_and_is_draft() -> None:
    ok, metric, why = metric_isolation("throughput", num_requests=20, concurrency=16)
    assert ok is False and metric == "output_tok_s" and "ramp-up" in why
    tier, reasons = tier_for(trials=3, same_node=True, baseline="b", metric_isolated=False, isolation=why)
    assert tier == "DRAFT" and reasons == [f"metric not isolated: {why}"]


def test_throughput_claim_with_two_requests_per_slot_can_be_verdict() -> None:
    ok, _m, _w = metric_isolation("throughput", num_requests=32, concurrency=16)
    assert ok is True
    assert tier_for(trials=3, same_node=True, baseline="b", metric_isolated=True)[0] == "VERDICT"


def test_no_claim_leaves_the_rule_out_and_an_unknown_claim_is_refused() -> None:
    assert metric_isolation(None, num_requests=1, concurrency=64)[:2] == (None, None)
    assert metric_isolation("throughput", num_requests=1, concurrency=None)[0] is True  # open loop
    with pytest.raises(ValueError, match="unknown claim"):
        metric_isolation("goodput", num_requests=1, concurrency=1)
