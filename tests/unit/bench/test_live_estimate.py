"""The progress bar's live token estimate finds the final usage even when [DONE] came in its own read."""

from perftune.bench.records import RawCapture
from perftune.bench.runner import _count_out_tokens_estimate


def _cap(*reads: bytes) -> RawCapture:
    return RawCapture(
        idx=0, trial=0, api="completions", t_sched_ns=0, reads=[(i, r) for i, r in enumerate(reads)]
    )


def test_usage_and_done_in_one_read() -> None:
    assert (
        _count_out_tokens_estimate(_cap(b'data: {"usage":{"completion_tokens": 16}}\n\ndata: [DONE]\n\n'))
        == 16
    )


def test_usage_in_the_read_before_done() -> None:
    cap = _cap(
        b'data: {"usage":{"completion_tokens":7}}\n\n',
        b'data: {"usage":{"completion_tokens":128}}\n\n',
        b"data: [DONE]\n\n",
    )
    assert _count_out_tokens_estimate(cap) == 128


def test_no_usage_and_no_reads_count_zero() -> None:
    assert _count_out_tokens_estimate(_cap()) == 0
    assert _count_out_tokens_estimate(_cap(b"data: [DONE]\n\n")) == 0
