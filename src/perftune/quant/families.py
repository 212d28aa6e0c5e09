"""Quantization families: config.json `model_type` -> allowed backends, default scheme, what to leave alone.

The data lives in families.yaml next to this module; this module loads and validates it once.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from perftune.errors import ConfigError, config_error_from
from perftune.quant.schemes import SCHEMES, BackendName

FAMILIES_YAML = Path(__file__).with_name("families.yaml")

# Suffixes that name a module's weight in a (possibly quantized) checkpoint: plain, compressed-tensors
# packed int4 (`weight_packed`), AutoGPTQ/AWQ (`qweight`).
WEIGHT_SUFFIXES = (".weight_packed", ".qweight", ".weight")


def module_of(tensor_name: str) -> str:
    """The module a weight tensor belongs to: 'a.b.q_proj.weight' -> 'a.b.q_proj' (others unchanged)."""
    for suffix in WEIGHT_SUFFIXES:
        if tensor_name.endswith(suffix):
            return tensor_name[: -len(suffix)]
    return tensor_name


def _compile_all(patterns: list[str]) -> list[str]:
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"bad regex {p!r}: {e}") from None
    return patterns


class Family(BaseModel):
    """How one model family is quantized."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: str = Field(description="Hugging Face config.json model_type")
    backends: tuple[BackendName, ...] = Field(min_length=1, description="backends allowed for the family")
    default_scheme: str = Field(description="scheme used when the user names none")
    exclude: tuple[str, ...] = Field(
        description="regexes (re.search) over module/tensor names left full precision, common ones first"
    )
    moe: bool = Field(description="whether the family has routed experts")
    expert_patterns: tuple[str, ...] = Field(default=(), description="regexes naming expert weights")
    notes: str = Field(default="", description="what an engineer should know (MLA, multimodal ...)")

    @field_validator("exclude", "expert_patterns")
    @classmethod
    def _regexes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_compile_all(list(v)))

    @field_validator("default_scheme")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if v not in SCHEMES:
            raise ValueError(f"unknown scheme '{v}' (valid: {', '.join(SCHEMES)})")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Family:
        if SCHEMES[self.default_scheme].backend not in self.backends:
            raise ValueError(f"default_scheme '{self.default_scheme}' needs a backend the family lacks")
        if self.moe and not self.expert_patterns:
            raise ValueError("a MoE family needs expert_patterns")
        return self

    def excludes(self, name: str) -> bool:
        """Whether a tensor or module name is left full precision by the family's rules."""
        module = module_of(name)
        return any(re.search(p, module) or re.search(p, name) for p in self.exclude)

    def is_expert(self, name: str) -> bool:
        """Whether a tensor or module name is a routed-expert weight."""
        module = module_of(name)
        return any(re.search(p, module) for p in self.expert_patterns)

    def ignore_patterns(self) -> list[str]:
        """The exclude rules as llm-compressor / compressed-tensors `ignore` entries.

        compressed-tensors matches `re:` targets with re.match (anchored at the start) against module
        names, so each search-style regex gets a leading `.*`.
        """
        return [f"re:{p[1:]}" if p.startswith("^") else f"re:.*{p}" for p in self.exclude]


class _FamiliesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    common_exclude: list[str] = Field(default_factory=list, description="regexes every family excludes")
    families: dict[str, dict[str, Any]] = Field(description="model_type -> family entry")


@cache
def load_families(path: Path = FAMILIES_YAML) -> dict[str, Family]:
    """Every family in the data file, validated; a malformed file is a ConfigError naming the field."""
    hint = f"fix {path}"
    try:
        raw = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except (OSError, YAMLError) as e:
        raise ConfigError(f"cannot read quantization families {path}: {e}", hint=hint) from None
    try:
        doc = _FamiliesFile.model_validate(raw)
        common = tuple(_compile_all(doc.common_exclude))
    except ValidationError as e:
        raise config_error_from(e, f"{path.name}: ", hint=hint) from None
    except ValueError as e:
        raise ConfigError(f"{path.name}: common_exclude: {e}", hint=hint) from None
    out: dict[str, Family] = {}
    for model_type, entry in doc.families.items():
        exclude = common + tuple(entry.get("exclude") or ())
        try:
            out[model_type] = Family.model_validate({**entry, "model_type": model_type, "exclude": exclude})
        except ValidationError as e:
            raise config_error_from(e, f"{path.name}: families.{model_type}.", hint=hint) from None
    return out


def family_for(model_type: str) -> Family:
    """The family for a config.json model_type; unknown -> ConfigError pointing at families.yaml."""
    try:
        return load_families()[model_type]
    except KeyError:
        raise ConfigError(
            f"no quantization family for model_type '{model_type}'", hint=f"add it to {FAMILIES_YAML}"
        ) from None
