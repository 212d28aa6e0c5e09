"""Dtype-aware ceilings: the bytes a deploy really reads per decode step (checkpoint quantization,
the quantization and KV-cache dtype levers), the roofline and %SoL built on them, and TP sizing."""

import json
from pathlib import Path
from typing import Any

import pytest

from perftune import api
from perftune.advisors.tp import advise_tp
from perftune.errors import ConfigError
from perftune.hardware.ceilings import gpu
from perftune.hardware.roofline import effective_dtypes, roofline, sol_pct
from perftune.models.card import KV_BYTES, WEIGHT_BYTES, ModelCard, build_card
from perftune.models.resolve import catalog_config, model_card

FP8_BLOCK = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
CT_FP8 = {
    "quant_method": "compressed-tensors",
    "format": "float-quantized",
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True},
            "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True},
        }
    },
    "ignore": ["lm_head"],
}


def _cfg(name: str, **extra: Any) -> dict[str, Any]:
    cfg = catalog_config(name)
    assert cfg is not None
    return dict(cfg, **extra)


def _fp8(name: str, qc: dict[str, Any] = FP8_BLOCK) -> ModelCard:
    return build_card(_cfg(name, quantization_config=qc), f"{name}-fp8")


def _kept_bytes(card: ModelCard) -> float:
    """Bytes of the groups no recipe here quantizes (embeddings, lm_head, norms, routers), at 16 bits."""
    p = card.params
    return 2.0 * (p.embedding + p.lm_head + p.norms + p.router)


def test_fp8_checkpoint_reads_half_the_linear_bytes_and_lowers_the_floor() -> None:
    bf16, fp8, g = model_card("llama-3.1-8b"), _fp8("llama-3.1-8b"), gpu("h100")
    d = effective_dtypes(fp8)
    assert (d.weight_dtype, d.kv_dtype) == ("fp8", "bf16")
    assert d.weight_source == "checkpoint quantization_config: fp8 block [128, 128]"
    assert d.kv_source == "auto: the model's dtype (bf16)"
    assert effective_dtypes(bf16).weight_dtype == "bf16"
    r16, r8 = roofline(bf16, g, batch=1, context=1), roofline(fp8, g, batch=1, context=1)
    assert (r8.weight_dtype, r8.weight_source) == ("fp8", d.weight_source)
    assert r16.weight_source == "checkpoint dtype: bf16 (not quantized)"
    # The embedding and lm_head (2 x 128256 x 4096 x 2 bytes = 2.1 GB) stay bf16; the linear layers halve.
    kept = _kept_bytes(fp8)
    assert kept == pytest.approx(2.1e9, rel=0.01)
    assert (r8.weight_bytes_read_per_step - kept) == pytest.approx(
        (r16.weight_bytes_read_per_step - kept) / 2, rel=0.001
    )
    assert r8.weight_bytes_read_per_step == pytest.approx(9.08e9, rel=0.005)
    assert fp8.native_weight_bytes == pytest.approx(r8.weight_bytes_read_per_step)
    # The floor drops with the bytes (memory-bound at batch 1), so %SoL of the same TPOT drops too.
    assert r8.decode_step_floor_ms / r16.decode_step_floor_ms == pytest.approx(9.08 / 16.06, rel=0.01)
    assert sol_pct(r16.decode_step_floor_ms, 6.46) == pytest.approx(74.2, abs=0.5)
    assert sol_pct(r8.decode_step_floor_ms, 6.46) == pytest.approx(42.0, abs=0.5)
    # The weights take less memory, so more KV fits.
    assert r8.kv_capacity_tokens > r16.kv_capacity_tokens + 6.9e9 / fp8.kv_bytes_per_token["bf16"]


def test_explicit_dtypes_still_win_as_what_ifs() -> None:
    fp8, g = _fp8("llama-3.1-8b"), gpu("h100")
    r = roofline(fp8, g, weight_dtype="bf16", kv_dtype="fp8")
    assert r.weight_bytes_per_gpu == pytest.approx(model_card("llama-3.1-8b").weight_bytes["bf16"])
    assert r.weight_source == "explicit weight dtype bf16; the checkpoint holds fp8"
    assert r.kv_source == "explicit KV dtype fp8"
    assert roofline(fp8, g, weight_dtype="bfloat16", kv_dtype="f16").kv_dtype == "fp16"  # engine spellings
    with pytest.raises(ConfigError, match="unknown weight dtype 'int3'"):
        roofline(fp8, g, weight_dtype="int3")
    with pytest.raises(ConfigError, match="unknown KV dtype 'fp4'"):
        roofline(fp8, g, kv_dtype="fp4")


def test_compressed_tensors_and_modelopt_checkpoints(tmp_path: Path) -> None:
    base = model_card("llama-3.1-8b")
    block = _fp8("llama-3.1-8b")
    ct = _fp8("llama-3.1-8b", CT_FP8)
    assert ct.quantization is not None and ct.quantization.unquantized_modules == ["lm_head"]
    d = effective_dtypes(ct)
    assert (
        d.weight_dtype == "fp8"
        and d.weight_source == "checkpoint quantization_config: compressed-tensors fp8"
    )
    assert ct.quantized_share["lm_head"] == 0.0
    assert ct.native_weight_bytes == pytest.approx(block.native_weight_bytes)
    # A compressed-tensors scheme over every Linear that does not ignore lm_head quantizes lm_head too.
    with_head = _fp8("llama-3.1-8b", dict(CT_FP8, ignore=[]))
    assert with_head.quantized_share["lm_head"] == 1.0
    lm_head = base.params.lm_head
    assert with_head.native_weight_bytes == pytest.approx(
        ct.native_weight_bytes - lm_head * (2.0 - WEIGHT_BYTES["fp8"]), rel=1e-9
    )
    # ModelOpt NVFP4 (hf_quant_config.json next to config.json): 4-bit + one fp8 scale per 16 weights.
    (tmp_path / "config.json").write_text(json.dumps(_cfg("llama-3.1-8b")))
    (tmp_path / "hf_quant_config.json").write_text(
        json.dumps(
            {
                "producer": {"name": "modelopt"},
                "quantization": {"quant_algo": "NVFP4", "group_size": 16, "exclude_modules": ["lm_head"]},
            }
        )
    )
    nv = model_card(str(tmp_path))
    dn = effective_dtypes(nv)
    assert (
        dn.weight_dtype == "nvfp4" and dn.weight_source == "checkpoint hf_quant_config.json: modelopt nvfp4"
    )
    kept = _kept_bytes(nv)
    assert (nv.native_weight_bytes - kept) / (base.native_weight_bytes - kept) == pytest.approx(
        (0.5 + 1 / 16) / 2
    )
    g = gpu("b200")
    assert roofline(nv, g).weight_bytes_read_per_step < 0.4 * roofline(base, g).weight_bytes_read_per_step


def test_unquantized_modules_keep_their_groups_16_bit() -> None:
    # gpt-oss: only the experts are MXFP4; attention, router, embeddings and lm_head stay bf16 (the
    # config's modules_to_not_convert says so), which is the published ~65 GB checkpoint.
    oss = model_card("gpt-oss-120b")
    assert oss.quantized_share["attention"] == 0.0 and oss.quantized_share["routed_experts"] == 1.0
    routed = oss.params.routed_experts
    assert oss.native_weight_bytes == pytest.approx(
        (oss.total_params - routed) * 2.0 + routed * WEIGHT_BYTES["mxfp4"]
    )
    assert effective_dtypes(oss).weight_dtype == "mxfp4"
    # Without the list (a hand-written config), the gpt-oss layout is assumed all the same.
    bare = _cfg("gpt-oss-120b", quantization_config={"quant_method": "mxfp4"})
    assert build_card(bare, "oss").native_weight_bytes == pytest.approx(oss.native_weight_bytes)
    # Modules listed per layer count the share of layers they name; regexes count every layer.
    ignore = ["lm_head"] + [f"model.layers.{i}.self_attn.o_proj" for i in range(8)]
    half = _fp8("llama-3.1-8b", dict(CT_FP8, ignore=ignore))
    assert half.quantized_share["attention"] == pytest.approx(1 - 8 / 32)
    regex = _fp8("llama-3.1-8b", dict(CT_FP8, ignore=["lm_head", "re:.*self_attn.*"]))
    assert regex.quantized_share["attention"] == 0.0 and regex.quantized_share["dense_mlp"] == 1.0
    moe = _fp8("qwen3-30b-a3b", dict(CT_FP8, ignore=["lm_head", "re:.*mlp.gate$"]))
    assert moe.quantized_share["router"] == 0.0 and moe.quantized_share["routed_experts"] == 1.0
    # MoE expert reads at batch 1 use the experts' own bytes per parameter.
    g = gpu("h100")
    r8, r16 = roofline(moe, g), roofline(model_card("qwen3-30b-a3b"), g)
    assert r8.weight_bytes_read_per_step < 0.6 * r16.weight_bytes_read_per_step


def test_quantization_lever() -> None:
    bf16 = model_card("llama-3.1-8b")
    online = effective_dtypes(bf16, {"quantization": "fp8"})
    assert online.weight_dtype == "fp8" and "online" in online.weight_source
    assert roofline(bf16, gpu("h100"), levers={"quantization": "fp8"}).weight_bytes_per_gpu == pytest.approx(
        _fp8("llama-3.1-8b").native_weight_bytes
    )
    assert effective_dtypes(bf16, {"quantization": "awq"}).weight_dtype == "int4"
    assert effective_dtypes(bf16, {"quantization": None}).weight_dtype == "bf16"
    # On a quantized checkpoint the checkpoint's dtype is what is read; the lever is named in the why.
    ck = effective_dtypes(_fp8("llama-3.1-8b"), {"quantization": "fp8"})
    assert ck.weight_dtype == "fp8" and ck.weight_source.endswith("(lever quantization=fp8)")
    assert effective_dtypes(
        _fp8("llama-3.1-8b", CT_FP8), {"quantization": "compressed-tensors"}
    ).weight_dtype == ("fp8")
    gptq8 = build_card(_cfg("llama-3.1-8b", quantization_config={"quant_method": "gptq", "bits": 8}), "g8")
    assert effective_dtypes(gptq8, {"quantization": "gptq"}).weight_dtype == "int8"
    awq = build_card(_cfg("llama-3.1-8b", quantization_config={"quant_method": "awq", "bits": 4}), "a4")
    assert effective_dtypes(awq).weight_dtype == "int4"
    with pytest.raises(ConfigError, match="unknown quantization lever value 'int3'") as e:
        effective_dtypes(bf16, {"quantization": "int3"})
    assert "fp8, awq, gptq, modelopt, compressed-tensors" in e.value.hint
    with pytest.raises(ConfigError, match="no quantization config"):
        effective_dtypes(bf16, {"quantization": "modelopt"})
    with pytest.raises(ConfigError, match="already quantized as awq"):
        effective_dtypes(awq, {"quantization": "fp8"})


def test_kv_cache_dtype_lever_halves_kv_reads_and_doubles_capacity() -> None:
    card, g = model_card("llama-3.1-8b"), gpu("h100")
    auto = roofline(card, g, batch=64, context=4096)
    fp8 = roofline(card, g, batch=64, context=4096, levers={"kv-cache-dtype": "fp8"})
    assert (fp8.kv_dtype, fp8.kv_source) == ("fp8", "lever kv-cache-dtype=fp8")
    assert fp8.kv_bytes_read_per_step == pytest.approx(auto.kv_bytes_read_per_step / 2)
    assert fp8.kv_capacity_tokens == pytest.approx(2 * auto.kv_capacity_tokens, abs=2)
    assert fp8.decode_step_floor_ms < auto.decode_step_floor_ms
    assert effective_dtypes(card, {"kv-cache-dtype": "auto"}).kv_dtype == "bf16"
    assert effective_dtypes(card, {"kv_cache_dtype": "fp8_e4m3"}).kv_dtype == "fp8"  # SGLang's spelling
    # llama.cpp: q8_0 is 34 bytes per 32 elements, q4_0 18.
    q8 = effective_dtypes(card, {"kv-cache-type": "q8_0"})
    assert q8.kv_dtype == "q8_0" and q8.kv_source.startswith("lever kv-cache-type=q8_0")
    assert card.kv_bytes_per_token["q8_0"] == pytest.approx(131072 / 2 * 34 / 32)
    assert card.kv_bytes_per_token["q4_0"] == pytest.approx(131072 / 2 * 18 / 32)
    assert effective_dtypes(card, {"kv-cache-type": "f16"}).kv_dtype == "fp16"
    assert set(KV_BYTES) >= {"bf16", "fp16", "fp8", "q8_0", "q4_0"}
    for levers, msg in (
        ({"kv-cache-dtype": "fp4"}, "unknown kv-cache-dtype lever value 'fp4'"),
        ({"kv-cache-type": "q3_k"}, "unknown kv-cache-type lever value 'q3_k'"),
        ({"kv-cache-dtype": "fp8", "kv-cache-type": "q8_0"}, "both kv-cache-dtype and kv-cache-type"),
    ):
        with pytest.raises(ConfigError, match=msg):
            effective_dtypes(card, levers)


def test_checkpoint_torch_dtype_is_recorded_and_used() -> None:
    assert model_card("llama-3.1-8b").torch_dtype == "bf16"
    fp16 = build_card(_cfg("llama-3.1-8b", torch_dtype="float16"), "h")
    d = effective_dtypes(fp16)
    assert (d.weight_dtype, d.kv_dtype) == (
        "fp16",
        "fp16",
    ) and d.kv_source == "auto: the model's dtype (fp16)"
    fp32 = build_card(_cfg("llama-3.1-8b", torch_dtype="float32"), "f")
    d32 = effective_dtypes(fp32)
    assert fp32.torch_dtype == "fp32" and d32.weight_dtype == "fp16" and "served as fp16" in d32.weight_source
    cfg = _cfg("llama-3.1-8b")
    del cfg["torch_dtype"]
    none = build_card(cfg, "n")
    assert none.torch_dtype == "bf16" and "config.json has no torch_dtype: bf16 assumed" in none.warnings


def test_tp_advisor_sizes_at_the_checkpoint_dtype() -> None:
    h100 = gpu("h100")
    # Qwen3-32B, 8 x 4096 tokens on an H100 80GB: bf16 (65.5 GB) leaves KV for ~9k tokens at TP 1,
    # so TP 2; its FP8 checkpoint (~33 GB) leaves ~128k tokens at TP 1.
    bf16, fp8 = model_card("qwen3-32b"), _fp8("qwen3-32b")
    a16 = advise_tp(bf16, h100, concurrency=8, context=4096)
    a8 = advise_tp(fp8, h100, concurrency=8, context=4096)
    assert (a16.dtype, a16.recommended_tp) == ("bf16", 2)
    assert (a8.dtype, a8.recommended_tp) == ("fp8", 1)
    assert a8.dtype_source == "checkpoint quantization_config: fp8 block [128, 128]"
    assert "fp8 weights (checkpoint quantization_config: fp8 block [128, 128]" in a8.rationale[0]
    assert advise_tp(fp8, h100, dtype="bf16", concurrency=8, context=4096).recommended_tp == 2  # what-if
    # Llama-3.1-70B: FP8 (72.7 GB) does not fit one H100 under the 4 GB reserve at 90%, but halves the TP
    # of bf16 (141 GB); on an H200 FP8 fits one GPU.
    b70, f70 = model_card("llama-3.1-70b"), _fp8("llama-3.1-70b")
    assert advise_tp(b70, h100, concurrency=8, context=4096).recommended_tp == 4
    assert advise_tp(f70, h100, concurrency=8, context=4096).recommended_tp == 2
    assert advise_tp(b70, gpu("h200"), concurrency=8, context=4096).recommended_tp == 2
    assert advise_tp(f70, gpu("h200"), concurrency=8, context=4096).recommended_tp == 1
    # The FP8 KV lever doubles what fits.
    kv8 = advise_tp(bf16, h100, levers={"kv-cache-dtype": "fp8"}, concurrency=8, context=4096)
    assert kv8.kv_dtype == "fp8" and kv8.options[1].kv_capacity_tokens == pytest.approx(
        2 * a16.options[1].kv_capacity_tokens, abs=2
    )
    with pytest.raises(ConfigError, match="unknown kv-cache-dtype"):
        advise_tp(bf16, h100, levers={"kv-cache-dtype": "int2"})


def test_api_defaults_to_the_checkpoint_dtype(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(_cfg("qwen3-32b", quantization_config=FP8_BLOCK)))
    a = api.advise_tp(str(tmp_path), "h100", concurrency=8, context=4096, emit=tmp_path / "out")
    assert a.dtype == "fp8" and a.recommended_tp == 1
    assert (
        "Weights at fp8: checkpoint quantization_config" in (tmp_path / "out" / "TP-RIGHTSIZE.md").read_text()
    )
    s = api.advise_sol(str(tmp_path), "h100", levers={"kv-cache-dtype": "fp8"}, measured_tpot_ms=10.0)
    assert (
        s["weight_dtype"] == "fp8" and s["kv_dtype"] == "fp8" and s["kv_source"] == "lever kv-cache-dtype=fp8"
    )
    bf = api.advise_sol("qwen3-32b", "h100", measured_tpot_ms=10.0)
    assert bf["weight_dtype"] == "bf16" and bf["sol_pct"] > 1.8 * s["sol_pct"]
