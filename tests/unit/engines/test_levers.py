"""Lever catalog and adapters: pure translation, explicit refusals."""

import json
from pathlib import Path

import pytest

from perftune.engines.adapters import METRICS, plan
from perftune.errors import ConfigError
from perftune.serving.levers import catalog, describe, translate
from perftune.serving.spec import ServeSpec
from perftune.telemetry.prom import parse_totals

T = Path(__file__).resolve().parents[2] / "contract" / "transcripts" / "vllm-0.26.0"


def test_same_lever_translates_per_engine() -> None:
    lv = {
        "max-num-seqs": "64",
        "max-num-batched-tokens": 4096,
        "prefix-cache": "false",
        "kv-cache-dtype": "fp8",
        "cuda-graphs": False,
        "memory-fraction": 0.85,
    }
    assert translate(lv, "vllm", "0.26.0") == [
        "--max-num-seqs",
        "64",
        "--max-num-batched-tokens",
        "4096",
        "--no-enable-prefix-caching",
        "--kv-cache-dtype",
        "fp8",
        "--enforce-eager",
        "--gpu-memory-utilization",
        "0.85",
    ]
    assert translate(lv, "sglang") == [
        "--max-running-requests",
        "64",
        "--chunked-prefill-size",
        "4096",
        "--disable-radix-cache",
        "--kv-cache-dtype",
        "fp8_e4m3",
        "--disable-cuda-graph",
        "--mem-fraction-static",
        "0.85",
    ]
    assert translate({"prefix-cache": True, "cuda-graphs": True}, "sglang") == []  # defaults: nothing to add
    assert translate({"expert-parallel": True}, "sglang", tp=4) == ["--ep-size", "4"]
    assert translate({"kv-cache-type": "q8_0", "flash-attn": True}, "llamacpp") == [
        "--cache-type-k",
        "q8_0",
        "--cache-type-v",
        "q8_0",
        "--flash-attn=on",
    ]


def test_json_levers_sharing_a_flag_merge() -> None:
    argv = translate({"cudagraph-mode": "PIECEWISE"}, "vllm", "0.26.0")
    assert argv[0] == "--compilation-config" and json.loads(argv[1]) == {"cudagraph_mode": "PIECEWISE"}


@pytest.mark.parametrize(
    ("levers", "engine", "version", "message"),
    [
        ({"max-num-seqz": 1}, "vllm", None, "unknown lever 'max-num-seqz'.*"),
        ({"max-num-seqs": 0}, "vllm", None, r"out of range \[1, 8192\]"),
        ({"max-num-seqs": "many"}, "vllm", None, "not a valid int"),
        ({"kv-cache-dtype": "int3"}, "vllm", None, "not one of auto, fp8"),
        ({"prefix-cache": True}, "llamacpp", None, "not supported by llamacpp"),
        ({"cudagraph-mode": "FULL"}, "sglang", "0.5.16", "not supported by sglang 0.5.16"),
        ({"cuda-graph-max-bs": 8}, "vllm", "0.9.2", r"not supported by vllm 0.9.2 \(needs >=0.11\)"),
    ],
)
def test_refusals_are_explicit(
    levers: dict[str, object], engine: str, version: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        translate(levers, engine, version)


def test_unknown_lever_suggests_the_closest() -> None:
    with pytest.raises(ConfigError) as e:
        translate({"max-num-seqz": 1}, "vllm")
    assert "did you mean max-num-seqs" in e.value.hint


def test_adapters_build_launch_plans() -> None:
    v = plan(
        ServeSpec(
            engine="vllm",
            model="/m/llama-dummy",
            levers={"kv-cache-dtype": "fp8"},
            extra_args=["--load-format", "dummy"],
        ),
        port=8123,
    )
    assert v.argv[2:5] == ["vllm.entrypoints.cli.main", "serve", "/m/llama-dummy"]
    assert v.served_name == "llama-dummy" and "--port" in v.argv and "8123" in v.argv
    assert (
        v.env["VLLM_SERVER_DEV_MODE"] == "1" and v.cache_reset and v.cache_reset.path == "/reset_prefix_cache"
    )
    assert v.argv[-4:] == ["--kv-cache-dtype", "fp8", "--load-format", "dummy"]
    s = plan(ServeSpec(engine="sglang", model="/m/x", tp=2, levers={"tensor-parallel": 2}))
    assert "--enable-metrics" in s.argv and s.argv.count("--tp-size") == 1
    assert s.cache_reset and s.cache_reset.path == "/flush_cache"
    with pytest.raises(ConfigError, match="conflicts"):
        plan(ServeSpec(engine="vllm", model="/m/x", tp=2, levers={"tp": 4}))
    with pytest.raises(ConfigError, match="no tensor/data parallelism"):
        plan(ServeSpec(engine="llamacpp", model="/m/x.gguf", tp=2))


def test_vllm_metric_names_exist_in_a_real_vllm_scrape() -> None:
    names = set(parse_totals((T / "metrics.prom").read_text()))
    for key, metric in METRICS["vllm"].items():
        if key.startswith("spec_"):
            continue  # spec-decode counters exist only with speculative decoding on
        assert metric in names, metric


def test_catalog_covers_the_issue_levers_and_describes_them() -> None:
    need = {
        "memory-fraction",
        "batch-cap",
        "prefill-chunk",
        "prefix-cache",
        "kv-cache-dtype",
        "cuda-graphs",
        "cudagraph-mode",
        "cuda-graph-max-bs",
        "expert-parallel",
        "attention-backend",
        "moe-backend",
        "speculative",
        "quantization",
        "tensor-parallel",
        "data-parallel",
        "flash-attn",
        "gpu-layers",
        "threads",
        "micro-batch",
        "kv-cache-type",
        "max-model-len",
    }
    assert need <= set(catalog())
    rows = describe("sglang")
    assert all("sglang" in r for r in rows)
    assert next(r for r in describe() if r["lever"] == "prefix-cache")["llamacpp"] == "not supported"
