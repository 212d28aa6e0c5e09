"""The coverage guard: how much of the output checkpoint is really quantized, read from its tensors.

Never from a log: a quantizer that silently skips a fused MoE expert block still logs success. We read
only the safetensors JSON headers (8-byte little-endian length + JSON: dtype and shape per tensor), so
the check needs no torch and touches no weight data; GGUF files are read with gguf.GGUFReader (mmap).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from perftune.errors import ConfigError, ModelError
from perftune.quant.families import WEIGHT_SUFFIXES, Family, module_of
from perftune.quant.schemes import Scheme

# Dtypes a quantized weight is stored in: FP8, packed FP4/int4 in bytes, int8, int4 packed in int32.
QUANTIZED_DTYPES = frozenset({"F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "U8", "I8", "I32", "U32", "I4", "U4"})
# Sibling tensors that carry a weight's quantization scales (compressed-tensors, FP8 block, GPTQ, ModelOpt).
_SCALE_NAMES = ("weight_scale", "weight_scale_inv", "weight_scale_2", "scales", "scale", "scale_inv")
# Tensors next to a weight that are never a module's weight themselves.
_AUX = re.compile(r"(_scale|_scale_inv|_scale_2|_scales|_zeros|_zero_point|_bias|_shape|_g_idx)$|\.(bias)$")
# Embeddings are left full precision whatever the family file says.
_EMBEDDING = re.compile(r"(embed_tokens|embeddings?|wte|wpe|tok_embeddings|word_embeddings)$")
_EXPERTS = re.compile(r"(^|\.)experts(\.|$)")
_MAX_HEADER = 100 * 1024 * 1024
_SHOWN = 5


class TensorInfo(BaseModel):
    """One tensor as its checkpoint header describes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: str = Field(description="safetensors dtype, e.g. BF16, F8_E4M3, I32")
    shape: tuple[int, ...] = Field(description="tensor shape")


class CoverageReport(BaseModel):
    """How many in-scope weights of a checkpoint are stored quantized."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_scope: int = Field(description="linear weights (2-D) and fused expert blocks (3-D) to quantize")
    quantized: int = Field(description="in-scope weights stored quantized")
    skipped: list[str] = Field(description="in-scope modules left unquantized")
    excluded: int = Field(description="weights left full precision on purpose (lm_head, routers, embeddings)")
    fused_expert_blocks: int = Field(description="in-scope fused 3-D MoE expert blocks")
    skipped_fused_expert_blocks: list[str] = Field(
        default_factory=list, description="fused expert blocks left unquantized (a subset of skipped)"
    )

    @property
    def ok(self) -> bool:
        return not self.skipped


class GateResult(BaseModel):
    """A quantized checkpoint's gate: green when it declares the right method and covers every weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: bool = Field(description="no reasons")
    reasons: list[str] = Field(description="one line per red finding")
    coverage: CoverageReport | None = Field(description="tensor coverage, None when unreadable")


def _natural(name: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _shown(names: list[str]) -> str:
    more = len(names) - _SHOWN
    return ", ".join(names[:_SHOWN]) + (f" (+{more} more)" if more > 0 else "")


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one .safetensors file, from its JSON header only (no data is read)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ModelError(f"{path} is not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER:
                raise ModelError(f"{path} is not a safetensors file (header length {n})")
            raw = fh.read(n)
        header = json.loads(raw)
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{path} has a malformed safetensors header") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path} has a malformed safetensors header")
    try:
        return {
            name: TensorInfo(dtype=meta["dtype"], shape=tuple(meta["shape"]))
            for name, meta in header.items()
            if name != "__metadata__"
        }
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{path} has a malformed safetensors header") from None


def checkpoint_tensors(folder: Path) -> dict[str, TensorInfo]:
    """Every tensor of a Hugging Face folder: all *.safetensors headers (and the index's shards)."""
    folder = Path(folder)
    shards = set(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            listed = {folder / str(f) for f in weight_map.values()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ModelError(f"{index} is malformed (no weight_map)") from None
        missing = sorted(p.name for p in listed if not p.is_file())
        if missing:
            raise ModelError(f"{index.name} lists shards that are missing: {_shown(missing)}")
        shards |= listed
    if not shards:
        raise ModelError(f"no *.safetensors files in {folder}")
    tensors: dict[str, TensorInfo] = {}
    for shard in sorted(shards):
        tensors.update(read_safetensors_header(shard))
    return tensors


def _has_scale(module: str, names: set[str]) -> bool:
    return any(f"{module}{sep}{s}" in names for s in _SCALE_NAMES for sep in (".", "_"))


def coverage_of(tensors: dict[str, TensorInfo], family: Family) -> CoverageReport:
    """Coverage of linear weights and fused expert blocks, decided from dtypes, shapes and scale siblings."""
    names = set(tensors)
    modules: dict[str, tuple[bool, bool]] = {}  # module -> (fused 3-D expert block, stored quantized)
    for name, info in tensors.items():
        nd = len(info.shape)
        is_weight = name.endswith(WEIGHT_SUFFIXES)
        expertish = family.is_expert(name) or bool(_EXPERTS.search(module_of(name)))
        if is_weight and nd == 2:
            fused = False
        elif nd == 3 and expertish and (is_weight or not _AUX.search(name)):
            fused = True  # e.g. mlp.experts.gate_up_proj [E, 2I, H], or experts.down_proj.weight
        else:
            continue  # norms and biases (1-D), scales, conv kernels
        module = module_of(name)
        stored_q = info.dtype in QUANTIZED_DTYPES or _has_scale(module, names)
        was = modules.get(module, (fused, False))
        modules[module] = (was[0] or fused, was[1] or stored_q)

    in_scope = quantized = excluded = fused_blocks = 0
    skipped: list[str] = []
    skipped_fused: list[str] = []
    for module in sorted(modules, key=_natural):
        fused, is_q = modules[module]
        if family.excludes(module) or _EMBEDDING.search(module):
            excluded += 1
            continue
        in_scope += 1
        fused_blocks += int(fused)
        if is_q:
            quantized += 1
        else:
            skipped.append(module)
            if fused:
                skipped_fused.append(module)
    return CoverageReport(
        in_scope=in_scope,
        quantized=quantized,
        skipped=skipped,
        excluded=excluded,
        fused_expert_blocks=fused_blocks,
        skipped_fused_expert_blocks=skipped_fused,
    )


def _coverage_reasons(cov: CoverageReport, what: str) -> list[str]:
    reasons: list[str] = []
    if cov.in_scope == 0:
        reasons.append(f"no in-scope {what} found in the checkpoint")
    if cov.skipped_fused_expert_blocks:
        k = len(cov.skipped_fused_expert_blocks)
        reasons.append(
            f"{k} of {cov.fused_expert_blocks} fused MoE expert blocks left unquantized: "
            f"{_shown(cov.skipped_fused_expert_blocks)}"
        )
    rest = [m for m in cov.skipped if m not in set(cov.skipped_fused_expert_blocks)]
    if rest:
        reasons.append(f"{len(rest)} of {cov.in_scope} {what} left unquantized: {_shown(rest)}")
    return reasons


def check_checkpoint(folder: Path, scheme: Scheme, family: Family) -> GateResult:
    """Gate a quantized Hugging Face folder: declared quant_method + tensor coverage."""
    if scheme.output_format != "safetensors" or scheme.quant_method is None:
        raise ConfigError(
            f"scheme '{scheme.name}' writes {scheme.output_format}, not a safetensors checkpoint",
            hint="check GGUF outputs with check_gguf",
        )
    folder = Path(folder)
    reasons: list[str] = []
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        reasons.append(f"no config.json in {folder}")
    except (OSError, ValueError) as e:
        reasons.append(f"config.json is unreadable: {e}")
    else:
        qc = config.get("quantization_config") if isinstance(config, dict) else None
        method = qc.get("quant_method") if isinstance(qc, dict) else None
        if not method:
            reasons.append("config.json declares no quantization method (quantization_config.quant_method)")
        elif method != scheme.quant_method:
            reasons.append(
                f"config.json declares quant_method '{method}', scheme '{scheme.name}' expects "
                f"'{scheme.quant_method}'"
            )
    coverage: CoverageReport | None = None
    try:
        coverage = coverage_of(checkpoint_tensors(folder), family)
    except ModelError as e:
        reasons.append(e.message)
    else:
        reasons += _coverage_reasons(coverage, "linear modules")
    return GateResult(ok=not reasons, reasons=reasons, coverage=coverage)


# GGML types that are not quantized: a 2-D block weight stored in one of these was skipped.
_GGML_FULL_PRECISION = frozenset({"F32", "F16", "BF16", "F64"})


def _ftype_name(value: int) -> str:
    import gguf

    try:
        return str(gguf.LlamaFileType(value).name)
    except ValueError:
        return "unknown"


def check_gguf(path: Path, scheme: Scheme) -> GateResult:
    """Gate a GGUF file: general.file_type is the scheme's, and every 2-D block weight is quantized.

    token_embd / output may be any type (llama.cpp picks them per ftype); Q4_K_M legitimately keeps some
    block weights at Q6_K, which counts as quantized.
    """
    import gguf

    if scheme.gguf_file_type is None:
        raise ConfigError(
            f"scheme '{scheme.name}' writes {scheme.output_format}, not GGUF",
            hint="check safetensors outputs with check_checkpoint",
        )
    path = Path(path)
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:
        return GateResult(ok=False, reasons=[f"cannot read GGUF {path}: {e}"], coverage=None)
    reasons: list[str] = []
    field = reader.fields.get("general.file_type")
    if field is None:
        reasons.append(f"{path.name} declares no general.file_type")
    else:
        ft = int(field.contents())
        want = scheme.gguf_file_type
        if ft != want:
            reasons.append(
                f"general.file_type is {ft} ({_ftype_name(ft)}), scheme '{scheme.name}' expects "
                f"{want} ({_ftype_name(want)})"
            )
    in_scope = quantized = excluded = fused = 0
    skipped: list[str] = []
    skipped_fused: list[str] = []
    for t in reader.tensors:
        nd = len(t.shape)
        if nd < 2:
            continue  # norms, biases
        if not t.name.startswith("blk."):
            excluded += 1  # token_embd, output, and other non-block tensors: any type is fine
            continue
        in_scope += 1
        fused += int(nd == 3)  # blk.N.ffn_{gate,up,down}_exps.weight
        if t.tensor_type.name in _GGML_FULL_PRECISION:
            skipped.append(f"{t.name} ({t.tensor_type.name})")
            if nd == 3:
                skipped_fused.append(skipped[-1])
        else:
            quantized += 1
    cov = CoverageReport(
        in_scope=in_scope,
        quantized=quantized,
        skipped=skipped,
        excluded=excluded,
        fused_expert_blocks=fused,
        skipped_fused_expert_blocks=skipped_fused,
    )
    reasons += _coverage_reasons(cov, "block weights")
    return GateResult(ok=not reasons, reasons=reasons, coverage=cov)
