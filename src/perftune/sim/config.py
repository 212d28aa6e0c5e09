"""What the simulator models, and the vLLM command-line flags that set it.

The simulator accepts vLLM's own flag names for the levers it models, so the vLLM adapter can point at
it unchanged; a flag it cannot model is refused with a one-line error, never silently ignored.
It also takes perftune's own test-engine fault flags (--fault and --fault-*), so a campaign's
engine_args can make a simulated engine fail on purpose; they set `SimConfig.fault`, never a lever.
"""

from __future__ import annotations

import argparse
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from perftune.errors import ConfigError

CUDAGRAPH_MODES = ("NONE", "PIECEWISE", "FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE")
CudagraphMode = Literal["NONE", "PIECEWISE", "FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE"]
FAULT_KINDS = ("wedge", "http500", "drop", "stall")
FaultKind = Literal["wedge", "http500", "drop", "stall"]


class SimFault(BaseModel):
    """A test engine's failure mode (`perftune sim-server --fault KIND`); never a serving lever.

    It applies to every generate request after the first `after` valid ones (as the mock's
    --wedge-after counts), and only where the served config matches `when` (a lever that avoids it)."""

    model_config = ConfigDict(extra="forbid")
    kind: FaultKind = Field(
        description="wedge: the stream opens and never sends a token; http500: a 500 with an OpenAI "
        "error body; drop: the connection is closed mid-stream after drop_tokens tokens; stall: the "
        "first byte is held for stall_s seconds, then the request is served"
    )
    after: int = Field(0, ge=0, description="generate requests served normally before the fault starts")
    stall_s: float = Field(5.0, ge=0, description="stall: seconds before the first byte")
    drop_tokens: int = Field(
        2,
        ge=0,
        description="drop: tokens streamed before the connection closes (a request for no more tokens "
        "than this completes; a non-streaming request is closed before its answer)",
    )
    when: dict[str, str] = Field(
        default_factory=dict,
        description="SimConfig field -> value (as text): the fault applies only to a served config "
        "with all of them, e.g. {'kv_cache_dtype': 'fp8'}; empty: always",
    )


class SimConfig(BaseModel):
    """Serving levers of one simulated vLLM instance (defaults: vLLM 0.26.0 on an 80 GB Hopper)."""

    model_config = ConfigDict(extra="forbid")
    served_name: str | None = Field(None, description="served model name (default: the model's name)")
    max_num_seqs: int = Field(1024, ge=1, description="most sequences scheduled in one step")
    max_num_batched_tokens: int = Field(8192, ge=1, description="token budget per step (chunked prefill)")
    enable_chunked_prefill: bool = Field(True, description="split long prompts across steps")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="fraction of GPU memory used")
    kv_cache_dtype: Literal["auto", "fp8"] = Field("auto", description="KV-cache element type")
    quantization: Literal["none", "fp8", "nvfp4"] = Field(
        "none",
        description="weight quantization: fp8 (vLLM --quantization fp8), nvfp4 (--quantization "
        "modelopt_fp4: FP4 GEMMs where the GPU has FP4 tensor cores, else 4-bit weights into bf16 GEMMs, "
        "vLLM's Marlin path)",
    )
    enable_prefix_caching: bool = Field(True, description="reuse KV of identical prompt blocks")
    block_size: int = Field(16, ge=1, description="KV block size, tokens")
    cudagraph_mode: CudagraphMode = Field("FULL_AND_PIECEWISE", description="vLLM cudagraph_mode")
    max_cudagraph_capture_size: int = Field(512, ge=1, description="largest batch captured as a graph")
    tensor_parallel_size: int = Field(1, ge=1, description="tensor parallelism")
    enable_expert_parallel: bool = Field(
        False,
        description="MoE experts sharded whole across the TP ranks: each MoE layer's tokens travel by "
        "all-to-all (dispatch and combine) instead of the MLP's all-reduce",
    )
    async_scheduling: bool = Field(
        True,
        description="vLLM's async scheduling (its default): the next step is prepared and launched while "
        "the GPU runs this one, so a busy engine hides an ungraphed step's host time behind the step "
        "before (Calibration.ungraphed_ahead)",
    )
    max_model_len: int | None = Field(None, ge=1, description="context limit (default: the model's)")
    scheduler: Literal["vllm", "sglang"] = Field(
        "vllm",
        description="whose step composition: vllm (V1: one token budget shared by running decodes first, "
        "then chunked prefills) or sglang (a step is a prefill batch while requests wait, else a decode "
        "batch of every running request; max_num_batched_tokens is its chunked-prefill size)",
    )
    seed: int = Field(0, description="seed for sampled tokens and step-time jitter")
    fault: SimFault | None = Field(None, description="test engine: an injected failure (None: healthy)")

    def fault_applies(self) -> bool:
        """The fault is set and the served config matches its `when` (compared as text)."""
        f = self.fault
        if f is None:
            return False
        d = self.model_dump(exclude={"fault"})
        return all(str(d.get(k)).lower() == v.lower() for k, v in f.when.items())

    @property
    def kv_dtype(self) -> str:
        return "fp8" if self.kv_cache_dtype == "fp8" else "bf16"

    @property
    def weight_dtype(self) -> str:
        return "bf16" if self.quantization == "none" else self.quantization


# vLLM's --quantization values the simulator models -> SimConfig.quantization
VLLM_QUANTIZATION = {"fp8": "fp8", "modelopt_fp4": "nvfp4"}

# Flags accepted and ignored because they do not change what the simulator computes.
_NEUTRAL = {"--load-format": "weights are never loaded", "--dtype": "bf16/auto only (see --quantization)"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"simulator flags: {message}", hint="see `perftune sim-server --help`")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="perftune sim-server", add_help=False, allow_abbrev=False)
    p.add_argument("--served-model-name")
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument("--enable-chunked-prefill", action="store_true", default=None)
    p.add_argument("--no-enable-chunked-prefill", dest="enable_chunked_prefill", action="store_false")
    p.add_argument("--gpu-memory-utilization", type=float)
    p.add_argument("--kv-cache-dtype", choices=["auto", "fp8", "fp8_e4m3"])
    p.add_argument("--quantization", "-q", choices=list(VLLM_QUANTIZATION))
    p.add_argument("--enable-prefix-caching", action="store_true", default=None)
    p.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching", action="store_false")
    p.add_argument("--block-size", type=int)
    p.add_argument("--enforce-eager", action="store_true", default=None)
    p.add_argument("--compilation-config", "-O")
    p.add_argument("--max-cudagraph-capture-size", type=int)
    p.add_argument("--tensor-parallel-size", "-tp", type=int)
    p.add_argument("--enable-expert-parallel", action="store_true", default=None)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--async-scheduling", action="store_true", default=None)
    p.add_argument("--no-async-scheduling", dest="async_scheduling", action="store_false")
    p.add_argument("--seed", type=int)
    for flag in _NEUTRAL:
        p.add_argument(flag)
    # perftune's test-engine faults (not vLLM's): `perftune sim-server --help` describes them.
    p.add_argument("--fault")
    p.add_argument("--fault-after", type=int)
    p.add_argument("--fault-stall-s", type=float)
    p.add_argument("--fault-drop-tokens", type=int)
    p.add_argument("--fault-when", action="append")
    return p


def parse_fault(
    kind: str | None,
    after: int | None = None,
    stall_s: float | None = None,
    drop_tokens: int | None = None,
    when: list[str] | None = None,
) -> SimFault | None:
    """The --fault* flags -> SimFault (None without --fault); ConfigError for a bad value or a
    --fault-* option given without --fault."""
    hint = "e.g. --fault drop --fault-after 4 --fault-drop-tokens 2 (kinds: " + ", ".join(FAULT_KINDS) + ")"
    if kind is None:
        if after is not None or stall_s is not None or drop_tokens is not None or when:
            raise ConfigError(
                "--fault-after/--fault-stall-s/--fault-drop-tokens/--fault-when need --fault", hint=hint
            )
        return None
    if kind not in FAULT_KINDS:
        raise ConfigError(f"unknown --fault '{kind}'", hint=hint)
    conditions: dict[str, str] = {}
    for term in when or []:
        key, sep, value = term.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in SimConfig.model_fields or key == "fault":
            raise ConfigError(
                f"bad --fault-when '{term}'",
                hint="write FIELD=VALUE with a simulator config field, e.g. kv_cache_dtype=fp8 or "
                "max_num_seqs=2",
            )
        conditions[key] = value.strip()
    d: dict[str, object] = {"kind": kind, "when": conditions}
    for name, v in (("after", after), ("stall_s", stall_s), ("drop_tokens", drop_tokens)):
        if v is not None:
            d[name] = v
    try:
        return SimFault.model_validate(d)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        flag = "--fault-" + str(err["loc"][0]).replace("_", "-")
        raise ConfigError(f"{flag}: {err['msg']}", hint=hint) from None


def parse_vllm_flags(argv: list[str], base: SimConfig | None = None) -> SimConfig:
    """vLLM flags -> SimConfig. Unknown flags raise ConfigError naming the flag."""
    known, unknown = _parser().parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        if flag.startswith("--speculative"):
            raise ConfigError(
                "the simulator's live server does not speculate: acceptance depends on the text, which it "
                "does not have",
                hint="`perftune sim spec --acceptance A --k K` predicts speculation from an acceptance "
                "profile; measure acceptance on a real engine (perftune specdec)",
            )
        raise ConfigError(
            f"the simulator cannot model vLLM flag '{flag}'",
            hint="modelled: --max-num-seqs --max-num-batched-tokens --(no-)enable-chunked-prefill "
            "--gpu-memory-utilization --kv-cache-dtype --quantization fp8|modelopt_fp4 "
            "--(no-)enable-prefix-caching "
            "--block-size --enforce-eager --compilation-config '{\"cudagraph_mode\": ...}' "
            "--max-cudagraph-capture-size --tensor-parallel-size --enable-expert-parallel --max-model-len "
            "--(no-)async-scheduling --seed "
            "(test faults: --fault --fault-after --fault-stall-s --fault-drop-tokens --fault-when)",
        )
    d = (base or SimConfig()).model_dump()
    v = vars(known)
    for key in (
        "served_model_name",
        "max_num_seqs",
        "max_num_batched_tokens",
        "enable_chunked_prefill",
        "gpu_memory_utilization",
        "enable_prefix_caching",
        "block_size",
        "max_cudagraph_capture_size",
        "tensor_parallel_size",
        "enable_expert_parallel",
        "max_model_len",
        "async_scheduling",
        "seed",
    ):
        if v.get(key) is not None:
            d["served_name" if key == "served_model_name" else key] = v[key]
    if v.get("kv_cache_dtype"):
        d["kv_cache_dtype"] = "fp8" if v["kv_cache_dtype"].startswith("fp8") else "auto"
    if v.get("quantization"):
        d["quantization"] = VLLM_QUANTIZATION[v["quantization"]]
    if v.get("enforce_eager"):
        d["cudagraph_mode"] = "NONE"
    if v.get("compilation_config"):
        d["cudagraph_mode"], size = _compilation(v["compilation_config"], d["cudagraph_mode"])
        if size is not None and v.get("max_cudagraph_capture_size") is None:
            d["max_cudagraph_capture_size"] = size
    fault = parse_fault(
        v.get("fault"),
        v.get("fault_after"),
        v.get("fault_stall_s"),
        v.get("fault_drop_tokens"),
        v.get("fault_when"),
    )
    if fault is not None:
        d["fault"] = fault
    return SimConfig(**d)


def _compilation(text: str, current: str) -> tuple[str, int | None]:
    """(cudagraph_mode, max_cudagraph_capture_size or None) of a --compilation-config / -O value."""
    if text.strip().isdigit():  # -O 0..3: optimization level; only 0 (eager) changes graphs
        return ("NONE" if text.strip() == "0" else current), None
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ConfigError(
            "--compilation-config is not JSON",
            hint='e.g. --compilation-config \'{"cudagraph_mode": "FULL"}\'',
        ) from e
    if not isinstance(obj, dict):
        raise ConfigError(
            "--compilation-config must be a JSON object", hint='e.g. {"cudagraph_mode": "FULL"}'
        )
    extra = sorted(set(obj) - {"cudagraph_mode", "max_cudagraph_capture_size"})
    if extra:
        raise ConfigError(
            f"the simulator cannot model compilation-config key(s) {', '.join(extra)}",
            hint="modelled keys: cudagraph_mode, max_cudagraph_capture_size",
        )
    mode = str(obj.get("cudagraph_mode", current)).upper()
    if mode not in CUDAGRAPH_MODES:
        raise ConfigError(f"unknown cudagraph_mode '{mode}'", hint="one of " + ", ".join(CUDAGRAPH_MODES))
    size = obj.get("max_cudagraph_capture_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ConfigError(
            f"max_cudagraph_capture_size must be a positive integer, got {size!r}",
            hint="e.g. --compilation-config '{\"max_cudagraph_capture_size\": 2048}'",
        )
    return mode, size
