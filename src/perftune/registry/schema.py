"""Schema `known_good_config_v1`: what a registry file may hold. Pure pydantic, extra fields forbidden."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA = "known_good_config_v1"
Severity = Literal["boot-blocker", "crash-high-c", "deploy-correctness", "perf"]
SEVERITIES: tuple[str, ...] = ("boot-blocker", "crash-high-c", "deploy-correctness", "perf")
# Missing one of these fails a check (fail-closed); a missing `perf` flag only warns.
BLOCKING: frozenset[str] = frozenset({"boot-blocker", "crash-high-c", "deploy-correctness"})


class RequiredFlag(BaseModel):
    """A serving flag (or `env:NAME` environment variable) a deploy must carry."""

    model_config = ConfigDict(extra="forbid")
    flag: str = Field(description="the flag as the engine spells it (e.g. --additional-config), or env:NAME")
    match: str = Field(
        "",
        description="regex the flag's value must match (JSON values are matched in canonical form: "
        "sorted keys, "
        "no spaces); a JSON object here is instead required as a subset of the value; empty: presence",
    )
    severity: Severity = Field(description="boot-blocker | crash-high-c | deploy-correctness | perf")
    why: str = Field(description="what happens without it")
    affected: str = Field(
        "all", description="engine and versions it applies to, e.g. 'vllm 0.22' or 'vllm >=0.22,<0.25'; 'all'"
    )
    evidence: str = Field("", description="path of the document or artifact that shows it")

    @field_validator("flag")
    @classmethod
    def _flag_shape(cls, v: str) -> str:
        if not (v.startswith("-") or v.startswith("env:")):
            raise ValueError("flag must start with '-' (an engine flag) or 'env:' (an environment variable)")
        return v

    @field_validator("match")
    @classmethod
    def _regex_compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"match is not a valid regex: {e}") from e
        return v


class Champion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config_ref: str = Field(description="where the champion's full config lives (bundle path or lake id)")
    verdict: Literal["DRAFT", "VERDICT"] = Field(description="tier of the champion claim")
    value: str = Field("", description="the headline number with its unit and context")
    campaign: str = Field("", description="run id of the campaign that crowned it")


class ModelEntry(BaseModel):
    """One model's known-good record."""

    model_config = ConfigDict(extra="forbid")
    slug: str = Field(description="short name, e.g. qwen3-next")
    arch_note: str = Field("", description="what about the architecture makes these flags necessary")
    hardware: str = Field("", description="hardware the entry was established on, e.g. 4xH200")
    engine: str = Field(description="engine: vllm | sglang | llamacpp | ...")
    engine_versions: str = Field("", description="engine versions the entry was established on")
    required_flags: list[RequiredFlag] = Field(default_factory=list, description="flags a deploy must carry")
    champion: Champion | None = Field(None, description="the best validated config, if any")
    fallback: str = Field("", description="what to deploy if the champion cannot be")
    grind_frontier: str = Field(description="pointer to this model's next lever (value-findings ledger)")

    @field_validator("grind_frontier")
    @classmethod
    def _frontier_present(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("grind_frontier is required: where is this model's next lever recorded?")
        return v


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_: Literal["known_good_config_v1"] = Field(alias="schema", description="schema id")
    models: dict[str, ModelEntry] = Field(default_factory=dict, description="entries keyed by model id")

    @field_validator("models", mode="before")
    @classmethod
    def _empty_models(cls, v: object) -> object:
        return {} if v is None else v  # `models:` with no entries yet
