"""The coverage guard reads the output checkpoint's tensors (headers only) and names what was skipped."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from perftune.errors import ModelError
from perftune.quant.coverage import check_checkpoint, checkpoint_tensors, coverage_of
from perftune.quant.families import family_for
from perftune.quant.schemes import scheme_for

_SIZE = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "U8": 1, "I32": 4, "I64": 8}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> Path:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = _SIZE[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path


def write_config(folder: Path, model_type: str, quant_method: str | None) -> None:
    config: dict[str, object] = {"model_type": model_type}
    if quant_method is not None:
        config["quantization_config"] = {"quant_method": quant_method, "format": "float-quantized"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))


H, FF, E = 8, 16, 4  # hidden, intermediate, experts


def _dense_fp8(layers: int = 2) -> dict[str, tuple[str, tuple[int, ...]]]:
    t: dict[str, tuple[str, tuple[int, ...]]] = {
        "model.embed_tokens.weight": ("BF16", (32, H)),
        "model.norm.weight": ("BF16", (H,)),
        "lm_head.weight": ("BF16", (32, H)),
    }
    for i in range(layers):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = ("BF16", (H,))
        for m, shape in [
            ("self_attn.q_proj", (H, H)),
            ("self_attn.k_proj", (H // 2, H)),
            ("self_attn.v_proj", (H // 2, H)),
            ("self_attn.o_proj", (H, H)),
            ("mlp.gate_proj", (FF, H)),
            ("mlp.up_proj", (FF, H)),
            ("mlp.down_proj", (H, FF)),
        ]:
            t[f"{p}.{m}.weight"] = ("F8_E4M3", shape)
            t[f"{p}.{m}.weight_scale"] = ("F32", (shape[0], 1))
    return t


def test_dense_fp8_checkpoint_is_green(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model.safetensors", _dense_fp8())
    write_config(tmp_path, "llama", "compressed-tensors")
    r = check_checkpoint(tmp_path, scheme_for("fp8-dynamic"), family_for("llama"))
    assert r.ok, r.reasons
    assert r.coverage is not None
    assert (r.coverage.in_scope, r.coverage.quantized, r.coverage.skipped) == (14, 14, [])
    assert r.coverage.excluded == 2  # embed_tokens + lm_head, norms are 1-D and not counted


def test_one_bf16_linear_is_red_and_named(tmp_path: Path) -> None:
    t = _dense_fp8()
    t["model.layers.1.self_attn.o_proj.weight"] = ("BF16", (H, H))
    del t["model.layers.1.self_attn.o_proj.weight_scale"]
    write_safetensors(tmp_path / "model.safetensors", t)
    write_config(tmp_path, "llama", "compressed-tensors")
    r = check_checkpoint(tmp_path, scheme_for("fp8-dynamic"), family_for("llama"))
    assert not r.ok
    assert r.reasons == ["1 of 14 linear modules left unquantized: model.layers.1.self_attn.o_proj"]


def _moe(layers: int, bf16_layers: set[int]) -> dict[str, tuple[str, tuple[int, ...]]]:
    t: dict[str, tuple[str, tuple[int, ...]]] = {
        "model.embed_tokens.weight": ("BF16", (32, H)),
        "lm_head.weight": ("BF16", (32, H)),
    }
    for i in range(layers):
        p = f"model.layers.{i}"
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[f"{p}.self_attn.{m}.weight"] = ("F8_E4M3", (H, H))
            t[f"{p}.self_attn.{m}.weight_scale"] = ("F32", (H, 1))
        t[f"{p}.mlp.gate.weight"] = ("BF16", (E, H))  # the router: excluded
        for m, shape in [("gate_up_proj", (E, 2 * FF, H)), ("down_proj", (E, H, FF))]:
            if i in bf16_layers:
                t[f"{p}.mlp.experts.{m}"] = ("BF16", shape)
            else:
                t[f"{p}.mlp.experts.{m}"] = ("F8_E4M3", shape)
                t[f"{p}.mlp.experts.{m}_scale"] = ("F32", (E, shape[1], 1))
    return t


def test_fused_expert_block_left_bf16_is_red_naming_the_layer(tmp_path: Path) -> None:
    # two shards + an index, as save_pretrained writes them
    t = _moe(layers=3, bf16_layers={1})
    names = list(t)
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {n: t[n] for n in names[:10]})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {n: t[n] for n in names[10:]})
    index = {
        n: ("model-00001-of-00002.safetensors" if k < 10 else "model-00002-of-00002.safetensors")
        for k, n in enumerate(names)
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    write_config(tmp_path, "qwen3_moe", "compressed-tensors")
    r = check_checkpoint(tmp_path, scheme_for("fp8-dynamic"), family_for("qwen3_moe"))
    assert not r.ok
    cov = r.coverage
    assert cov is not None
    assert cov.fused_expert_blocks == 6
    assert cov.skipped == ["model.layers.1.mlp.experts.down_proj", "model.layers.1.mlp.experts.gate_up_proj"]
    assert r.reasons == [
        "2 of 6 fused MoE expert blocks left unquantized: "
        "model.layers.1.mlp.experts.down_proj, model.layers.1.mlp.experts.gate_up_proj"
    ]
    # lm_head, embed_tokens and the three routers are excluded, not skipped
    assert cov.excluded == 5
    assert not any("mlp.gate" in s and "gate_up" not in s for s in cov.skipped)


def test_all_experts_quantized_is_green_and_routers_stay_excluded(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model.safetensors", _moe(layers=2, bf16_layers=set()))
    write_config(tmp_path, "qwen3_moe", "compressed-tensors")
    r = check_checkpoint(tmp_path, scheme_for("fp8-dynamic"), family_for("qwen3_moe"))
    assert r.ok, r.reasons
    assert r.coverage is not None and r.coverage.in_scope == 2 * (4 + 2)


def test_many_skipped_blocks_show_five_and_a_count(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model.safetensors", _moe(layers=4, bf16_layers={0, 1, 2, 3}))
    write_config(tmp_path, "qwen3_moe", "compressed-tensors")
    r = check_checkpoint(tmp_path, scheme_for("fp8-dynamic"), family_for("qwen3_moe"))
    assert r.reasons[0].startswith("8 of 8 fused MoE expert blocks left unquantized: model.layers.0.")
    assert r.reasons[0].endswith("(+3 more)")


def test_config_without_quantization_config_is_red_in_one_line(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model.safetensors", _dense_fp8())
    write_config(tmp_path, "llama", None)
    r = check_checkpoint(tmp_path, scheme_for("fp8-dynamic"), family_for("llama"))
    assert not r.ok
    assert r.reasons == ["config.json declares no quantization method (quantization_config.quant_method)"]


def test_wrong_quant_method_is_red(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model.safetensors", _dense_fp8())
    write_config(tmp_path, "llama", "compressed-tensors")
    r = check_checkpoint(tmp_path, scheme_for("nvfp4"), family_for("llama"))
    assert r.reasons == [
        "config.json declares quant_method 'compressed-tensors', scheme 'nvfp4' expects 'modelopt'"
    ]


def test_packed_int4_and_gptq_forms_count_as_quantized() -> None:
    fam = family_for("llama")
    from perftune.quant.coverage import TensorInfo as T

    cov = coverage_of(
        {
            "a.q_proj.weight_packed": T(dtype="I32", shape=(8, 1)),
            "a.q_proj.weight_scale": T(dtype="BF16", shape=(8, 1)),
            "a.q_proj.weight_shape": T(dtype="I64", shape=(2,)),
            "a.k_proj.qweight": T(dtype="I32", shape=(1, 8)),
            "a.k_proj.scales": T(dtype="F16", shape=(1, 8)),
            "a.v_proj.weight": T(dtype="U8", shape=(8, 4)),  # ModelOpt NVFP4: two FP4 values per byte
            "a.v_proj.weight_scale": T(dtype="F8_E4M3", shape=(8, 1)),
            "a.o_proj.weight": T(dtype="BF16", shape=(8, 8)),
        },
        fam,
    )
    assert cov.in_scope == 4 and cov.quantized == 3 and cov.skipped == ["a.o_proj"] and not cov.ok


def test_headers_only_and_broken_files_are_model_errors(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(ModelError, match="not a safetensors file"):
        checkpoint_tensors(tmp_path)
    write_config(tmp_path, "llama", "compressed-tensors")
    r = check_checkpoint(tmp_path, scheme_for("fp8-dynamic"), family_for("llama"))
    assert not r.ok and r.coverage is None and "not a safetensors file" in r.reasons[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"no \*\.safetensors"):
        checkpoint_tensors(empty)
