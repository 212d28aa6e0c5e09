"""Parameters and KV bytes computed from shapes, against published figures."""

import json
from pathlib import Path

import pytest

from perftune.errors import ModelError
from perftune.models.card import build_card
from perftune.models.resolve import catalog_config, catalog_index, model_card

PUBLISHED_TOTAL = {
    "llama-3.1-8b": 8.03,
    "llama-3.1-70b": 70.6,
    "mixtral-8x7b": 46.7,
    "qwen3-30b-a3b": 30.5,
    "deepseek-v3": 671.0,
    "gpt-oss-120b": 117.0,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTAL))
def test_total_params_within_one_percent(name: str) -> None:
    card = model_card(name)
    assert card.total_params / 1e9 == pytest.approx(PUBLISHED_TOTAL[name], rel=0.01)


def test_whole_catalog_totals_within_one_percent_of_index() -> None:
    idx = catalog_index()
    assert len(idx) >= 12
    for name, meta in idx.items():
        if name == "qwen3-next-80b-a3b":  # hybrid GDN: parameters computed at layer granularity, 0.5% off
            assert model_card(name).total_params / 1e9 == pytest.approx(meta["published_total_b"], rel=0.01)
            continue
        assert model_card(name).total_params / 1e9 == pytest.approx(meta["published_total_b"], rel=0.01), name


def test_active_params_under_each_vendors_convention() -> None:
    # OpenAI counts weights read per token (no input embedding); Mistral/Qwen/DeepSeek count it too.
    assert model_card("gpt-oss-120b").active_params / 1e9 == pytest.approx(5.1, rel=0.01)
    assert model_card("mixtral-8x7b").active_params_with_embedding / 1e9 == pytest.approx(12.9, rel=0.01)
    assert model_card("qwen3-30b-a3b").active_params_with_embedding / 1e9 == pytest.approx(3.3, rel=0.02)
    assert model_card("deepseek-v3").active_params / 1e9 == pytest.approx(37.0, rel=0.015)


def test_kv_bytes_per_token_exact() -> None:
    assert model_card("llama-3.1-8b").kv_bytes_per_token["bf16"] == 131072
    assert model_card("llama-3.1-8b").kv_bytes_per_token["fp8"] == 65536
    ds = model_card("deepseek-v3")
    assert ds.attention == "MLA" and ds.kv_bytes_per_token["bf16"] == (512 + 64) * 61 * 2 == 70272
    assert model_card("qwen3-next-80b-a3b").attention_layers == 12  # hybrid: KV only in full-attention layers


def test_shapes_and_detected_quantization() -> None:
    ds = model_card("deepseek-v3")
    assert ds.moe is not None and (
        ds.moe.experts,
        ds.moe.top_k,
        ds.moe.shared_experts,
        ds.moe.dense_layers,
    ) == (256, 8, 1, 3)
    assert ds.quantization is not None and ds.quantization.block_size == [128, 128]
    assert any("block-size 64" in r for r in ds.engine_requirements)
    oss = model_card("gpt-oss-120b")
    assert oss.quantization is not None and oss.quantization.weight_dtype == "mxfp4"
    assert 60e9 < oss.native_weight_bytes < 70e9  # MXFP4 experts: the ~65 GB checkpoint
    assert model_card("llama-3.1-8b").attention == "GQA" and model_card("gemma-3-27b").sliding_layers == 52
    assert model_card("llama-3.1-8b").weight_bytes["bf16"] == pytest.approx(16.06e9, rel=0.001)


def test_modelopt_and_compressed_tensors_detection(tmp_path: Path) -> None:
    cfg = catalog_config("llama-3.1-8b")
    assert cfg is not None
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "NVFP4"}}))
    c = model_card(str(tmp_path))
    assert (
        c.quantization is not None
        and c.quantization.method == "modelopt"
        and c.quantization.weight_dtype == "nvfp4"
    )
    ct = dict(
        cfg,
        quantization_config={
            "quant_method": "compressed-tensors",
            "config_groups": {"g0": {"weights": {"num_bits": 8, "type": "float"}}},
        },
    )
    assert build_card(ct, "x").quantization.weight_dtype == "fp8"  # type: ignore[union-attr]


def test_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match=r"malformed JSON .* line 1"):
        model_card(str(bad))
    with pytest.raises(ModelError, match=r"lacks 'num_hidden_layers'"):
        build_card({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2, "vocab_size": 10}, "m")
    with pytest.raises(ModelError, match=r"unknown model_type 'weird'.*missing"):
        build_card({"model_type": "weird", "hidden_size": 8}, "m")
    generic = dict(catalog_config("llama-3.1-8b") or {}, model_type="brand_new_llama")
    with pytest.warns(UserWarning, match="generic decoder formula"):
        card = build_card(generic, "m")
    assert card.family == "generic" and card.total_params == model_card("llama-3.1-8b").total_params
    with pytest.raises(ModelError, match=r"no config\.json"):
        model_card(str(tmp_path / ".."))
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        model_card("nope")


def test_nemotron_h_hybrid_counts_blocks_by_pattern() -> None:
    # Shapes of the public Nemotron-H-8B config (24 Mamba-2, 4+1 attention, 23 MLP blocks; published ~8B).
    pat = ("M-M-M-M*-" * 5 + "M-M-M-M-")[:52]
    cfg = {
        "model_type": "nemotron_h",
        "hidden_size": 4096,
        "num_hidden_layers": 52,
        "hybrid_override_pattern": pat,
        "mamba_num_heads": 128,
        "mamba_head_dim": 64,
        "ssm_state_size": 128,
        "n_groups": 8,
        "conv_kernel": 4,
        "intermediate_size": 21504,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 131072,
        "tie_word_embeddings": False,
        "max_position_embeddings": 8192,
    }
    c = build_card(cfg, "nemotron-h-8b")
    assert c.attention == "hybrid" and c.attention_layers == pat.count("*") == 5
    assert c.kv_bytes_per_token["bf16"] == 2 * 8 * 128 * 5 * 2
    assert c.total_params / 1e9 == pytest.approx(8.0, rel=0.01)
    assert c.linear_state_bytes_per_seq > 0
    with pytest.raises(ModelError, match="53 blocks, num_hidden_layers is 52"):
        build_card({**cfg, "hybrid_override_pattern": pat + "M"}, "x")


def test_hub_id_offline_and_uncached_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelError, match=r"cannot get config\.json for hub id 'perftune-test/not-cached'"):
        model_card("perftune-test/not-cached")


def test_catalog_deepseek_configs_carry_the_router_fields_engines_need() -> None:
    # vLLM 0.26.0 refused `model synth deepseek-v2-lite` ("num_expert_group and topk_group must be
    # provided when use_grouped_topk is True") while the catalog copy lacked the published fields.
    import json
    from importlib import resources

    for name in ("deepseek-v2-lite", "deepseek-v3"):
        cfg = json.loads(resources.files("perftune.models").joinpath(f"catalog/{name}.json").read_text())
        assert cfg.get("n_group") and cfg.get("topk_group") and cfg.get("topk_method"), name
