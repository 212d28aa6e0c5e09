import orjson
import pytest

from perftune.bench.records import RawCapture, RequestRecord, decode

MS = 1_000_000


def _sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _cmpl(text: str, cum: int | None = None, prompt: int = 10) -> bytes:
    o: dict[str, object] = {"choices": [{"index": 0, "text": text}]}
    if cum is not None:
        o["usage"] = {"prompt_tokens": prompt, "completion_tokens": cum}
    return _sse(o)


def _cap(reads: list[tuple[int, bytes]], api: str = "completions", **kw: object) -> RawCapture:
    c = RawCapture(idx=0, trial=0, api=api, t_sched_ns=0, t_send_ns=0, status=200, **kw)  # type: ignore[arg-type]
    c.reads = reads
    c.t_end_ns = reads[-1][0] if reads else 0
    return c


def test_usage_deltas_give_exact_tokens_per_chunk_and_per_token_itl() -> None:
    # first chunk 1 token at 100 ms, then 4 tokens per chunk every 80 ms (20 ms per token)
    reads = [
        (100 * MS, _cmpl("a", 1)),
        (180 * MS, _cmpl("bcde", 5)),
        (260 * MS, _cmpl("fghi", 9)),
        (
            260 * MS,
            _sse({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 9}})
            + b"data: [DONE]\n\n",
        ),
    ]
    r = decode(_cap(reads, expected_output_tokens=9, expected_input_tokens=10))
    assert r.ok and r.token_source == "usage_delta"
    assert [c.tokens for c in r.chunks] == [1, 4, 4]
    assert r.output_tokens == 9 and r.input_tokens == 10
    assert r.ttft_ms == pytest.approx(100.0)
    assert r.itl_ms() == pytest.approx([20.0] * 8)
    assert r.icl_ms() == pytest.approx([80.0, 80.0])
    assert r.tpot_ms == pytest.approx((260 - 100) / 8)
    assert not r.output_mismatch and not r.input_mismatch


def test_chat_role_only_chunk_does_not_start_ttft() -> None:
    role = _sse(
        {
            "choices": [{"delta": {"role": "assistant", "content": ""}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 0},
        }
    )
    tok = _sse(
        {"choices": [{"delta": {"content": "hi"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    )
    tok2 = _sse(
        {"choices": [{"delta": {"content": " there"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    )
    r = decode(_cap([(5 * MS, role), (50 * MS, tok), (60 * MS, tok2 + b"data: [DONE]\n\n")], api="chat"))
    assert r.ttft_ms == pytest.approx(50.0)
    assert r.output_tokens == 2


def test_falls_back_to_final_usage_when_chunks_carry_none() -> None:
    reads = [
        (10 * MS, _cmpl("ab")),
        (20 * MS, _cmpl("cd")),
        (20 * MS, _sse({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 4}})),
    ]
    r = decode(_cap(reads))
    assert r.token_source == "final_usage"
    assert r.output_tokens == 4
    assert sum(c.tokens for c in r.chunks) == 4


def test_falls_back_to_retokenizing_then_to_chunk_count() -> None:
    reads = [(10 * MS, _cmpl("one two")), (20 * MS, _cmpl(" three"))]
    r = decode(_cap(reads), count_tokens=lambda s: len(s.split()))
    assert r.token_source == "retokenized" and r.output_tokens == 3
    assert [c.tokens for c in r.chunks] == [2, 1]
    r2 = decode(_cap(reads))
    assert r2.token_source == "chunk_count" and r2.output_tokens == 2


def test_stream_error_event_and_empty_stream_are_errors() -> None:
    r = decode(_cap([(1, _cmpl("a", 1)), (2, _sse({"error": {"message": "engine died"}}))]))
    assert not r.ok and r.error_kind == "error" and "engine died" in r.error_message
    r2 = decode(_cap([(1, b"data: [DONE]\n\n")]))
    assert not r2.ok and "no generated tokens" in r2.error_message


def test_output_mismatch_is_detected() -> None:
    r = decode(_cap([(1, _cmpl("a", 1)), (2, _cmpl("b", 2))], expected_output_tokens=3))
    assert r.output_mismatch


def test_record_json_round_trip() -> None:
    r = decode(_cap([(1 * MS, _cmpl("a", 1)), (3 * MS, _cmpl("b", 2))]))
    back = RequestRecord.from_json(orjson.loads(orjson.dumps(r.to_json())))
    assert back == r
