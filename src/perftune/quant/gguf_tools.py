"""GGUF helpers on llama.cpp's own libraries: dequantize to F16 (gguf-py), quantize (llama.cpp), load check.

llama.cpp's quantizer wants a full-precision GGUF; a published quantized GGUF (e.g. Q4_1) is first
dequantized to F16 here, then requantized with `llama_model_quantize`.

Footguns: gguf-py's reader reports shapes in GGML order (ne0 first) while `tensor.data` and the writer use
numpy order; `general.architecture` and the `GGUF.*` virtual fields are written by GGUFWriter itself and
must not be copied; llama.cpp refuses to requantize an already-quantized file unless told to.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from perftune.errors import GateError, ModelError
from perftune.quant.schemes import LLAMA_FTYPE_MOSTLY_F16
from perftune.util.atomic import atomic_path


def _f16_or_f32(data: Any, qtype: Any, shape: tuple[int, ...]) -> Any:
    """A tensor's values in its output type: 2-D+ weights as F16, 1-D (norms, biases) as F32."""
    import gguf
    import numpy as np

    values = gguf.quants.dequantize(data, qtype).reshape(shape)
    return values.astype(np.float16 if len(shape) >= 2 else np.float32, copy=False)


def dequantize_to_f16(src_gguf: Path, dst_gguf: Path) -> Path:
    """Write `dst_gguf`: every tensor of `src_gguf` dequantized (2-D F16, 1-D F32), all metadata copied.

    `general.file_type` becomes MOSTLY_F16. Tensors are streamed one at a time; the file appears
    atomically.
    """
    import gguf
    import numpy as np

    src, dst = Path(src_gguf), Path(dst_gguf)
    try:
        reader = gguf.GGUFReader(src)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read GGUF {src}: {e}") from None
    arch_field = reader.fields.get(gguf.Keys.General.ARCHITECTURE)
    if arch_field is None:
        raise ModelError(f"{src} declares no general.architecture")
    arch = str(arch_field.contents())

    # numpy shape = GGML shape reversed (ne0 is the innermost, contiguous dimension)
    plan = [(t, tuple(int(d) for d in reversed(t.shape))) for t in reader.tensors]
    with atomic_path(dst) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            if field.name == gguf.Keys.General.FILE_TYPE:
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
        writer.add_file_type(LLAMA_FTYPE_MOSTLY_F16)
        for t, shape in plan:
            n = 1
            for d in shape:
                n *= d
            itemsize = 2 if len(shape) >= 2 else 4
            writer.add_tensor_info(
                t.name, shape, np.dtype(np.float16 if itemsize == 2 else np.float32), n * itemsize
            )
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t, shape in plan:
            writer.write_tensor_data(_f16_or_f32(t.data, t.tensor_type, shape))
        writer.close()
    return dst


def quantize_gguf(src_f16: Path, dst: Path, ftype: int, nthread: int = 0) -> Path:
    """Quantize a full-precision GGUF with llama.cpp (`llama_model_quantize`) to `ftype` (a llama_ftype).

    A non-zero return is a GateError naming the file; the output appears atomically.
    """
    import llama_cpp

    src, out = Path(src_f16), Path(dst)
    if not src.is_file():
        raise ModelError(f"no GGUF at {src}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread  # <= 0: llama.cpp uses std::thread::hardware_concurrency()
    with atomic_path(out) as tmp:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise GateError(
                f"llama.cpp could not quantize {src} to ftype {ftype} (llama_model_quantize returned {rc})",
                hint="the source must be a full-precision (F32/F16/BF16) GGUF that llama.cpp supports",
            )
    return out


def load_check(path: Path, prompt: str = "The capital of France is", max_tokens: int = 8) -> str:
    """Load a GGUF with llama.cpp and generate a few tokens: the text it produced (DeployError-free check)."""
    import llama_cpp

    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False, seed=0)
    except ValueError as e:  # llama-cpp-python raises ValueError when the model fails to load
        raise GateError(f"llama.cpp could not load {path}: {e}") from None
    try:
        out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
    finally:
        llm.close()
    text = out["choices"][0]["text"]  # type: ignore[index]
    return str(text)
