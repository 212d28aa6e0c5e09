"""Token accounting (issue 23): one token per chunk -> the final usage suffices and ITL stays exact;
chunks carrying several tokens -> per-chunk usage, or an estimate that is flagged. Against recorded
vLLM 0.26.0 and SGLang 0.5.16 wire transcripts (tests/contract/transcripts)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from perftune.bench import accounting
from perftune.bench.records import RawCapture, RequestRecord, decode
from perftune.bench.workloads import RequestItem, request_body

from .factories import record

T = Path(__file__).parents[2] / "contract" / "transcripts"
MS = 1_000_000


def _events(path: Path) -> list[bytes]:
    return [b for b in path.read_bytes().split(b"\n\n") if b.strip()]


def _capture(events: list[bytes], api: str) -> RawCapture:
    """One read per event, 10 ms apart (a real stream's spacing does not matter to the counts)."""
    cap = RawCapture(idx=0, trial=0, api=api, t_sched_ns=0, t_send_ns=0, status=200)  # type: ignore[arg-type]
    cap.reads = [((i + 1) * 10 * MS, e + b"\n\n") for i, e in enumerate(events)]
    cap.t_end_ns = cap.reads[-1][0]
    return cap


def _final_usage_only(events: list[bytes], total: int | None = None) -> list[bytes]:
    """The same stream as the server sends it without continuous_usage_stats: usage removed from every
    chunk with choices; the usage-only chunk at the end kept (or added with `total`)."""
    out = []
    for e in events:
        if not e.startswith(b"data: {"):
            out.append(e)
            continue
        obj = orjson.loads(e[6:])
        if obj.get("choices"):
            obj.pop("usage", None)
        out.append(b"data: " + orjson.dumps(obj))
    if total is not None:
        usage = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": total}}
        out.insert(len(out) - 1, b"data: " + orjson.dumps(usage))
    return out


@pytest.mark.parametrize(
    ("engine", "name", "api"),
    [
        ("vllm-0.26.0", "completions_stream.sse", "completions"),
        ("vllm-0.26.0", "chat_stream.sse", "chat"),
        ("sglang-0.5.16", "completions_stream.sse", "completions"),
        ("sglang-0.5.16", "chat_stream.sse", "chat"),
    ],
)
def test_one_token_per_chunk_final_usage_is_as_exact_as_per_chunk_usage(
    engine: str, name: str, api: str
) -> None:
    events = _events(T / engine / name)
    per_chunk = decode(_capture(events, api))
    final = decode(_capture(_final_usage_only(events), api))
    assert per_chunk.token_source == "usage_delta" and per_chunk.output_tokens == 6
    assert final.token_source == "final_usage_chunks" and final.itl_exact
    assert [c.tokens for c in final.chunks] == [c.tokens for c in per_chunk.chunks]
    assert final.ttft_ms == per_chunk.ttft_ms and final.itl_ms() == per_chunk.itl_ms()
    # the opener (chat) and SGLang's finish-only closer carry nothing
    assert sum(1 for c in final.chunks if c.tokens == 0) == (
        0 if api == "completions" else 1 + (engine[0] == "s")
    )


def test_a_merged_chunk_is_caught_and_estimated_never_silently_one_per_chunk() -> None:
    # SGLang 0.5.16 streamed max_tokens=4 as 3 text chunks: an incomplete UTF-8 byte token was held
    # and sent with the next token ("\ufffd Voice"), then a finish-only closer with no text field.
    events = _final_usage_only(_events(T / "sglang-0.5.16" / "chat_stream_no_usage.sse"), total=4)
    rec = decode(_capture(events, "chat"))
    assert rec.output_tokens == 4  # the total stays exact
    assert rec.token_source == "final_usage" and not rec.itl_exact  # the split is an estimate
    check = accounting.check_chunks([rec])
    assert (check.checked, check.exact) == (1, 0) and "4 output tokens over 5 chunks" in (check.example or "")


def test_an_empty_text_chunk_counts_as_a_token_when_the_usage_says_so() -> None:
    # vLLM streams a byte token whose text is not yet a whole character as text "" (the dummy model
    # emits many): 4 tokens over 4 chunks, one of them empty, is exact; spreading by text length is not.
    def c(text: str, fin: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({"choices": [{"index": 0, "text": text, "finish_reason": fin}]})

    usage = b"data: " + orjson.dumps({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 4}})
    rec = decode(
        _capture([c("ab"), c(""), c("\u00e9"), c("", "length"), usage, b"data: [DONE]"], "completions")
    )
    assert rec.token_source == "final_usage_chunks"
    assert [x.tokens for x in rec.chunks] == [1, 1, 1, 1]


def test_multi_token_chunks_need_per_chunk_usage() -> None:
    # speculative decoding: 9 tokens in 3 chunks; the per-chunk deltas place them exactly ...
    def c(text: str, cum: int | None) -> bytes:
        o: dict[str, object] = {"choices": [{"index": 0, "text": text}]}
        if cum is not None:
            o["usage"] = {"prompt_tokens": 4, "completion_tokens": cum}
        return b"data: " + orjson.dumps(o)

    usage = b"data: " + orjson.dumps({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 9}})
    exact = decode(_capture([c("a", 1), c("bcde", 5), c("fghi", 9), usage, b"data: [DONE]"], "completions"))
    assert exact.token_source == "usage_delta" and [x.tokens for x in exact.chunks] == [1, 4, 4]
    # ... the final usage alone cannot: flagged as an estimate, and auto asks for per-chunk usage
    est = decode(
        _capture([c("a", None), c("bcde", None), c("fghi", None), usage, b"data: [DONE]"], "completions")
    )
    assert est.token_source == "final_usage" and est.output_tokens == 9 and not est.itl_exact
    assert est.estimated_tokens == 6 and all(c.tokens >= 1 for c in est.chunks)
    report = accounting.after_warmup("auto", {}, [est, est])
    assert report.used == "per-chunk" and "67% of tokens came several to a chunk" in report.reason
    flag, note = accounting.trial_check(3, "final", [est] * 10)
    assert note is None and flag is not None and flag.startswith("trial 3: 10 of 10 requests")
    assert "(66.7%)" in flag and "--token-accounting per-chunk" in flag


def _rec(source: str, estimated: int = 0) -> RequestRecord:
    return record(
        t_end_ns=1, input_tokens=4, output_tokens=100, token_source=source, estimated_tokens=estimated
    )


def test_auto_mode_decisions() -> None:
    exact = [_rec("final_usage_chunks")] * 8
    r = accounting.after_warmup("auto", {}, exact)
    assert r.used == "final" and "all 8 requests" in r.reason and r.warmup is not None
    # a speculative lever: per-chunk from the start, the warmup is not even asked
    spec = {"speculative": '{"method": "ngram", "num_speculative_tokens": 4}'}
    r = accounting.after_warmup("auto", spec, exact)
    assert r.used == "per-chunk" and "lever speculative=" in r.reason
    assert accounting.multi_token_reason({"stream-interval": 1}) is None  # one token per chunk
    assert accounting.multi_token_reason({"--num-scheduler-steps": 8}) is not None
    # no warmup: final, and every trial request is checked instead
    assert "every trial request is checked" in accounting.after_warmup("auto", {}, []).reason
    # explicit modes are obeyed whatever the warmup showed
    assert accounting.after_warmup("final", spec, []).used == "final"
    assert accounting.after_warmup("per-chunk", {}, exact).used == "per-chunk"
    # merging under load, as measured on vLLM 0.26 at c=256 (about half the requests, ~3% of tokens):
    # the warmup keeps the cheap mode, and a trial gets a note, not a flag
    load = [_rec("final_usage", 6)] * 50 + [_rec("final_usage_chunks")] * 50
    r = accounting.after_warmup("auto", {}, load)
    assert r.used == "final" and "50 of 100 requests had a merged chunk, 3.0% of tokens" in r.reason
    flag, note = accounting.trial_check(0, "final", load)
    assert flag is None and note is not None and "300 of 10,000 tokens (3.0%)" in note
    # ... unless an ITL SLO judges the per-token times
    flag, note = accounting.trial_check(0, "final", load, itl_slo=True)
    assert flag is not None and "an ITL SLO judges them" in flag and note is None
    # by design (> 5% of tokens): flagged
    flag, _ = accounting.trial_check(0, "final", [_rec("final_usage", 10)] * 10)
    assert flag is not None and "(10.0%)" in flag
    assert accounting.trial_check(0, "final", exact) == (None, None)


def test_request_body_asks_for_per_chunk_usage_only_when_told() -> None:
    item = RequestItem(api="completions", prompt_ids=[1, 2, 3], max_tokens=8, fixed_output=True)
    assert request_body(item, "m", per_chunk_usage=False)["stream_options"] == {"include_usage": True}
    assert request_body(item, "m", per_chunk_usage=True)["stream_options"] == {
        "include_usage": True,
        "continuous_usage_stats": True,
    }


def test_recorded_vllm_streams_without_per_chunk_usage_are_exact() -> None:
    # Recorded on one H200, vLLM 0.26.0, dummy Llama-3.1-8B (scripts/gpu/client_compare_vllm.sh start):
    # 128 random tokens, one streamed as an empty-text chunk (an incomplete UTF-8 sequence), asked for
    # with include_usage only; the same prompt with per-chunk usage; a chat stream of 64 tokens.
    d = T / "vllm-0.26.0"
    final = decode(_capture(_events(d / "completions_final_usage.sse"), "completions"))
    assert final.token_source == "final_usage_chunks" and final.output_tokens == 128
    assert [c.tokens for c in final.chunks] == [1] * 128 and sum(
        1 for c in final.chunks if not c.text_len
    ) == 1
    per_chunk = decode(_capture(_events(d / "completions_per_chunk_usage.sse"), "completions"))
    assert per_chunk.token_source == "usage_delta" and [c.tokens for c in per_chunk.chunks] == [1] * 128
    chat = decode(_capture(_events(d / "chat_final_usage.sse"), "chat"))
    assert chat.token_source == "final_usage_chunks" and chat.output_tokens == 64
    assert chat.chunks[0].tokens == 0 and sum(c.tokens for c in chat.chunks[1:]) == 64  # the role opener


def test_a_server_without_usage_is_not_taken_for_merged_chunks() -> None:
    # llama-cpp-python 0.3.36 streams no usage at all: per-chunk usage cannot help, no merge flag
    events = _events(T / "llamacpp-python-0.3.36" / "chat_stream_no_usage.sse")
    rec = decode(_capture(events, "chat"))
    assert rec.token_source == "chunk_count" and rec.output_tokens == 4  # opener and {} closer excluded
    check = accounting.check_chunks([rec])
    assert (check.checked, check.no_usage, check.mismatches) == (1, 1, 0)
    report = accounting.after_warmup("auto", {}, [rec, rec])
    assert report.used == "final" and "sent no usage" in report.reason
    flag, note = accounting.trial_check(0, "final", [rec] * 4)
    assert flag is None and note is not None and "no usage for 4 of 4 requests" in note


def test_speculative_levers_by_their_catalog_names() -> None:
    on = accounting.multi_token_reason
    assert on({"speculative": '{"method": "ngram", "num_speculative_tokens": 1}'}) is not None
    assert on({"speculative-config": "{}"}) is None and on({"speculative": "off"}) is None
    assert on({"num-speculative-tokens": 1}) is not None  # one draft token: up to 2 a step
    assert on({"stream-interval": 1}) is None and on({"stream_interval": 4}) is not None


def test_structural_chunks_alone_carry_no_token() -> None:
    opener = b"data: " + orjson.dumps(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    )
    closer = b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    rec = decode(_capture([opener, closer, b"data: [DONE]"], "chat"))
    assert not rec.ok and rec.token_source != "usage_delta" and "no generated tokens" in rec.error_message


def test_a_stream_cut_before_its_usage_counts_one_token_per_chunk_that_can_carry_one() -> None:
    # final-usage mode, the connection dropped mid-stream: vLLM's empty-text token chunk still counts
    def c(text: str) -> bytes:
        return b"data: " + orjson.dumps({"choices": [{"index": 0, "text": text, "finish_reason": None}]})

    cap = _capture([c("ab"), c(""), c("cd")], "completions")
    cap.error_kind, cap.error_message = "error", "ClientPayloadError: connection reset"
    rec = decode(cap)
    assert not rec.ok and rec.error_kind == "dropped" and rec.output_tokens == 3
