"""HF folder -> GGUF through llama.cpp's converter: found where perftune says, run as a subprocess with
its own gguf-py, and a failure leaves no GGUF and points at its log. A fake converter stands in for
llama.cpp's (the real one needs torch; tests/e2e runs it where torch is installed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from perftune.errors import ConfigError, ModelError
from perftune.quant import convert

FAKE = """
import argparse, os, sys
a = argparse.ArgumentParser()
for arg in ("folder", "--outtype", "--outfile"):
    a.add_argument(arg)
ns = a.parse_args()
import gguf  # from the converter's own gguf-py, first on the path
print("converting", ns.folder, ns.outtype, gguf.MARK)
if os.path.exists(os.path.join(ns.folder, "BROKEN")):
    sys.exit("unsupported architecture")
open(ns.outfile, "wb").write(b"GGUF" + b"\\0" * 60)
"""


def _converter(root: Path) -> Path:
    d = root / "llama.cpp"
    (d / "gguf-py" / "gguf").mkdir(parents=True)
    (d / "gguf-py" / "gguf" / "__init__.py").write_text("MARK = 'vendored'\n")
    (d / convert.SCRIPT).write_text(FAKE)
    return d


@pytest.fixture
def has_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        convert.importlib.util,
        "find_spec",
        lambda name, *a: (
            importlib.util.find_spec("json") if name in ("torch", "transformers") else real(name, *a)
        ),
    )


def test_no_converter_is_a_one_line_config_error_with_the_setup_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(convert.ENV, str(tmp_path / "nowhere"))
    assert convert.converter_dir() == tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="is not at") as e:
        convert.hf_to_gguf(tmp_path, tmp_path / "out.gguf")
    assert "scripts/llama-cpp-converter" in e.value.hint and not (tmp_path / "out.gguf").exists()


def test_the_default_place_is_the_per_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(convert.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert convert.converter_dir() == tmp_path / "perftune" / "llama.cpp"


@pytest.mark.usefixtures("has_torch")
def test_a_conversion_runs_the_converter_with_its_own_gguf_py(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(convert.ENV, str(_converter(tmp_path)))
    model = tmp_path / "model"
    model.mkdir()
    out = convert.hf_to_gguf(model, tmp_path / "run" / "model-f16.gguf")
    assert out.read_bytes().startswith(b"GGUF")
    log = (tmp_path / "run" / "model-f16.gguf.log").read_text()
    assert f"converting {model} f16 vendored" in log and sys.executable in log


@pytest.mark.usefixtures("has_torch")
def test_a_failed_conversion_leaves_no_gguf_and_names_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(convert.ENV, str(_converter(tmp_path)))
    model = tmp_path / "model"
    model.mkdir()
    (model / "BROKEN").touch()
    with pytest.raises(ModelError, match="converter failed") as e:
        convert.hf_to_gguf(model, tmp_path / "run" / "m.gguf")
    assert e.value.log_path and "unsupported architecture" in Path(e.value.log_path).read_text()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["m.gguf.log"]  # no GGUF, no temp file
