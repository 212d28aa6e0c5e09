"""A Hugging Face folder to an F16 GGUF with llama.cpp's own converter, for the CPU engine.

llama.cpp ships `convert_hf_to_gguf.py` (with its `conversion/` package and the matching `gguf-py`) in
its source tree, not in llama-cpp-python's wheel. `scripts/llama-cpp-converter` extracts exactly those
from the llama-cpp-python sdist on PyPI (the version installed here) into the per-user cache;
`PERFTUNE_LLAMA_CPP` points at any other llama.cpp checkout instead. The converter imports torch and
transformers (`pip install 'perftune[quant]'`). It runs as a subprocess with its own gguf-py first on
the path, writes beside the output and renames into place, so a failed conversion leaves no GGUF.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from perftune.errors import ConfigError, ModelError
from perftune.util.atomic import atomic_path

ENV = "PERFTUNE_LLAMA_CPP"
SCRIPT = "convert_hf_to_gguf.py"
SETUP_HINT = (
    "run scripts/llama-cpp-converter (extracts llama.cpp's converter from the llama-cpp-python sdist), "
    f"or set {ENV} to a llama.cpp checkout; the converter needs torch: pip install 'perftune[quant]'"
)


def converter_dir() -> Path:
    """Where llama.cpp's converter is looked for: $PERFTUNE_LLAMA_CPP, else the per-user cache."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "perftune" / "llama.cpp"


def unavailable() -> str | None:
    """Why an HF folder cannot be converted here (None: it can)."""
    d = converter_dir()
    if not (d / SCRIPT).is_file() or not (d / "gguf-py" / "gguf").is_dir():
        return f"llama.cpp's {SCRIPT} (with gguf-py) is not at {d}"
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        return f"llama.cpp's converter needs {' and '.join(missing)}, not installed"
    return None


def hf_to_gguf(folder: Path, out: Path, *, outtype: str = "f16", timeout_s: float = 3600) -> Path:
    """Convert the Hugging Face folder `folder` to `out` (a GGUF of `outtype`); its log is `out`.log.
    ConfigError when the converter is not set up, ModelError (with the log) when it fails."""
    why = unavailable()
    if why is not None:
        raise ConfigError(f"cannot convert {folder.name} to GGUF for llama.cpp: {why}", hint=SETUP_HINT)
    d = converter_dir()
    log = out.with_name(out.name + ".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(d / "gguf-py"), str(d)]))}
    with atomic_path(out) as tmp, log.open("w") as lf:
        cmd = [sys.executable, str(d / SCRIPT), str(folder), "--outtype", outtype, "--outfile", str(tmp)]
        lf.write("$ " + " ".join(cmd) + "\n")
        lf.flush()
        try:
            rc = subprocess.run(
                cmd, stdout=lf, stderr=subprocess.STDOUT, env=env, timeout=timeout_s
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        if rc != 0 or tmp.stat().st_size == 0:
            raise ModelError(
                f"llama.cpp's converter failed on {folder} (exit {rc})",
                hint="read its log; the model's architecture must be one llama.cpp converts",
                log_path=str(log),
            )
    return out
