"""config.json -> ModelCard. Parameters and KV bytes are computed from shapes, never looked up.

Conventions (stated, because vendors differ):
- `total_params`: every weight in the checkpoint's language model (embeddings, lm_head, norms, routers;
  DeepSeek's multi-token-prediction module and vision towers excluded: they do not run per token).
- `active_params`: weights read per decode token: non-embedding active weights + lm_head (the input
  embedding is a one-row lookup). This is what the roofline reads. OpenAI's "5.1B active" for
  gpt-oss-120b uses it; Mistral, Qwen and DeepSeek count the input embedding too, which is
  `active_params_with_embedding`.
- Quantized checkpoints are mixed: the quantization applies to some parameter groups (`quantized_share`,
  by ParamBreakdown field) and the rest stays at the checkpoint's 16-bit dtype. The rule: linear layers
  (attention, dense MLP, experts, linear attention) are quantized; input embeddings, norms and MoE
  routers never are; lm_head is not, unless the config says so (GPTQ `lm_head: true`, or a
  compressed-tensors scheme targeting Linear whose `ignore` list leaves lm_head out). A module the
  config keeps unquantized (`ignore`, `modules_to_not_convert`, `ignored_layers`, `exclude_modules`)
  takes its group out: for every layer when written with a wildcard or regex, for the share of layers
  it names when written per layer (a sub-module such as `q_proj` counts its whole group in that layer).
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from perftune.errors import ModelError

AttentionKind = Literal["MHA", "GQA", "MQA", "MLA", "hybrid"]
Family = Literal[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "mixtral",
    "deepseek_v2",
    "deepseek_v3",
    "gemma2",
    "gemma3",
    "gpt_oss",
    "phi3",
    "qwen3_next",
    "nemotron_h",
    "generic",
]
KNOWN_TYPES: dict[str, Family] = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "qwen2_moe": "qwen3_moe",
    "qwen3_moe": "qwen3_moe",
    "mixtral": "mixtral",
    "deepseek_v2": "deepseek_v2",
    "deepseek_v3": "deepseek_v3",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
    "gpt_oss": "gpt_oss",
    "phi3": "phi3",
    "qwen3_next": "qwen3_next",
    "nemotron_h": "nemotron_h",
}
# Bytes per weight for quantizable (linear-layer) weights, scale overheads included.
WEIGHT_BYTES: dict[str, float] = {
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0 + 4.0 / (128 * 128),  # e4m3 + one fp32 scale per 128x128 block
    "int8": 1.0 + 2.0 / 4096,  # int8 + one fp16 scale per output channel (W8A8 / GPTQ 8-bit), ~1 byte
    "int4": 0.5 + 2.5 / 128,  # 4-bit + fp16 scale and 4-bit zero per group of 128 (AWQ/GPTQ)
    "nvfp4": 0.5 + 1.0 / 16,  # e2m1 + one fp8 scale per 16 (global fp32 scale negligible)
    "mxfp4": 0.5 + 1.0 / 32,  # e2m1 + one e8m0 scale per 32
}
UNQUANTIZED_BYTES = 2.0  # groups outside the quantization: 16-bit as served (fp32 checkpoints are cast)
# Bytes per KV-cache element. vLLM/SGLang: bf16 | fp16 | fp8 (e4m3/e5m2, per-tensor scales negligible).
# llama.cpp --cache-type-k/v: blocks of 32 elements with one fp16 scale (q8_0: 32 int8 + 2 bytes = 34 / 32),
# q4_1/q5_1 add an fp16 minimum.
KV_BYTES: dict[str, float] = {
    "bf16": 2.0,
    "fp16": 2.0,
    "fp32": 4.0,
    "fp8": 1.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}
# config.json torch_dtype (or transformers' newer `dtype`) -> perftune's name for it.
TORCH_DTYPES: dict[str, str] = {
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float16": "fp16",
    "fp16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "fp32": "fp32",
    "float": "fp32",
}
# Share of each parameter group held in the quantized dtype when the config names no exceptions.
DEFAULT_QUANTIZED_SHARE: dict[str, float] = {
    "embedding": 0.0,
    "lm_head": 0.0,
    "attention": 1.0,
    "dense_mlp": 1.0,
    "routed_experts": 1.0,
    "shared_experts": 1.0,
    "router": 0.0,
    "linear_attention": 1.0,
    "norms": 0.0,
}
# A module name the quantization config keeps unquantized -> the parameter group it belongs to; the
# first match wins (`mlp.gate` is the MoE router, `gate_proj` / `gate_up_proj` are not).
_MODULE_GROUPS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("lm_head", re.compile(r"lm_head|output_layer")),
    ("embedding", re.compile(r"embed")),
    ("shared_experts", re.compile(r"shared_expert")),
    ("router", re.compile(r"router|\.gate(?![\w])")),
    ("routed_experts", re.compile(r"experts")),
    ("linear_attention", re.compile(r"linear_attn")),
    ("attention", re.compile(r"self_attn|attention|\.attn\b")),
    ("dense_mlp", re.compile(r"mlp|feed_forward")),
)


class MoEInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    experts: int = Field(description="routed experts per MoE layer")
    top_k: int = Field(description="routed experts per token")
    shared_experts: int = Field(
        description="always-on shared experts (DeepSeek style; Qwen: shared expert count)"
    )
    expert_intermediate: int = Field(description="expert FFN width")
    moe_layers: int = Field(description="layers with routed experts")
    dense_layers: int = Field(description="leading dense FFN layers")


class QuantInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str = Field(
        description="fp8 | compressed-tensors | modelopt | awq | gptq | mxfp4 | bitsandbytes | ..."
    )
    weight_dtype: str = Field(
        description="dtype of quantized linear weights: fp8 | int4 | nvfp4 | mxfp4 | ..."
    )
    block_size: list[int] | None = Field(None, description="block quantization shape, e.g. [128, 128]")
    source: str = Field(description="config.json quantization_config or hf_quant_config.json")
    unquantized_modules: list[str] = Field(
        default_factory=list,
        description="modules the config keeps unquantized (ignore / modules_to_not_convert / "
        "ignored_layers / exclude_modules), as written",
    )

    def describe(self) -> str:
        """One line for a person: 'checkpoint quantization_config: fp8 block [128, 128]'."""
        method = "" if self.method == self.weight_dtype else f" {self.method}"
        block = f" block {self.block_size}" if self.block_size else ""
        where = "hf_quant_config.json" if self.source == "hf_quant_config.json" else "quantization_config"
        return f"checkpoint {where}:{method} {self.weight_dtype}{block}"


class ParamBreakdown(BaseModel):
    model_config = ConfigDict(extra="forbid")
    embedding: int
    lm_head: int
    attention: int
    dense_mlp: int
    routed_experts: int
    routed_experts_active: int
    shared_experts: int
    router: int
    linear_attention: int
    norms: int


class ModelCard(BaseModel):
    """Everything perftune knows about a model's shapes, computed from its config."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="catalog name, folder or hub id")
    family: Family = Field(description="architecture family")
    model_type: str = Field(description="config.json model_type")
    attention: AttentionKind = Field(description="MHA / GQA / MQA / MLA / hybrid")
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    max_context: int = Field(description="max_position_embeddings")
    rope_scaling: dict[str, Any] | None
    attention_layers: int = Field(description="layers that keep a per-token KV cache")
    sliding_window: int | None = Field(description="sliding window of local layers, if any")
    sliding_layers: int = Field(description="attention layers with a sliding window")
    moe: MoEInfo | None
    mla: dict[str, int] | None = Field(description="kv_lora_rank, qk_rope_head_dim, q_lora_rank, ... for MLA")
    params: ParamBreakdown
    total_params: int
    active_params: int = Field(description="weights read per decode token (lm_head in, input embedding out)")
    active_params_with_embedding: int = Field(description="active_params + the input embedding table")
    torch_dtype: str = Field(
        "bf16", description="the checkpoint's unquantized dtype (config.json torch_dtype): bf16 | fp16 | fp32"
    )
    quantized_share: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_QUANTIZED_SHARE),
        description="share of each parameter group (ParamBreakdown field) a weight dtype applies to; "
        "the rest stays 16-bit (the checkpoint's layout, see the module docstring)",
    )
    weight_bytes: dict[str, float] = Field(
        description="checkpoint bytes if its quantized groups (quantized_share) are in each dtype, the "
        "rest 16-bit"
    )
    native_weight_bytes: float = Field(description="bytes of the checkpoint as published (its quantization)")
    kv_bytes_per_token: dict[str, float] = Field(
        description="KV-cache bytes per token (all layers) per KV dtype"
    )
    linear_state_bytes_per_seq: float = Field(
        description="constant recurrent state per sequence (hybrid models), bf16"
    )
    quantization: QuantInfo | None
    engine_requirements: list[str] = Field(description="what engines need for this architecture")
    warnings: list[str] = Field(default_factory=list, description="assumptions made while reading the config")

    def group_bytes_per_param(self, group: str, dtype: str) -> float:
        """Average bytes per parameter of one ParamBreakdown group when the quantized share is `dtype`."""
        share = self.quantized_share.get(group, 0.0)
        return share * WEIGHT_BYTES[dtype] + (1.0 - share) * UNQUANTIZED_BYTES


def _req(cfg: dict[str, Any], key: str, name: str) -> Any:
    if cfg.get(key) is None:
        raise ModelError(f"{name}: config.json lacks '{key}'", hint="is this a decoder-only LLM config.json?")
    return cfg[key]


def _not_converted(q: dict[str, Any]) -> list[str]:
    """The modules a quantization config keeps unquantized, under any of the names recipes use."""
    out: list[str] = []
    for key in ("ignore", "modules_to_not_convert", "ignored_layers", "exclude_modules"):
        v = q.get(key)
        if isinstance(v, list):
            out += [str(m) for m in v]
    return out


def detect_quantization(cfg: dict[str, Any], hf_quant: dict[str, Any] | None = None) -> QuantInfo | None:
    if hf_quant:  # ModelOpt writes hf_quant_config.json next to config.json
        q = hf_quant.get("quantization", hf_quant)
        algo = str(q.get("quant_algo", "")).upper()
        dtype = (
            "nvfp4"
            if "FP4" in algo
            else "fp8"
            if "FP8" in algo
            else "int4"
            if "INT4" in algo
            else algo.lower()
        )
        return QuantInfo(
            method="modelopt",
            weight_dtype=dtype or "unknown",
            source="hf_quant_config.json",
            unquantized_modules=_not_converted(q),
        )
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict):
        return None
    method = str(qc.get("quant_method", "unknown")).lower()
    block = qc.get("weight_block_size")
    dtype = {
        "fp8": "fp8",
        "mxfp4": "mxfp4",
        "awq": "int4",
        "gptq": "int4",
        "bitsandbytes": "int4",
        "modelopt": "fp8",
    }.get(method, "unknown")
    if method in ("awq", "gptq"):
        bits = qc.get("bits", qc.get("w_bit"))
        dtype = "int8" if bits == 8 else "int4" if bits in (None, 4) else f"int{bits}"
    if method == "bitsandbytes" and qc.get("load_in_8bit"):
        dtype = "int8"
    if method == "compressed-tensors":
        groups: dict[str, Any] = qc.get("config_groups") or {}
        first: dict[str, Any] = next(iter(groups.values()), {}) if groups else {}
        w: dict[str, Any] = first.get("weights", {})
        bits, typ = w.get("num_bits"), str(w.get("type", ""))
        dtype = (
            "fp8"
            if bits == 8 and typ == "float"
            else "int4"
            if bits == 4 and typ == "int"
            else "nvfp4"
            if bits == 4 and typ == "float"
            else "int8"
            if bits == 8
            else "unknown"
        )
        block = w.get("block_structure") or block
    if method == "modelopt":
        algo = str(qc.get("quant_algo", "")).upper()
        dtype = "nvfp4" if "FP4" in algo else "fp8"
    return QuantInfo(
        method=method,
        weight_dtype=dtype,
        block_size=list(block) if block else None,
        source="config.json quantization_config",
        unquantized_modules=_not_converted(qc),
    )


def _lm_head_quantized(qc: dict[str, Any]) -> bool:
    """lm_head is quantized only where the config says so: GPTQ's `lm_head: true`, or a
    compressed-tensors scheme that targets Linear (or lm_head) without ignoring it."""
    if qc.get("lm_head") is True:
        return True
    if str(qc.get("quant_method", "")).lower() != "compressed-tensors":
        return False
    groups = qc.get("config_groups") or {}
    targets = [str(t) for g in groups.values() if isinstance(g, dict) for t in g.get("targets") or []]
    if not any(t == "Linear" or "lm_head" in t for t in targets):
        return False
    return not any(re.search(r"lm_head", m) for m in _not_converted(qc))


def _quantized_share(
    quant: QuantInfo | None, qc: dict[str, Any] | None, layers: int, family: str
) -> dict[str, float]:
    """Share of each parameter group a quantization applies to (the rule is in the module docstring).
    Without a quantization the default layout is what online quantization (vLLM --quantization fp8)
    produces, so hypothetical dtypes of a 16-bit checkpoint use it too."""
    share = dict(DEFAULT_QUANTIZED_SHARE)
    if quant is None:
        return share
    if qc is not None and _lm_head_quantized(qc):
        share["lm_head"] = 1.0
    mods = quant.unquantized_modules
    if not mods and quant.weight_dtype == "mxfp4" and family == "gpt_oss":
        return {g: 1.0 if g == "routed_experts" else 0.0 for g in share}  # only the experts are MXFP4
    per_layer: dict[str, set[int]] = {}
    for m in mods:
        group = next((g for g, rx in _MODULE_GROUPS if rx.search(m)), None)
        if group is None:
            continue
        idx = re.search(r"layers\.(\d+)\.", m)
        if idx is None or m.startswith("re:"):  # a wildcard, a regex or a model-wide name: every layer
            share[group] = 0.0
        else:
            per_layer.setdefault(group, set()).add(int(idx.group(1)))
    for group, idxs in per_layer.items():
        share[group] = min(share[group], max(0.0, 1.0 - len(idxs) / max(layers, 1)))
    return share


def _family(cfg: dict[str, Any], model_type: str, name: str, notes: list[str]) -> str:
    """The architecture family of a config.json; an unknown model_type with standard shapes is read
    with the generic decoder formula (and says so), one with non-standard shapes is refused."""
    family = KNOWN_TYPES.get(model_type)
    if family is None:
        missing = [
            k
            for k in (
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "vocab_size",
                "intermediate_size",
            )
            if cfg.get(k) is None
        ]
        if missing:
            raise ModelError(
                f"{name}: unknown model_type '{model_type}' and non-standard shapes "
                f"(missing {', '.join(missing)})",
                hint="supported: " + ", ".join(sorted(set(KNOWN_TYPES))),
            )
        warnings.warn(
            f"{name}: unknown model_type '{model_type}': using the generic decoder formula", stacklevel=2
        )
        notes.append(f"unknown model_type '{model_type}': generic dense decoder formula assumed")
        family = "generic"
    return family


def _feed_forward(
    cfg: dict[str, Any], family: str, h: int, L: int, inter: int
) -> tuple[MoEInfo | None, int, int, int, int, int]:
    """(MoE layout, dense MLP, routed experts, routed experts active per token, shared experts, router)
    parameter counts of the feed-forward blocks."""
    moe: MoEInfo | None = None
    dense_mlp = routed = routed_active = shared = router = 0
    mlp_mult = 3  # gated MLP: gate, up, down
    n_exp = int(cfg.get("num_experts") or cfg.get("n_routed_experts") or cfg.get("num_local_experts") or 0)
    if n_exp:
        top_k = int(cfg.get("num_experts_per_tok") or cfg.get("experts_per_token") or 0)
        e_inter = int(cfg.get("moe_intermediate_size") or inter)
        first_dense = int(cfg.get("first_k_dense_replace") or 0)
        mlp_only = set(cfg.get("mlp_only_layers") or [])
        step = int(cfg.get("decoder_sparse_step") or cfg.get("moe_layer_freq") or 1)
        moe_layers = (
            [i for i in range(L) if i >= first_dense and i not in mlp_only and (i + 1) % step == 0]
            if family in ("qwen3_moe", "qwen3_next")
            else [i for i in range(L) if i >= first_dense]
        )
        n_moe, n_dense = len(moe_layers), L - len(moe_layers)
        expert = mlp_mult * h * e_inter
        if family == "gpt_oss":
            expert += 3 * e_inter  # gate_up bias (2 x width) + down bias (hidden == width)
        n_shared = int(cfg.get("n_shared_experts") or 0)
        shared_each = mlp_mult * h * e_inter
        if family in ("qwen3_moe", "qwen3_next") and cfg.get("shared_expert_intermediate_size"):
            n_shared = 1
            shared_each = (
                mlp_mult * h * int(cfg["shared_expert_intermediate_size"]) + h
            )  # + shared-expert gate
        routed = n_moe * n_exp * expert
        routed_active = n_moe * top_k * expert
        shared = n_moe * n_shared * shared_each
        router = n_moe * (h * n_exp + (n_exp if family in ("gpt_oss", "deepseek_v3") else 0))
        dense_mlp = n_dense * mlp_mult * h * inter
        moe = MoEInfo(
            experts=n_exp,
            top_k=top_k,
            shared_experts=n_shared,
            expert_intermediate=e_inter,
            moe_layers=n_moe,
            dense_layers=n_dense,
        )
    else:
        dense_mlp = L * mlp_mult * h * inter
    return moe, dense_mlp, routed, routed_active, shared, router


def engine_requirements(attention: str, family: str, quant: QuantInfo | None) -> list[str]:
    """What serving this architecture asks of an engine, as notes a person reads (inspect, SOURCE.md);
    the flags themselves are the engine adapters' and the known-good registry's business."""
    reqs: list[str] = []
    if attention == "MLA":
        reqs.append(
            "MLA: vLLM's MLA backends (FlashMLA) need --block-size 64; SGLang picks its MLA backend itself"
        )
    if family == "gpt_oss":
        reqs.append(
            "attention sinks + alternating sliding window: needs an attention backend with sink support"
        )
    if attention == "hybrid":
        reqs.append(
            "hybrid linear attention: prefix caching and chunked prefill depend on engine support for "
            "recurrent state; check the known-good registry for backend workarounds"
        )
    if quant is not None and quant.block_size:
        reqs.append(f"block {quant.weight_dtype} weights {quant.block_size}: TP must divide the blocked dims")
    return reqs


def build_card(config: dict[str, Any], name: str, hf_quant: dict[str, Any] | None = None) -> ModelCard:
    """Compute a ModelCard from a config.json dict."""
    notes: list[str] = []
    top = config
    cfg = dict(config.get("text_config") or config)  # multimodal wrappers (gemma3) keep the LM in text_config
    if "text_config" in config:
        notes.append(
            "multimodal config: the language model (text_config) is counted; the vision tower is not"
        )
        for k in ("tie_word_embeddings", "bos_token_id", "eos_token_id"):
            cfg.setdefault(k, top.get(k))
    model_type = str(cfg.get("model_type") or top.get("model_type") or "")
    family = _family(cfg, model_type, name, notes)

    h = int(_req(cfg, "hidden_size", name))
    L = int(_req(cfg, "num_hidden_layers", name))
    nh = int(_req(cfg, "num_attention_heads", name))
    V = int(_req(cfg, "vocab_size", name))
    nkv = int(cfg.get("num_key_value_heads") or nh)
    hd = int(cfg.get("head_dim") or h // nh)
    tied = bool(cfg.get("tie_word_embeddings", False))
    inter = int(cfg.get("intermediate_size") or 0)
    attn_bias = bool(cfg.get("attention_bias", family in ("qwen2",)))

    embedding = V * h
    lm_head = 0 if tied else V * h
    attn_per_layer = h * nh * hd + 2 * h * nkv * hd + nh * hd * h
    if attn_bias:
        attn_per_layer += nh * hd + 2 * nkv * hd + (h if family == "gpt_oss" else 0)
    norms_per_layer = 2 * h
    if family in ("qwen3", "qwen3_moe", "gemma3", "qwen3_next"):
        norms_per_layer += 2 * hd  # q_norm / k_norm
    if family in ("gemma2", "gemma3"):
        norms_per_layer += 2 * h  # pre/post feed-forward norms
    if family == "gpt_oss":
        attn_per_layer += nh  # attention sinks
    mla: dict[str, int] | None = None
    attention: AttentionKind = "MHA" if nkv == nh else "MQA" if nkv == 1 else "GQA"
    kv_per_token_elems = 2 * nkv * hd  # per attention layer
    if family in ("deepseek_v2", "deepseek_v3"):
        ql = cfg.get("q_lora_rank")
        kvl = int(cfg["kv_lora_rank"])
        nope, rope, vd = int(cfg["qk_nope_head_dim"]), int(cfg["qk_rope_head_dim"]), int(cfg["v_head_dim"])
        qhd = nope + rope
        q = (h * int(ql) + int(ql) + int(ql) * nh * qhd) if ql else h * nh * qhd
        attn_per_layer = q + h * (kvl + rope) + kvl + kvl * nh * (nope + vd) + nh * vd * h
        mla = {
            "kv_lora_rank": kvl,
            "qk_rope_head_dim": rope,
            "qk_nope_head_dim": nope,
            "v_head_dim": vd,
            "q_lora_rank": int(ql or 0),
        }
        attention = "MLA"
        kv_per_token_elems = kvl + rope  # the compressed latent plus the decoupled rope key
        hd = qhd

    # ---- feed-forward: dense and MoE
    moe, dense_mlp, routed, routed_active, shared, router = _feed_forward(cfg, family, h, L, inter)

    # ---- hybrid linear attention (Qwen3-Next: Gated DeltaNet in 3 of every 4 layers)
    linear = 0
    linear_state = 0.0
    attn_layers = L
    if family == "qwen3_next":
        interval = int(cfg.get("full_attention_interval") or 4)
        attn_layers = L // interval
        lin_layers = L - attn_layers
        nk, nvh = int(cfg["linear_num_key_heads"]), int(cfg["linear_num_value_heads"])
        kd, vd = int(cfg["linear_key_head_dim"]), int(cfg["linear_value_head_dim"])
        conv = int(cfg.get("linear_conv_kernel_dim") or 4)
        key_dim, value_dim = nk * kd, nvh * vd
        per = (
            h * (2 * key_dim + 2 * value_dim)
            + h * 2 * nvh
            + (2 * key_dim + value_dim) * conv
            + 2 * nvh
            + vd
            + value_dim * h
        )
        linear = lin_layers * per
        linear_state = lin_layers * (nvh * kd * vd + (2 * key_dim + value_dim) * (conv - 1)) * 2.0
        attn_per_layer += h * nh * hd  # gated attention: q_proj also emits the output gate
        attention = "hybrid"
        notes.append("hybrid: KV cache only in full-attention layers; linear layers keep a constant state")
    elif family == "nemotron_h":
        # One block per character of hybrid_override_pattern: M = Mamba-2 mixer, * = attention,
        # - = MLP (squared ReLU: up and down, no gate). Each block has one pre-norm.
        pattern = str(cfg.get("hybrid_override_pattern") or "")
        if len(pattern) != L:
            raise ModelError(
                f"{name}: hybrid_override_pattern has {len(pattern)} blocks, num_hidden_layers is {L}",
                hint="the pattern needs one character (M, *, -) per layer",
            )
        attn_layers = pattern.count("*")
        n_mamba, n_mlp = pattern.count("M"), pattern.count("-")
        mh, mhd = int(cfg["mamba_num_heads"]), int(cfg["mamba_head_dim"])
        ds, ng = int(cfg["ssm_state_size"]), int(cfg.get("n_groups") or 1)
        ck = int(cfg.get("conv_kernel") or 4)
        d_inner = mh * mhd
        conv_dim = d_inner + 2 * ng * ds
        per_mamba = (
            h * (2 * d_inner + 2 * ng * ds + mh) + conv_dim * ck + conv_dim + 3 * mh + d_inner + d_inner * h
        )
        linear = n_mamba * per_mamba
        linear_state = n_mamba * (mh * mhd * ds + conv_dim * (ck - 1)) * 2.0
        dense_mlp = n_mlp * 2 * h * inter
        norms_per_layer = h
        attention = "hybrid"
        notes.append("nemotron_h: KV cache only in attention blocks; Mamba blocks keep a constant state")
    attention_total = (
        attn_layers * attn_per_layer if family in ("qwen3_next", "nemotron_h") else L * attn_per_layer
    )
    norms = L * norms_per_layer + h

    sliding_window = cfg.get("sliding_window")
    sliding_layers = 0
    if sliding_window:
        if isinstance(cfg.get("layer_types"), list):
            sliding_layers = sum(1 for t in cfg["layer_types"] if "sliding" in str(t))
        elif cfg.get("sliding_window_pattern"):
            p = int(cfg["sliding_window_pattern"])
            sliding_layers = L - L // p
        elif family in ("mistral", "mixtral", "qwen2"):
            sliding_layers = L if cfg.get("use_sliding_window", True) else 0

    total = embedding + lm_head + attention_total + dense_mlp + routed + shared + router + linear + norms
    nonemb_active = attention_total + dense_mlp + routed_active + shared + router + linear + norms
    active = nonemb_active + (
        lm_head if lm_head else embedding
    )  # tied: the shared matrix is the lm_head matmul
    quant = detect_quantization(top, hf_quant)
    qc = (hf_quant.get("quantization", hf_quant) if hf_quant else None) or top.get("quantization_config")
    share = _quantized_share(quant, qc if isinstance(qc, dict) else None, L, family)
    groups = {
        "embedding": embedding,
        "lm_head": lm_head,
        "attention": attention_total,
        "dense_mlp": dense_mlp,
        "routed_experts": routed,
        "shared_experts": shared,
        "router": router,
        "linear_attention": linear,
        "norms": norms,
    }
    quantized = sum(n * share[g] for g, n in groups.items())
    weight_bytes = {
        d: (total - quantized) * UNQUANTIZED_BYTES + quantized * b for d, b in WEIGHT_BYTES.items()
    }
    if quant is not None and quant.weight_dtype in WEIGHT_BYTES:
        native = weight_bytes[quant.weight_dtype]
    else:
        native = weight_bytes["bf16"]
        if quant is not None:
            notes.append(
                f"quantization {quant.method} ({quant.weight_dtype}): weight dtype not modelled, "
                "its bytes are counted at 16 bits"
            )
    raw_dtype = top.get("torch_dtype") or top.get("dtype") or cfg.get("torch_dtype") or cfg.get("dtype")
    torch_dtype = TORCH_DTYPES.get(str(raw_dtype).lower()) if raw_dtype else None
    if torch_dtype is None:
        notes.append(
            f"config.json torch_dtype {raw_dtype!r} not understood: bf16 assumed"
            if raw_dtype
            else "config.json has no torch_dtype: bf16 assumed"
        )
        torch_dtype = "bf16"
    kv_elems = kv_per_token_elems * attn_layers
    reqs = engine_requirements(attention, family, quant)
    return ModelCard(
        name=name,
        family=family,
        model_type=model_type,
        attention=attention,
        layers=L,
        hidden_size=h,
        heads=nh,
        kv_heads=nkv,
        head_dim=hd,
        vocab_size=V,
        tied_embeddings=tied,
        max_context=int(cfg.get("max_position_embeddings") or 0),
        rope_scaling=cfg.get("rope_scaling"),
        attention_layers=attn_layers,
        sliding_window=int(sliding_window) if sliding_window else None,
        sliding_layers=sliding_layers,
        moe=moe,
        mla=mla,
        params=ParamBreakdown(
            embedding=embedding,
            lm_head=lm_head,
            attention=attention_total,
            dense_mlp=dense_mlp,
            routed_experts=routed,
            routed_experts_active=routed_active,
            shared_experts=shared,
            router=router,
            linear_attention=linear,
            norms=norms,
        ),
        total_params=total,
        active_params=active,
        active_params_with_embedding=active + (embedding if lm_head else 0),
        torch_dtype=torch_dtype,
        quantized_share=share,
        weight_bytes=weight_bytes,
        native_weight_bytes=native,
        kv_bytes_per_token={d: kv_elems * b for d, b in KV_BYTES.items()},
        linear_state_bytes_per_seq=linear_state,
        quantization=quant,
        engine_requirements=reqs,
        warnings=notes,
    )
