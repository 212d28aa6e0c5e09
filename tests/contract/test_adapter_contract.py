"""One contract every engine adapter passes, fed with wire transcripts recorded from the engines.

Each transcripts/<engine>/ folder holds the same requests' responses (scripts/capture_transcripts.sh)
and a manifest.yaml stating what that engine does (vLLM from the GPU host; the simulator and
llama-cpp-python from the CPU dev machine). The client's pure core must decode every stream exactly,
read every error body, and map every engine's /metrics into the one telemetry schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from perftune.bench.client import _server_message
from perftune.bench.records import RawCapture, RequestRecord, decode
from perftune.bench.runner import _detect_engine, _reset_path
from perftune.serving.registry import engine
from perftune.serving.spec import ServeSpec
from perftune.telemetry.prom import METRICS, parse_totals, prefix_cache_hit_rate, snapshot, spec_figures

ROOT = Path(__file__).parent / "transcripts"
ENGINES = sorted(p.name for p in ROOT.iterdir() if (p / "manifest.yaml").exists())


@pytest.fixture(params=ENGINES)
def eng(request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any]]:
    d = ROOT / request.param
    return d, YAML(typ="safe").load((d / "manifest.yaml").read_text())


def _decode(path: Path, api: str) -> RequestRecord:
    data = path.read_bytes()
    # Feed it as the network would: arbitrary read boundaries, one ms apart.
    reads = [(i * 1_000_000, data[k : k + 97]) for i, k in enumerate(range(0, len(data), 97))]
    cap = RawCapture(idx=0, trial=0, api=api, t_sched_ns=0, t_send_ns=0, status=200)  # type: ignore[arg-type]
    cap.reads, cap.t_end_ns = reads, reads[-1][0]
    return decode(cap)


def _status_body(path: Path) -> tuple[int, bytes]:
    body, _, status = path.read_bytes().rstrip().rpartition(b"\nHTTP ")
    return int(status), body


def test_adapter_plans_a_launch(eng: tuple[Path, dict[str, Any]]) -> None:
    _, m = eng
    model = (
        "llama-3.1-8b" if m["engine"] == "sim" else "/models/x.gguf" if m["engine"] == "llamacpp" else "/m"
    )
    p = engine(m["engine"]).plan(
        ServeSpec(engine=m["engine"], model=model, served_name=m["served"]), host="h", port=1
    )
    assert p.served_name == m["served"] and str(1) in p.argv and p.health_path
    assert (p.metrics_path is not None) == m["metrics"]
    assert (p.cache_reset is not None) == (m["reset_status"] == 200)


def test_models_list_names_the_served_model(eng: tuple[Path, dict[str, Any]]) -> None:
    d, m = eng
    data = json.loads((d / "models.json").read_text())["data"]
    assert [x["id"] for x in data] == [m["served"]]
    assert _detect_engine(data[0].get("owned_by")) == m["detected_engine"]


def test_completion_stream_counts_exact_tokens(eng: tuple[Path, dict[str, Any]]) -> None:
    d, m = eng
    if not m["token_id_prompts"]:
        assert "validation error" in (d / "completions_stream.sse").read_text()  # the engine's own refusal
        pytest.skip(f"{m['engine']} rejects token-id prompts: synthetic workloads need a text variant")
    r = _decode(d / "completions_stream.sse", "completions")
    want = m["completions"]
    assert r.ok and r.output_tokens == want["output_tokens"] and r.input_tokens == want["input_tokens"]
    assert r.token_source == want["token_source"]
    assert all(c.tokens == 1 for c in r.token_chunks)


def test_chat_stream_role_chunk_never_starts_ttft(eng: tuple[Path, dict[str, Any]]) -> None:
    d, m = eng
    r = _decode(d / "chat_stream.sse", "chat")
    assert r.ok and r.output_tokens == m["chat"]["output_tokens"]
    if m["chat"]["role_chunk"]:
        assert r.chunks[0].tokens == 0 and r.token_chunks[0] is not r.chunks[0]


def test_chat_stream_without_usage_counts_chunks(eng: tuple[Path, dict[str, Any]]) -> None:
    d, m = eng
    r = _decode(d / "chat_stream_no_usage.sse", "chat")
    want = m["chat_no_usage"]
    assert r.ok and r.token_source == want["token_source"] and r.output_tokens == want["output_tokens"]


def test_error_bodies_become_one_line_messages(eng: tuple[Path, dict[str, Any]]) -> None:
    d, m = eng
    status, body = _status_body(d / "error_wrong_model.txt")
    assert status == m["wrong_model_status"]
    if status != 200:
        msg = _server_message(status, body)
        assert "nope" in msg and "\n" not in msg
    status, body = _status_body(d / "error_too_long.txt")
    assert status == m["too_long_status"]
    if status != 200:
        msg = _server_message(status, body)
        assert "max" in msg.lower() and "\n" not in msg


def test_cache_reset_endpoint_matches_the_runner(eng: tuple[Path, dict[str, Any]]) -> None:
    d, m = eng
    status, _ = _status_body(d / "reset_prefix_cache.txt")
    assert status == m["reset_status"]
    assert (_reset_path("auto", m["detected_engine"]) is not None) == (status == 200)


def test_metrics_map_into_one_schema(eng: tuple[Path, dict[str, Any]]) -> None:
    d, m = eng
    if not m["metrics"]:
        assert METRICS[m["engine"]] == {}
        return
    before = snapshot((d / "metrics.prom").read_text(), m["engine"])
    after = snapshot((d / "metrics_after.prom").read_text(), m["engine"])
    fields = m.get(
        "telemetry_fields", ["running", "waiting", "kv_usage", "prefix_queries", "prefix_hits", "preemptions"]
    )
    for field in fields:
        assert getattr(after, field) is not None, field
    assert (after.prefix_hits or 0) >= (before.prefix_hits or 0)
    rate = prefix_cache_hit_rate(
        parse_totals((d / "metrics.prom").read_text()), parse_totals((d / "metrics_after.prom").read_text())
    )
    assert rate is not None and 0.0 <= rate <= 1.0
    if m.get("prefix_hits_after"):
        assert rate > 0.3  # the capture's prefix-sharing pair hit the cache


def test_spec_acceptance_is_absent_when_the_recorded_engine_does_not_speculate(
    eng: tuple[Path, dict[str, Any]],
) -> None:
    """Every transcript was recorded without speculative decoding: no engine's /metrics may read as an
    acceptance (vLLM exports no spec counters then; SGLang exports its gauges at 0.0)."""
    d, m = eng
    if not m["metrics"]:
        return
    fig = spec_figures(
        parse_totals((d / "metrics.prom").read_text()), parse_totals((d / "metrics_after.prom").read_text())
    )
    assert fig is None or (fig.accept_length is None and fig.accept_rate is None), fig
    if m["engine"] == "sglang":
        assert fig is not None and "speculation is off" in fig.source


def test_vllm_exports_its_spec_counters_when_speculating() -> None:
    """vLLM 0.26.0 serving with ngram K=4 (recorded on the GPU host, before any request): the counters
    perftune reads exist under the names it reads, one accepted-per-position series per drafted
    position, and a window without a draft reads as 'no draft', never as an acceptance."""
    from perftune.telemetry.prom import SPEC_VLLM

    t = parse_totals((ROOT / "vllm-0.26.0-spec" / "metrics.prom").read_text())
    for key in ("drafts", "draft_tokens", "accepted"):
        assert SPEC_VLLM[key] in t, SPEC_VLLM[key]
    assert [n for n in t if n.startswith(SPEC_VLLM["per_pos"] + "[")] == [
        f"{SPEC_VLLM['per_pos']}[position={i}]" for i in range(4)
    ]
    fig = spec_figures(t, t)
    assert fig is not None and fig.drafts == 0.0 and fig.accept_length is None
    assert "no draft" in fig.source
    # the same scrape with counters advanced as one trial of the GPU run read them (chat, c=1)
    after = {**t, SPEC_VLLM["drafts"]: 251.0, SPEC_VLLM["draft_tokens"]: 1004.0, SPEC_VLLM["accepted"]: 684.0}
    got = spec_figures(t, after)
    assert got is not None and got.accept_length == pytest.approx(1 + 684 / 251)
    assert got.accept_rate == pytest.approx(684 / 1004)


def test_sglang_exports_its_spec_counters_when_speculating() -> None:
    """SGLang 0.5.16 serving with ngram K=3 (recorded on the GPU host, before and after 8 chat requests):
    perftune reads the window's acceptance from SGLang's per-request counters, not from its gauge of
    the last log window: (generated - requests) / verify steps."""
    from perftune.telemetry.prom import SPEC_SGLANG

    d = ROOT / "sglang-0.5.16-spec"
    b, a = (parse_totals((d / n).read_text()) for n in ("metrics.prom", "metrics_after.prom"))
    for key in ("verify", "generated", "requests", "draft_tokens", "accept_length"):
        assert SPEC_SGLANG[key] in a, SPEC_SGLANG[key]
    fig = spec_figures(b, a)
    assert fig is not None and fig.source == "sglang counters"
    assert fig.drafts == 806.0 and fig.accepted == 925 - 8 - 806
    assert fig.accept_length == pytest.approx((925 - 8) / 806)
    assert fig.draft_tokens == 806 * 3 and fig.accept_rate == pytest.approx(111 / (806 * 3))
    assert a[SPEC_SGLANG["accept_length"]] == 1.0  # the gauge: only its last window, not the trial
    # a scrape pair with no request finished between them: no verify step, never an acceptance
    same = spec_figures(a, a)
    assert same is not None and same.accept_length is None and "no verify step" in same.source
