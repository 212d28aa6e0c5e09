"""Quantization backends, each a real library: llm-compressor, NVIDIA ModelOpt, llama.cpp.

One interface: `available()` says why a backend cannot run here (None when it can), `run()` quantizes a
QuantJob and returns the output path. Heavy imports (torch, transformers, the libraries) live inside the
methods, so this module imports anywhere.

Footguns: llm-compressor's `ignore` matches `re:` entries with re.match against module names (hence the
`.*` prefix `Family.ignore_patterns` adds); ModelOpt's default configs already disable lm_head and MoE
routers by wildcard, the family's own regexes are applied after calibration with `mtq.disable_quantizer`;
both write a partial folder on failure, so output goes to `<out>.partial` and is renamed when complete.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from perftune.errors import ConfigError, ModelError
from perftune.quant.families import Family, family_for
from perftune.quant.schemes import LLAMA_FTYPE_MOSTLY_F16, Scheme, scheme_for

Log = Callable[[str], None]

_PIP_HINT = "pip install 'perftune[quant]'"


class QuantJob(BaseModel):
    """One quantization job: what to quantize, how, and where the output goes."""

    model_config = ConfigDict(extra="forbid")

    model_dir: Path = Field(description="Hugging Face model folder, or a GGUF file for llama.cpp schemes")
    out_dir: Path = Field(description="job folder: quant.log, result.json and the quantized model")
    scheme: str = Field(description="perftune scheme id, e.g. 'fp8-dynamic'")
    family: str = Field(description="config.json model_type naming the quantization family")
    calibration_texts: list[str] = Field(
        default_factory=list, description="chat-formatted calibration texts (schemes that calibrate)"
    )
    num_calibration_samples: int = Field(default=512, ge=1, description="calibration samples used at most")
    max_seq_length: int = Field(default=2048, ge=16, description="calibration sequence length cap, tokens")
    seed: int = Field(default=0, description="seed for torch / python RNGs")
    nthread: int = Field(default=0, ge=0, description="llama.cpp quantizer threads (0: all cores)")

    @model_validator(mode="after")
    def _known(self) -> QuantJob:
        scheme = scheme_for(self.scheme)  # ConfigError with the valid names
        family = family_for(self.family)
        if scheme.backend not in family.backends:
            raise ConfigError(
                f"scheme '{scheme.name}' ({scheme.backend}) is not allowed for family '{self.family}'",
                hint=f"allowed backends: {', '.join(family.backends)}",
            )
        if scheme.needs_calibration and not self.calibration_texts:
            raise ConfigError(
                f"scheme '{scheme.name}' calibrates and the job has no calibration texts",
                hint="pass calibration_texts (a few hundred chat-formatted samples)",
            )
        return self

    @property
    def scheme_spec(self) -> Scheme:
        return scheme_for(self.scheme)

    @property
    def family_spec(self) -> Family:
        return family_for(self.family)

    @property
    def output_path(self) -> Path:
        """Where the quantized model lands: `out_dir/model` (folder) or `out_dir/model.gguf`."""
        return self.out_dir / ("model.gguf" if self.scheme_spec.output_format == "gguf" else "model")

    def calibration(self) -> list[str]:
        return self.calibration_texts[: self.num_calibration_samples]


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _finish_folder(partial: Path, final: Path) -> Path:
    """Move a completed output folder into place (replacing an older one)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


def _fresh(partial: Path) -> Path:
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def _seed(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


class Backend(ABC):
    """A quantization library behind one interface."""

    name: ClassVar[str]

    @abstractmethod
    def available(self) -> str | None:
        """None when the backend can run here, else why not (with the install hint)."""

    @abstractmethod
    def run(self, job: QuantJob, log: Log) -> Path:
        """Quantize `job`; return the output path (a model folder or a GGUF file)."""


class LlmCompressorBackend(Backend):
    """vLLM's llm-compressor: `oneshot` with QuantizationModifier (FP8) or GPTQModifier (W4A16)."""

    name: ClassVar[str] = "llm-compressor"

    def available(self) -> str | None:
        missing = _missing("llmcompressor", "torch", "transformers")
        return (
            f"llm-compressor not installed ({', '.join(missing)} missing): {_PIP_HINT}" if missing else None
        )

    def run(self, job: QuantJob, log: Log) -> Path:
        from llmcompressor import oneshot  # type: ignore[import-not-found]
        from llmcompressor.modifiers.quantization import (  # type: ignore[import-not-found]
            GPTQModifier,
            QuantizationModifier,
        )
        from transformers import AutoModelForCausalLM, AutoTokenizer

        scheme, family = job.scheme_spec, job.family_spec
        _seed(job.seed)
        ignore = family.ignore_patterns()
        log(f"llm-compressor {scheme.library_scheme} on {job.model_dir}; ignore={ignore}")
        model = AutoModelForCausalLM.from_pretrained(job.model_dir, torch_dtype="auto")
        tokenizer = AutoTokenizer.from_pretrained(job.model_dir)
        modifier = GPTQModifier if scheme.library_scheme == "W4A16" else QuantizationModifier
        recipe = modifier(targets="Linear", scheme=scheme.library_scheme, ignore=ignore)
        kwargs: dict[str, Any] = {}
        if scheme.needs_calibration:
            from datasets import Dataset

            texts = job.calibration()
            ds = Dataset.from_dict({"text": texts}).map(
                lambda s: tokenizer(
                    s["text"], max_length=job.max_seq_length, truncation=True, add_special_tokens=False
                ),
                remove_columns=["text"],
            )
            kwargs = {
                "dataset": ds,
                "num_calibration_samples": len(texts),
                "max_seq_length": job.max_seq_length,
            }
            log(f"calibrating on {len(texts)} texts (max {job.max_seq_length} tokens)")
        oneshot(model=model, recipe=recipe, **kwargs)
        partial = _fresh(job.output_path.with_name(job.output_path.name + ".partial"))
        # save_compressed=True writes the compressed-tensors format vLLM reads (quant_method in config.json)
        model.save_pretrained(partial, save_compressed=True)
        tokenizer.save_pretrained(partial)
        return _finish_folder(partial, job.output_path)


class ModelOptBackend(Backend):
    """NVIDIA ModelOpt: `mtq.quantize` with FP8/NVFP4 default configs, `export_hf_checkpoint`."""

    name: ClassVar[str] = "modelopt"

    def available(self) -> str | None:
        missing = _missing("modelopt", "torch", "transformers")
        if missing:
            return f"nvidia-modelopt not installed ({', '.join(missing)} missing): {_PIP_HINT}"
        import torch

        return None if torch.cuda.is_available() else "ModelOpt calibration needs a CUDA GPU; none is visible"

    def run(self, job: QuantJob, log: Log) -> Path:
        import copy
        import re

        import modelopt.torch.quantization as mtq  # type: ignore[import-not-found]
        import torch
        from modelopt.torch.export import export_hf_checkpoint  # type: ignore[import-not-found]
        from transformers import AutoModelForCausalLM, AutoTokenizer

        scheme, family = job.scheme_spec, job.family_spec
        _seed(job.seed)
        model = AutoModelForCausalLM.from_pretrained(job.model_dir, torch_dtype="auto", device_map="auto")
        tokenizer = AutoTokenizer.from_pretrained(job.model_dir)
        cfg = copy.deepcopy(getattr(mtq, scheme.library_scheme))
        texts = job.calibration()
        log(f"ModelOpt {scheme.library_scheme} on {job.model_dir}; calibrating on {len(texts)} texts")

        def forward_loop(m: Any) -> None:
            for text in texts:
                ids = tokenizer(
                    text, return_tensors="pt", max_length=job.max_seq_length, truncation=True
                ).input_ids.to(m.device)
                m(ids)

        with torch.inference_mode():
            mtq.quantize(model, cfg, forward_loop)

        # quantizer names are '<module>.weight_quantizer' / '<module>.input_quantizer'
        def excluded(quantizer_name: str) -> bool:
            module = quantizer_name.rsplit(".", 1)[0]
            return any(re.search(p, module) for p in family.exclude)

        mtq.disable_quantizer(model, excluded)
        partial = _fresh(job.output_path.with_name(job.output_path.name + ".partial"))
        with torch.inference_mode():
            export_hf_checkpoint(model, export_dir=partial)  # config.json quant_method: "modelopt"
        tokenizer.save_pretrained(partial)
        return _finish_folder(partial, job.output_path)


class LlamaCppBackend(Backend):
    """llama.cpp's quantizer via llama-cpp-python; a quantized GGUF input is first dequantized to F16."""

    name: ClassVar[str] = "llama.cpp"

    def available(self) -> str | None:
        missing = _missing("llama_cpp", "gguf")
        return (
            f"llama.cpp bindings not installed ({', '.join(missing)} missing): {_PIP_HINT}"
            if missing
            else None
        )

    def run(self, job: QuantJob, log: Log) -> Path:
        import gguf

        from perftune.quant.gguf_tools import dequantize_to_f16, quantize_gguf

        scheme = job.scheme_spec
        src = Path(job.model_dir)
        if not (src.is_file() and src.suffix == ".gguf"):
            # HF -> GGUF conversion is llama.cpp's convert_hf_to_gguf.py, not shipped in its wheel
            raise ModelError(
                f"llama.cpp schemes need a GGUF input, got {src}",
                hint="convert with llama.cpp's convert_hf_to_gguf.py --outtype f16 first",
            )
        assert scheme.gguf_file_type is not None
        reader = gguf.GGUFReader(src)
        field = reader.fields.get("general.file_type")
        ftype = int(field.contents()) if field is not None else -1
        del reader
        if ftype in (0, LLAMA_FTYPE_MOSTLY_F16, 32):  # ALL_F32, MOSTLY_F16, MOSTLY_BF16
            f16 = src
        else:
            f16 = job.out_dir / "work" / "f16.gguf"
            log(f"{src.name} is file_type {ftype}: dequantizing to F16 at {f16}")
            dequantize_to_f16(src, f16)
        log(f"llama.cpp quantize {f16.name} -> {scheme.library_scheme} ({scheme.gguf_file_type})")
        out = quantize_gguf(f16, job.output_path, scheme.gguf_file_type, job.nthread)
        if f16 != src:
            f16.unlink(missing_ok=True)
        return out


BACKENDS: dict[str, Backend] = {
    b.name: b for b in (LlmCompressorBackend(), ModelOptBackend(), LlamaCppBackend())
}


def backend_for(scheme: Scheme) -> Backend:
    """The backend that makes `scheme`."""
    return BACKENDS[scheme.backend]
