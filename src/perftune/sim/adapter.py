"""The simulator as an engine: perftune's simulated vLLM takes vLLM's lever flags and `--gpu` for the
modelled hardware, and refuses the flags it cannot model before anything starts (an unmodelled lever
fails the deploy instead of being ignored)."""

from __future__ import annotations

from perftune.errors import ConfigError
from perftune.serving.levers import translate
from perftune.serving.registry import EngineInfo, register
from perftune.serving.spec import (
    CacheReset,
    LaunchPlan,
    ServeSpec,
    levers_with_parallelism,
    python,
    served_name,
)
from perftune.sim.config import parse_vllm_flags
from perftune.telemetry.prom import METRICS

SIM_RESET = CacheReset(method="POST", path="/reset_prefix_cache", note="as vLLM's dev endpoint")


def plan_sim(spec: ServeSpec, *, host: str, port: int) -> LaunchPlan:
    """perftune's simulated vLLM: vLLM's lever flags, `--gpu` for the modelled hardware."""
    if spec.dp > 1:
        raise ConfigError("the simulator models one replica", hint="drop --dp for engine sim")
    lever_argv = translate(levers_with_parallelism(spec), "vllm", None, tp=spec.tp)
    served = served_name(spec)
    argv = [python(), "-m", "perftune", "sim-server", "--model", spec.model, "--gpu", spec.gpu or "h100"]
    argv += [
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        served,
        *lever_argv,
        *spec.extra_args,
    ]
    parse_vllm_flags([*lever_argv, *spec.extra_args])  # refuse an unmodelled flag before anything starts
    return LaunchPlan(
        engine="sim",
        served_name=served,
        argv=argv,
        env=dict(spec.env),
        health_path="/health",
        ready_rule="GET /health == 200 and /v1/models lists the served name",
        metrics_path="/metrics",
        metric_names=METRICS["sim"],
        cache_reset=SIM_RESET,
        lever_argv=lever_argv,
    )


register(
    EngineInfo(
        "sim",
        plan_sim,
        owned_by="perftune-sim",
        prefix_cache_default=True,  # as vLLM V1
        cache_reset=SIM_RESET,
        install_hint="part of perftune",
        simulated=True,
    )
)
