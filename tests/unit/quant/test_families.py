"""Quantization families: the data file loads, lookups fail helpfully, MoE routers are excluded."""

from __future__ import annotations

from pathlib import Path

import pytest

from perftune.errors import ConfigError
from perftune.quant.families import FAMILIES_YAML, family_for, load_families
from perftune.quant.schemes import SCHEMES, scheme_for

REQUIRED = ["llama", "qwen2", "qwen3", "qwen3_moe", "mixtral", "deepseek_v3", "gemma", "gemma2", "gemma3"]


@pytest.mark.parametrize("model_type", REQUIRED)
def test_every_family_loads(model_type: str) -> None:
    fam = family_for(model_type)
    assert fam.model_type == model_type
    assert fam.default_scheme in SCHEMES
    assert fam.excludes("lm_head.weight")
    assert fam.excludes("model.embed_tokens.weight")
    assert not fam.excludes("model.layers.0.self_attn.q_proj.weight")
    assert not fam.excludes("model.layers.0.mlp.gate_proj.weight")


def test_unknown_model_type_points_at_the_yaml() -> None:
    with pytest.raises(ConfigError) as e:
        family_for("no_such_arch")
    assert e.value.message == "no quantization family for model_type 'no_such_arch'"
    assert str(FAMILIES_YAML) in e.value.hint


def test_qwen3_moe_excludes_the_router_not_the_experts() -> None:
    fam = family_for("qwen3_moe")
    assert fam.moe
    assert fam.excludes("model.layers.0.mlp.gate.weight")
    assert not fam.excludes("model.layers.0.mlp.experts.0.gate_proj.weight")
    assert fam.is_expert("model.layers.0.mlp.experts.0.gate_proj.weight")


def test_mixtral_and_gemma3_exclusions() -> None:
    assert family_for("mixtral").excludes("model.layers.3.block_sparse_moe.gate.weight")
    assert not family_for("mixtral").excludes("model.layers.3.block_sparse_moe.experts.0.w1.weight")
    g3 = family_for("gemma3")
    assert g3.excludes("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight")
    assert g3.excludes("multi_modal_projector.mm_input_projection_weight")
    assert not g3.excludes("language_model.model.layers.0.self_attn.q_proj.weight")
    assert "MLA" in family_for("deepseek_v3").notes


def test_ignore_patterns_match_like_compressed_tensors() -> None:
    import re

    pats = [p.removeprefix("re:") for p in family_for("qwen3_moe").ignore_patterns()]
    # compressed-tensors applies `re:` targets with re.match over module names
    assert any(re.match(p, "model.layers.7.mlp.gate") for p in pats)
    assert any(re.match(p, "lm_head") for p in pats)
    assert not any(re.match(p, "model.layers.7.mlp.experts.3.gate_proj") for p in pats)


def test_a_malformed_family_file_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "families.yaml"
    bad.write_text(
        "families:\n  llama:\n    backends: [llm-compressor]\n    default_scheme: fp9\n    moe: false\n"
    )
    with pytest.raises(ConfigError) as e:
        load_families(bad)
    assert "families.llama" in e.value.message and "fp9" in e.value.message
    bad.write_text("families:\n  x:\n    backends: [a]\n    default_scheme: fp8-dynamic\n    moe: false\n")
    with pytest.raises(ConfigError, match=r"families\.x\.backends"):
        load_families(bad)


def test_unknown_scheme_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as e:
        scheme_for("int3")
    assert "fp8-dynamic" in e.value.hint and "gguf-q4_k_m" in e.value.hint


def test_scheme_table_says_what_the_output_declares() -> None:
    assert scheme_for("fp8-dynamic").quant_method == "compressed-tensors"
    assert not scheme_for("fp8-dynamic").needs_calibration
    assert scheme_for("w4a16").needs_calibration and scheme_for("w8a8-fp8").needs_calibration
    assert scheme_for("nvfp4").quant_method == "modelopt" == scheme_for("modelopt-fp8").quant_method
    assert scheme_for("gguf-q8_0").gguf_file_type == 7
    assert scheme_for("gguf-q4_k_m").gguf_file_type == 15
