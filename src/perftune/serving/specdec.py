"""Speculative decoding: the methods, their translation to each engine's flags, and the acceptance
arithmetic every consumer shares (the bench's per-trial figures, the simulator, the gate). Pure.

A step of speculative decoding drafts K tokens per sequence and verifies them in one forward pass of
the target over K + 1 positions; the target keeps the accepted prefix of the draft plus one token of
its own. So a step yields 1 + (accepted drafts) tokens per sequence, and the mean acceptance length is
1 + accepted / drafts (the definition vLLM logs and SGLang reports).

Acceptance profile: `per_pos[i]` is the share of drafts whose position i was accepted (position i is
accepted only if every position before it was), so it never rises with i; vLLM exports the counts as
`spec_decode_num_accepted_tokens_per_pos`. The expected tokens per step is 1 + sum(per_pos).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from perftune.errors import ConfigError

Method = Literal["ngram", "draft-model", "eagle", "eagle3", "mtp"]
METHODS: tuple[Method, ...] = ("ngram", "draft-model", "eagle", "eagle3", "mtp")
# Methods whose draft is a trained network that must be given (a path or a hub id staged locally).
NEEDS_DRAFT: frozenset[str] = frozenset({"draft-model", "eagle", "eagle3"})
# The levers of the catalog that make up one spec config (levers.yaml, render: spec).
SPEC_LEVERS = (
    "spec-method",
    "spec-k",
    "spec-draft-model",
    "spec-ngram-min",
    "spec-ngram-max",
    "spec-eagle-topk",
    "spec-draft-tp",
)


@dataclass(frozen=True, slots=True)
class SpecConfig:
    """One speculative-decoding configuration, engine-neutral."""

    method: Method
    k: int  # num_speculative_tokens: drafted tokens per step per sequence
    draft_model: str | None = None
    ngram_min: int | None = None
    ngram_max: int | None = None
    eagle_topk: int | None = None
    draft_tp: int | None = None

    def label(self) -> str:
        """'ngram K=4', 'eagle3 K=3 (./head)'."""
        return f"{self.method} K={self.k}" + (f" ({self.draft_model})" if self.draft_model else "")


# Which engine versions run which method: (engine, method) -> PEP 440 specifier ("" = every version).
# Read from vLLM's SpeculativeConfig.method (ngram, draft_model, eagle, eagle3, mtp; the per-family MTP
# names are deprecated aliases of mtp), SGLang's --speculative-algorithm builtins (NGRAM, STANDALONE,
# EAGLE, EAGLE3, NEXTN) and llama-cpp-python's server (draft_model: prompt-lookup decoding only, its
# n-gram size fixed at 2). The lower bounds are where each first appeared, as best known; the pinned
# versions perftune stages (vLLM 0.26.0, SGLang 0.5.16, llama-cpp-python 0.3.x) run every one listed.
SUPPORT: dict[str, dict[str, str]] = {
    "vllm": {"ngram": ">=0.8", "draft-model": ">=0.11", "eagle": ">=0.8", "eagle3": ">=0.9", "mtp": ">=0.10"},
    "sglang": {
        "ngram": ">=0.5",
        "draft-model": ">=0.5",
        "eagle": ">=0.4",
        "eagle3": ">=0.4.6",
        "mtp": ">=0.4",
    },
    "llamacpp": {"ngram": ""},
}


def supported(engine: str, version: str | None) -> list[str]:
    """The methods this engine (at this version, when known) can run."""
    out = []
    for method, spec in SUPPORT.get(engine, {}).items():
        ok = True
        if spec and version:
            try:
                ok = Version(version) in SpecifierSet(spec)
            except InvalidVersion:
                ok = True  # an unparseable version cannot prove absence
        if ok:
            out.append(method)
    return out


def parse_against(text: str) -> tuple[str, int]:
    """'METHOD:K' (the standing config's own speculation, e.g. 'mtp:3') -> (method, K); a ValueError
    naming the form otherwise."""
    method, sep, k = text.strip().partition(":")
    if method not in METHODS or not sep or not k.strip().isdigit() or not 1 <= int(k) <= 16:
        raise ValueError(
            f"--against {text!r} is not METHOD:K (METHOD one of {', '.join(METHODS)}, K 1..16), e.g. ngram:3"
        )
    return method, int(k)


def from_levers(values: Mapping[str, Any]) -> SpecConfig | None:
    """The spec config named by parsed spec-* lever values, or None when no spec lever is set.

    A knob without `spec-method`, a trained method without its draft, or a knob of another method is
    a ConfigError: nothing is dropped silently."""
    given = {k: v for k, v in values.items() if k in SPEC_LEVERS}
    if not given:
        return None
    method = given.get("spec-method")
    if method is None:
        raise ConfigError(
            f"{', '.join(sorted(given))} set without spec-method",
            hint=f"add --lever spec-method=<{'|'.join(METHODS)}>",
        )
    k = int(given.get("spec-k", 3 if method != "ngram" else 4))
    draft = given.get("spec-draft-model")
    if method in NEEDS_DRAFT and not draft:
        raise ConfigError(
            f"spec-method={method} needs a draft: spec-draft-model is not set",
            hint="give --lever spec-draft-model=<folder of the draft model or of the EAGLE head>",
        )
    foreign = {
        "ngram": {"spec-draft-model", "spec-eagle-topk", "spec-draft-tp"},
        "draft-model": {"spec-ngram-min", "spec-ngram-max", "spec-eagle-topk"},
        "eagle": {"spec-ngram-min", "spec-ngram-max"},
        "eagle3": {"spec-ngram-min", "spec-ngram-max"},
        "mtp": {"spec-ngram-min", "spec-ngram-max", "spec-draft-model"},
    }[str(method)]
    if bad := sorted(foreign & set(given)):
        raise ConfigError(
            f"spec-method={method} has no {', '.join(bad)}", hint="drop it, or pick a method that has it"
        )
    lo, hi = given.get("spec-ngram-min"), given.get("spec-ngram-max")
    if lo is not None and hi is not None and int(lo) > int(hi):
        raise ConfigError(f"spec-ngram-min {lo} > spec-ngram-max {hi}", hint="the window is [min, max]")
    return SpecConfig(
        method=method,
        k=k,
        draft_model=str(draft) if draft else None,
        ngram_min=None if lo is None else int(lo),
        ngram_max=None if hi is None else int(hi),
        eagle_topk=None if given.get("spec-eagle-topk") is None else int(given["spec-eagle-topk"]),
        draft_tp=None if given.get("spec-draft-tp") is None else int(given["spec-draft-tp"]),
    )


def _vllm(c: SpecConfig) -> list[str]:
    """vLLM: one --speculative-config JSON (SpeculativeConfig's keys)."""
    method = {"draft-model": "draft_model", "mtp": "mtp"}.get(c.method, c.method)
    obj: dict[str, Any] = {"method": method, "num_speculative_tokens": c.k}
    if c.draft_model:
        obj["model"] = c.draft_model
    if c.ngram_min is not None:
        obj["prompt_lookup_min"] = c.ngram_min
    if c.ngram_max is not None:
        obj["prompt_lookup_max"] = c.ngram_max
    if c.draft_tp is not None:
        obj["draft_tensor_parallel_size"] = c.draft_tp
    return ["--speculative-config", json.dumps(obj, separators=(",", ":"))]


def _sglang(c: SpecConfig) -> list[str]:
    """SGLang: --speculative-algorithm and its step/top-k/draft-token knobs. A chain draft (top-k 1)
    of K steps verifies K + 1 tokens; a tree (top-k > 1) verifies up to num_draft_tokens."""
    algo = {
        "ngram": "NGRAM",
        "draft-model": "STANDALONE",
        "eagle": "EAGLE",
        "eagle3": "EAGLE3",
        "mtp": "NEXTN",
    }
    argv = ["--speculative-algorithm", algo[c.method]]
    if c.draft_model:
        argv += ["--speculative-draft-model-path", c.draft_model]
    if c.method == "ngram":  # its match window flags are gone from SGLang 0.5.x (the lever says so)
        return [*argv, "--speculative-num-draft-tokens", str(c.k + 1)]
    topk = c.eagle_topk or 1
    draft_tokens = c.k + 1 if topk == 1 else max(c.k + 1, c.k * topk)
    argv += ["--speculative-num-steps", str(c.k), "--speculative-eagle-topk", str(topk)]
    argv += ["--speculative-num-draft-tokens", str(draft_tokens)]
    return argv


def _llamacpp(c: SpecConfig) -> list[str]:
    """llama-cpp-python's server: prompt-lookup decoding, K predicted tokens per step. Its n-gram
    window is fixed by the library (max_ngram_size 2): a window lever is refused, never dropped."""
    if c.ngram_min is not None or c.ngram_max is not None:
        raise ConfigError(
            "llamacpp (llama-cpp-python) has no prompt-lookup window setting",
            hint="drop spec-ngram-min / spec-ngram-max for llamacpp",
        )
    return ["--draft_model", "prompt-lookup-decoding", "--draft_model_num_pred_tokens", str(c.k)]


def translate_spec(c: SpecConfig, engine: str, version: str | None = None) -> list[str]:
    """The engine's argv for one spec config; an engine or version that cannot run the method fails
    here, before anything launches, with the methods it can run."""
    can = supported(engine, version)
    if c.method not in can:
        ver = f" {version}" if version else ""
        need = SUPPORT.get(engine, {}).get(c.method)
        raise ConfigError(
            f"spec-method={c.method} is not supported by {engine}{ver}"
            + (f" (needs {engine} {need})" if need else ""),
            hint=f"{engine}{ver} runs: {', '.join(can) or 'no speculative decoding'}",
        )
    if engine == "vllm":
        return _vllm(c)
    if engine == "sglang":
        return _sglang(c)
    return _llamacpp(c)


# ---------------------------------------------------------------- acceptance arithmetic


def iid_profile(alpha: float, k: int) -> list[float]:
    """The per-position acceptance of a draft whose every token is accepted with probability alpha,
    given the ones before it were: position i is reached with alpha^(i+1)."""
    if not 0.0 <= alpha <= 1.0 or k < 0:
        raise ValueError(f"alpha {alpha} must be in [0, 1] and k {k} >= 0")
    return [alpha ** (i + 1) for i in range(k)]


def tokens_per_step(per_pos: Sequence[float]) -> float:
    """Expected tokens a sequence gains per verify step: the target's own token plus each accepted
    draft position (1 + sum of the per-position acceptance)."""
    return 1.0 + float(sum(per_pos))
