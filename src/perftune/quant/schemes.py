"""The quantization schemes perftune knows: which library makes each, and what its output must declare.

`quant_method` is what the output config.json's `quantization_config.quant_method` must say:
llm-compressor saves compressed-tensors checkpoints ("compressed-tensors"); ModelOpt's unified HF export
(`export_hf_checkpoint` -> `convert_hf_quant_config_format`) writes "modelopt". GGUF schemes are checked
by `general.file_type` instead (llama.cpp's `llama_ftype`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from perftune.errors import ConfigError

BackendName = Literal["llm-compressor", "modelopt", "llama.cpp"]


class Scheme(BaseModel):
    """One quantization scheme: the backend that makes it and what its output checkpoint must declare."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="perftune's scheme id, e.g. 'fp8-dynamic'")
    backend: BackendName = Field(description="the library that quantizes")
    library_scheme: str = Field(
        description="the backend's name for it: compressed-tensors preset, ModelOpt config, llama.cpp ftype"
    )
    output_format: Literal["safetensors", "gguf"] = Field(description="what the backend writes")
    quant_method: str | None = Field(
        default=None, description="expected config.json quantization_config.quant_method (safetensors)"
    )
    gguf_file_type: int | None = Field(
        default=None, description="expected GGUF general.file_type (llama_ftype)"
    )
    needs_calibration: bool = Field(description="whether calibration texts are needed")
    engines: tuple[str, ...] = Field(description="engines that serve the output")
    engine_note: str = Field(description="how the engine reads the output")


# llama.cpp's llama_ftype values (llama.h): MOSTLY_F16 = 1, MOSTLY_Q8_0 = 7, MOSTLY_Q4_K_M = 15.
LLAMA_FTYPE_MOSTLY_F16 = 1
LLAMA_FTYPE_MOSTLY_Q8_0 = 7
LLAMA_FTYPE_MOSTLY_Q4_K_M = 15

_CT = "vLLM and SGLang read compressed-tensors checkpoints natively (no --quantization flag needed)"
_MO = "vLLM reads ModelOpt exports as quantization 'modelopt' (FP8) / 'modelopt_fp4' (NVFP4); TRT-LLM too"
_GG = "llama.cpp reads GGUF; vLLM's GGUF support is experimental"

SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme(
            name="fp8-dynamic",
            backend="llm-compressor",
            library_scheme="FP8_DYNAMIC",  # per-channel FP8 weights, per-token dynamic activations
            output_format="safetensors",
            quant_method="compressed-tensors",
            needs_calibration=False,
            engines=("vllm", "sglang"),
            engine_note=_CT,
        ),
        Scheme(
            name="w8a8-fp8",
            backend="llm-compressor",
            library_scheme="FP8",  # per-tensor static weights and activations: calibrated input scales
            output_format="safetensors",
            quant_method="compressed-tensors",
            needs_calibration=True,
            engines=("vllm", "sglang"),
            engine_note=_CT,
        ),
        Scheme(
            name="w4a16",
            backend="llm-compressor",
            library_scheme="W4A16",  # GPTQ, int4 group-128 weights packed into int32 `weight_packed`
            output_format="safetensors",
            quant_method="compressed-tensors",
            needs_calibration=True,
            engines=("vllm", "sglang"),
            engine_note=_CT + "; Marlin kernels on Ampere+",
        ),
        Scheme(
            name="nvfp4",
            backend="modelopt",
            library_scheme="NVFP4_DEFAULT_CFG",
            output_format="safetensors",
            quant_method="modelopt",
            needs_calibration=True,
            engines=("vllm", "sglang", "trtllm"),
            engine_note=_MO + "; FP4 tensor cores need Blackwell",
        ),
        Scheme(
            name="modelopt-fp8",
            backend="modelopt",
            library_scheme="FP8_DEFAULT_CFG",
            output_format="safetensors",
            quant_method="modelopt",
            needs_calibration=True,
            engines=("vllm", "sglang", "trtllm"),
            engine_note=_MO,
        ),
        Scheme(
            name="gguf-q8_0",
            backend="llama.cpp",
            library_scheme="LLAMA_FTYPE_MOSTLY_Q8_0",
            output_format="gguf",
            gguf_file_type=LLAMA_FTYPE_MOSTLY_Q8_0,
            needs_calibration=False,
            engines=("llama.cpp",),
            engine_note=_GG,
        ),
        Scheme(
            name="gguf-q4_k_m",
            backend="llama.cpp",
            library_scheme="LLAMA_FTYPE_MOSTLY_Q4_K_M",  # keeps some tensors (attn_v, ffn_down) at Q6_K
            output_format="gguf",
            gguf_file_type=LLAMA_FTYPE_MOSTLY_Q4_K_M,
            needs_calibration=False,
            engines=("llama.cpp",),
            engine_note=_GG,
        ),
    )
}


# Short names users type: `--quant-target fp8` is llm-compressor's FP8 dynamic (no calibration).
ALIASES = {"fp8": "fp8-dynamic", "q8_0": "gguf-q8_0", "q4_k_m": "gguf-q4_k_m"}


def scheme_for(name: str) -> Scheme:
    """The scheme called `name` (or an alias); an unknown name is a ConfigError listing the valid ones."""
    try:
        return SCHEMES[ALIASES.get(name, name)]
    except KeyError:
        raise ConfigError(
            f"unknown quantization scheme '{name}'", hint=f"valid schemes: {', '.join(SCHEMES)}"
        ) from None
