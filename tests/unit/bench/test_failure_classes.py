"""How a failed request is classified, and what its record keeps, from hand-built raw captures.

The captures are what the client records (bench/client.py): an HTTP error status with its message and
no reads; a timeout or a transport failure (`error`) with the reads that arrived before it.
"""

from pathlib import Path

import orjson
import pytest

from perftune.bench.load import assess_load
from perftune.bench.metrics import summarize_trial
from perftune.bench.records import (
    FAILURE_CLASSES,
    PartialSink,
    RawCapture,
    RequestRecord,
    decode,
    failure_class,
    read_partial,
)

MS = 1_000_000


def _tok(cum: int, api: str = "completions") -> bytes:
    choice = (
        {"index": 0, "text": " tok"} if api == "completions" else {"index": 0, "delta": {"content": " tok"}}
    )
    obj = {"choices": [choice], "usage": {"prompt_tokens": 8, "completion_tokens": cum}}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
DONE = b"data: [DONE]\n\n"


def _cap(
    idx: int,
    reads: list[tuple[int, bytes]],
    *,
    status: int = 200,
    kind: str | None = None,
    message: str = "",
    api: str = "completions",
    end_ms: int | None = None,
) -> RawCapture:
    c = RawCapture(idx=idx, trial=0, api=api, t_sched_ns=idx * MS, t_send_ns=idx * MS, status=status)  # type: ignore[arg-type]
    c.reads = reads
    c.error_kind = kind  # type: ignore[assignment]
    c.error_message = message
    c.t_end_ns = end_ms * MS if end_ms is not None else (reads[-1][0] if reads else idx * MS)
    return c


def _ok(idx: int) -> RawCapture:
    return _cap(idx, [(100 * MS, _tok(1)), (110 * MS, _tok(2)), (120 * MS, _tok(3) + DONE)])


def _http500(idx: int) -> RawCapture:
    # the client keeps the server's message and drops the body bytes
    msg = "HTTP 500: simulated engine fault (--fault http500)"
    return _cap(idx, [], status=500, kind="error", message=msg, end_ms=5)


def _timeout(idx: int) -> RawCapture:  # a chat stream that opened (role chunk) and never sent a token
    return _cap(
        idx,
        [(5 * MS, ROLE)],
        kind="timeout",
        message="no complete response within 3 s",
        api="chat",
        end_ms=3000,
    )


def _dropped(idx: int) -> RawCapture:  # two tokens, then the connection closed inside the third event
    reads = [(100 * MS, _tok(1)), (110 * MS, _tok(2)), (115 * MS, _tok(3)[:25])]
    msg = "ConnectionResetError: connection closed by server"
    return _cap(idx, reads, kind="error", message=msg, end_ms=116)


def _refused(idx: int) -> RawCapture:  # no head at all: the engine is down
    return _cap(
        idx, [], status=0, kind="error", message="ConnectionRefusedError: [Errno 111] refused", end_ms=1
    )


def test_every_failure_gets_its_class_and_keeps_what_arrived() -> None:
    ok = decode(_ok(0))
    assert ok.ok and ok.error_kind is None and ok.output_tokens == 3

    http = decode(_http500(1))
    assert (http.ok, http.error_kind, http.status, http.output_tokens) == (False, "error", 500, 0)
    assert "--fault http500" in http.error_message

    slow = decode(_timeout(2))
    assert (slow.ok, slow.error_kind, slow.output_tokens, slow.ttft_ms) == (False, "timeout", 0, None)
    assert len(slow.chunks) == 1  # the role chunk is kept, carrying no token

    drop = decode(_dropped(3))
    assert (drop.ok, drop.error_kind, drop.status) == (False, "dropped", 200)
    assert drop.output_tokens == 2 and [c.tokens for c in drop.chunks] == [1, 1]  # the torn third: gone
    assert drop.token_source == "usage_delta" and drop.text == " tok tok"
    assert drop.ttft_ms == pytest.approx(100.0 - 3.0)  # defined: a token did arrive
    assert drop.e2e_ms is None and drop.tpot_ms is None  # but a broken request has no latency
    assert "connection closed by server" in drop.error_message

    refused = decode(_refused(4))
    assert (refused.ok, refused.error_kind, refused.output_tokens, refused.chunks) == (
        False,
        "connection",
        0,
        [],
    )

    cancelled = decode(_cap(5, [(100 * MS, _tok(1))], kind="cancelled", message="cancelled"))
    assert (cancelled.error_kind, cancelled.output_tokens) == ("cancelled", 1)


def test_the_class_comes_from_the_captures_facts() -> None:
    assert failure_class(_ok(0)) is None
    assert [failure_class(c) for c in (_http500(0), _timeout(0), _dropped(0), _refused(0))] == [
        "error",
        "timeout",
        "dropped",
        "connection",
    ]
    # a 4xx answered with a body is the server's error, never a transport failure
    assert failure_class(_cap(0, [], status=429, kind="error", message="HTTP 429: busy")) == "error"
    assert set(FAILURE_CLASSES) == {"error", "timeout", "cancelled", "dropped", "connection"}


def test_an_error_event_names_the_failure_even_when_the_connection_then_broke() -> None:
    err = b'data: {"error": {"message": "EngineCore died", "code": 500}}\n\n'
    cap = _cap(0, [(100 * MS, _tok(1)), (120 * MS, err)], kind="error", message="ConnectionResetError: x")
    r = decode(cap)
    assert (r.error_kind, r.output_tokens) == ("error", 1)
    assert r.error_message == "stream error: EngineCore died (then ConnectionResetError: x)"


def test_a_healthy_stream_with_garbage_is_still_an_error() -> None:
    r = decode(_cap(0, [(100 * MS, _tok(1)), (110 * MS, b"data: {not json\n\n" + DONE)]))
    assert (r.ok, r.error_kind, r.output_tokens) == (False, "error", 1)
    assert "unparseable SSE data" in r.error_message


def test_trial_counts_break_failures_down_and_keep_ok_numbers_clean() -> None:
    caps = [_ok(0), _ok(1), _http500(2), _timeout(3), _dropped(4), _dropped(5), _refused(6)]
    recs = [decode(c) for c in caps]
    load = assess_load(
        [r.t_sched_ns for r in recs], [r.t_send_ns for r in recs], concurrency=2, requested_rate=None
    )
    t = summarize_trial(0, recs, load, {})
    c = t.counts
    assert (c.sent, c.ok, c.errors, c.timeouts, c.cancelled) == (7, 2, 4, 1, 0)
    assert (c.dropped, c.connection_errors) == (2, 1)
    assert c.sent == c.ok + c.errors + c.timeouts + c.cancelled
    # only completed requests feed the numbers: the dropped ones' 2 + 2 tokens are in their records only
    assert c.output_tokens == 6 and t.ttft_ms.n == 2 and t.e2e_ms.n == 2
    assert sum(r.output_tokens for r in recs if not r.ok) == 4


def test_failed_requests_survive_the_partial_file_and_the_records_round_trip(tmp_path: Path) -> None:
    caps = [_ok(0), _http500(1), _timeout(2), _dropped(3), _refused(4)]
    sink = PartialSink(tmp_path / "records.partial.jsonl", {"note": "test"})
    for c in caps:
        sink.add(c)
    sink.close()
    header, back = read_partial(tmp_path / "records.partial.jsonl")
    assert header["incomplete"] is True and len(back) == 5
    recs = [decode(c) for c in back]
    assert [r.error_kind for r in recs] == [None, "error", "timeout", "dropped", "connection"]
    assert [r.output_tokens for r in recs] == [3, 0, 0, 2, 0]
    assert recs == [decode(c) for c in caps]  # the file holds everything decode needs
    for r in recs:  # and the final records file (JSON lines) keeps class and partial tokens
        assert RequestRecord.from_json(orjson.loads(orjson.dumps(r.to_json()))) == r
