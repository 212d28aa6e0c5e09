"""The engine registry: one entry per engine, owning everything engine-specific that is not argv.

An engine module registers an `EngineInfo` when imported; the registry imports the known plug-in
modules by name on first use (like entry points), so this neutral module depends on none of them and
engines and the simulator never import each other. Adding an engine: one module that calls
`register(...)`, and its name in PLUGINS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from perftune.errors import ConfigError
from perftune.serving.spec import CacheReset, LaunchPlan, ServeSpec

Planner = Callable[..., LaunchPlan]

# Modules that register engines, imported on first use of the registry.
PLUGINS = ("perftune.engines.adapters", "perftune.sim.adapter")


@dataclass(frozen=True)
class KernelProfiler:
    """How an engine records its own torch-profiler kernel timeline (phase 2's L2): launch flags and
    environment (`{dir}` becomes the absolute trace folder), the HTTP calls that start and stop a
    window, and the trace files it writes."""

    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    start_path: str = "/start_profile"
    stop_path: str = "/stop_profile"
    trace_glob: str = "*.json*"
    # flags for a launch under Nsight Compute (L4): eager, since capturing CUDA graphs under ncu kept
    # vLLM 0.26.0 from getting ready in 9 minutes on an H200 (its kernels were profiled at start-up)
    ncu_args: tuple[str, ...] = ()

    def launch_args(self, trace_dir: str) -> list[str]:
        return [a.replace("{dir}", trace_dir) for a in self.args]

    def launch_env(self, trace_dir: str) -> dict[str, str]:
        return {k: v.replace("{dir}", trace_dir) for k, v in self.env}


@dataclass(frozen=True)
class EngineInfo:
    name: str
    plan: Planner  # (spec, *, host, port) -> LaunchPlan
    owned_by: str = ""  # what its /v1/models `owned_by` says (the bench detects the engine from it)
    prefix_cache_default: bool | None = None  # on/off when no lever says otherwise; None: unknown
    # how it empties its prefix cache before each trial: the same object its launch plans carry
    cache_reset: CacheReset | None = None
    install_hint: str = ""
    simulated: bool = False  # perftune's own servers: every number from them is labelled
    # the engine's own tuning script's default grid (lever, values), for a same-budget comparison
    autotune_grid: tuple[tuple[str, tuple[int, ...]], ...] = ()
    kernel_profiler: KernelProfiler | None = None  # None: no kernel timeline (CPU engines, the sim)

    @property
    def reset_path(self) -> str | None:
        return self.cache_reset.path if self.cache_reset is not None else None


_ENGINES: dict[str, EngineInfo] = {}
_loaded = False


def register(info: EngineInfo) -> EngineInfo:
    _ENGINES[info.name] = info
    return info


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in PLUGINS:
            importlib.import_module(mod)


def engines() -> dict[str, EngineInfo]:
    _load()
    return dict(_ENGINES)


def engine(name: str) -> EngineInfo:
    """The registered engine, or a ConfigError naming the unknown engine and the known ones."""
    known = engines()
    if name not in known:
        raise ConfigError(f"unknown engine '{name}'", hint="one of: " + ", ".join(sorted(known)))
    return known[name]


def plan(spec: ServeSpec, *, host: str = "127.0.0.1", port: int = 8000) -> LaunchPlan:
    p = engine(spec.engine).plan(spec, host=host, port=port)
    if spec.launch_prefix:  # a profiler wrapping the engine; the engine's own argv is unchanged after it
        p = p.model_copy(update={"argv": [*spec.launch_prefix, *p.argv]})
    return p


def prefix_cache_defaults() -> dict[str, bool | None]:
    """Each engine's prefix caching when no lever says otherwise."""
    return {n: i.prefix_cache_default for n, i in engines().items()}


def by_owned_by(owned_by: str | None) -> EngineInfo | None:
    """The engine a server says it is (its /v1/models `owned_by`), matched loosely: vLLM says `vllm`,
    SGLang `sglang`, llama.cpp `llamacpp`/`llama.cpp`, perftune's servers `perftune-sim`/`perftune-mock`."""
    o = (owned_by or "").lower().replace(".", "").replace("_", "")
    for info in sorted(engines().values(), key=lambda i: -len(i.owned_by)):
        if info.owned_by and info.owned_by in o:
            return info
    return None
