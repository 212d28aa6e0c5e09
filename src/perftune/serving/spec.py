"""ServeSpec (what the user asked for) -> LaunchPlan (how to start it). Pure; one adapter per engine.

A deploy target runs a LaunchPlan somewhere; adapters and targets never know about each other.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from perftune.errors import ConfigError
from perftune.serving.levers import lookup


class ServeSpec(BaseModel):
    """A serving configuration as the user states it."""

    model_config = ConfigDict(extra="forbid")
    engine: Literal["vllm", "sglang", "llamacpp", "sim", "mock"] = Field(
        description="engine to launch (sim: perftune's simulated vLLM; mock: ground-truth test server)"
    )
    model: str = Field(description="model folder, GGUF file, or hub id")
    served_name: str | None = Field(None, description="name clients use (default: the model folder's name)")
    engine_version: str | None = Field(None, description="engine version, when known (lever availability)")
    tp: int = Field(1, ge=1, description="tensor parallelism")
    dp: int = Field(1, ge=1, description="data parallelism inside the server")
    gpu: str | None = Field(None, description="GPU the simulator models (engine sim only; default h100)")
    dtype: str | None = Field(None, description="activation/weight dtype (auto when omitted)")
    levers: dict[str, Any] = Field(
        default_factory=dict, description="cross-engine levers (see `perftune levers`)"
    )
    extra_args: list[str] = Field(default_factory=list, description="engine flags passed through verbatim")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")
    launch_prefix: list[str] = Field(
        default_factory=list, description="a wrapper the engine runs under (phase 2's L4: Nsight Compute)"
    )


class CacheReset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["POST", "GET"]
    path: str
    note: str = ""


class LaunchPlan(BaseModel):
    """Everything a deploy target needs to start, probe and clean an engine."""

    model_config = ConfigDict(extra="forbid")
    engine: str
    served_name: str
    argv: list[str] = Field(description="the full command, host and port included")
    env: dict[str, str]
    health_path: str = Field(description="GET path that answers 200 when the server is up")
    ready_rule: str = Field(description="human-readable readiness rule")
    metrics_path: str | None
    metric_names: dict[str, str] = Field(description="perftune metric -> engine Prometheus name")
    cache_reset: CacheReset | None
    lever_argv: list[str] = Field(
        description="the part of argv that came from levers (for the launch summary)"
    )
    text_prompts_only: str | None = Field(
        None,
        description="the model file whose vocabulary turns token-id prompts into text, when the server "
        "takes text prompts only (llama-cpp-python's rejects token ids)",
    )


class Adapter(Protocol):
    name: str

    def plan(self, spec: ServeSpec, *, host: str, port: int) -> LaunchPlan: ...


def python() -> str:
    return sys.executable


def served_name(spec: ServeSpec) -> str:
    return spec.served_name or Path(spec.model.rstrip("/")).name or spec.model


def levers_with_parallelism(spec: ServeSpec) -> dict[str, object]:
    """The spec's levers plus its tp/dp, all translated by the lever catalog (one mechanism for flags)."""
    levers = dict(spec.levers)
    for name in list(levers):
        canon = lookup(name).name
        if canon in ("tensor-parallel", "data-parallel"):
            want = spec.tp if canon == "tensor-parallel" else spec.dp
            if int(levers.pop(name)) != want:
                raise ConfigError(
                    f"lever {name} conflicts with the spec's {canon.split('-')[0][:1]}p={want}",
                    hint="set parallelism once, with --tp / --dp",
                )
    if spec.tp > 1:
        levers["tensor-parallel"] = spec.tp
    if spec.dp > 1:
        levers["data-parallel"] = spec.dp
    return levers
