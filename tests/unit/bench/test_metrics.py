import pytest

from perftune.bench.calibrate import MockTruth, ceiling, point
from perftune.bench.load import assess_load
from perftune.bench.metrics import meets_slo, parse_slo, summarize_trial
from perftune.bench.records import Chunk, RequestRecord
from perftune.context import tier_for
from perftune.errors import ConfigError

from .factories import record

MS = 1_000_000


def _rec(
    idx: int, ttft: float, itl: float, n: int, ok: bool = True, kind: str | None = None
) -> RequestRecord:
    send = idx * 1000 * MS
    chunks = [Chunk(send + int((ttft + i * itl) * MS), 1, 1) for i in range(n)] if ok else []
    return record(
        idx=idx,
        ok=ok,
        error_kind=None if ok else kind,
        error_message="" if ok else "x",
        t_sched_ns=send,
        t_send_ns=send,
        t_end_ns=chunks[-1].t_ns if chunks else send,
        input_tokens=10 if ok else None,
        output_tokens=n if ok else 0,
        expected_input_tokens=10,
        expected_output_tokens=n,
        chunks=chunks,
    )


def test_summary_counts_failures_separately_and_goodput_denominator_includes_them() -> None:
    recs = [
        _rec(0, 50, 10, 11),
        _rec(1, 300, 10, 11),
        _rec(2, 0, 0, 0, ok=False, kind="timeout"),
        _rec(3, 0, 0, 0, ok=False, kind="error"),
    ]
    load = assess_load(
        [r.t_sched_ns for r in recs], [r.t_send_ns for r in recs], concurrency=1, requested_rate=None
    )
    t = summarize_trial(0, recs, load, parse_slo("ttft_ms=200,tpot_ms=40"))
    assert (t.counts.ok, t.counts.timeouts, t.counts.errors) == (2, 1, 1)
    assert t.ttft_ms.n == 2 and t.ttft_ms.mean == pytest.approx(175.0)  # failures not in latencies
    assert t.tpot_ms.mean == pytest.approx(10.0) and t.itl_ms.mean == pytest.approx(10.0)
    assert t.goodput_fraction == pytest.approx(1 / 4)
    assert t.counts.output_tokens == 22


def test_slo_parsing_and_checks() -> None:
    assert parse_slo("ttft_ms=200, tpot_ms=40") == {"ttft_ms": 200.0, "tpot_ms": 40.0}
    for bad in ("ttft=3", "ttft_ms=abc", "ttft_ms=-1", "ttft_ms"):
        with pytest.raises(ConfigError):
            parse_slo(bad)
    assert meets_slo(_rec(0, 50, 10, 5), {"itl_ms": 10.5}) and not meets_slo(
        _rec(0, 50, 10, 5), {"itl_ms": 9}
    )


def test_calibration_point_and_ceiling() -> None:
    truth = MockTruth(ttft_ms=100, itl_ms=20, isl=256, osl=128)
    assert truth.output_tok_s(1) == pytest.approx(128 / 2.64)
    pts = [
        point(64, 102, truth.output_tok_s(64) * 0.99, truth),
        point(256, 109, truth.output_tok_s(256), truth),
        point(512, 130, truth.output_tok_s(512), truth),
    ]
    assert [p.faithful for p in pts] == [True, True, False]
    best = ceiling(pts)
    assert best is not None and best.concurrency == 256
    assert ceiling(pts[2:]) is None


def test_tiering_is_draft_unless_all_conditions_hold() -> None:
    assert tier_for(trials=3, same_node=True, baseline="b") == ("VERDICT", [])
    tier, why = tier_for(trials=1, same_node=False, baseline=None)
    assert tier == "DRAFT" and len(why) == 3
