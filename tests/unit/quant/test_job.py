"""The job entry point: a bad or unrunnable job fails with exit 1 and a one-line result.json error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perftune.errors import ConfigError
from perftune.quant.backends import BACKENDS, QuantJob
from perftune.quant.job import main


def test_unavailable_backend_fails_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        type(BACKENDS["llm-compressor"]), "available", lambda self: "llm-compressor not installed"
    )
    out = tmp_path / "out"
    job = {"model_dir": str(tmp_path), "out_dir": str(out), "scheme": "fp8-dynamic", "family": "qwen3"}
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert main([str(tmp_path / "job.json")]) == 1
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and result["out_path"] is None
    assert result["error"] == "llm-compressor not installed"
    assert "failed: llm-compressor not installed" in (out / "quant.log").read_text()


def test_the_real_availability_message_names_the_pip_extra() -> None:
    why = BACKENDS["llm-compressor"].available()
    if why is None:
        pytest.skip("llm-compressor is installed here")
    assert why.startswith("llm-compressor not installed") and "pip install 'perftune[quant]'" in why


def test_invalid_job_reports_next_to_the_job_file(tmp_path: Path) -> None:
    job = {"model_dir": "m", "out_dir": str(tmp_path / "o"), "scheme": "int3", "family": "llama"}
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert main([str(tmp_path / "job.json")]) == 1
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "failed" and "int3" in result["error"]


def test_job_validation() -> None:
    with pytest.raises(ConfigError, match="calibrates"):
        QuantJob(model_dir=Path("m"), out_dir=Path("o"), scheme="w4a16", family="llama")
    with pytest.raises(ConfigError, match="no quantization family"):
        QuantJob(model_dir=Path("m"), out_dir=Path("o"), scheme="fp8-dynamic", family="bert")
    job = QuantJob(model_dir=Path("m.gguf"), out_dir=Path("o"), scheme="gguf-q8_0", family="llama")
    assert job.output_path == Path("o/model.gguf")
    assert QuantJob(
        model_dir=Path("m"), out_dir=Path("o"), scheme="w4a16", family="llama", calibration_texts=["hi"]
    ).output_path == Path("o/model")
