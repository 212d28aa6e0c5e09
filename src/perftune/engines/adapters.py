"""Engine adapters: vLLM, SGLang, llama.cpp (llama-server), the simulator. Pure argv/env building.

Footguns:
- vLLM's /reset_prefix_cache only exists with VLLM_SERVER_DEV_MODE=1 (the adapter sets it).
- SGLang serves /metrics only with --enable-metrics (always set), and resets its radix cache on
  POST /flush_cache.
- A TP/DP lever and the spec's tp/dp are the same thing: the spec wins, a conflicting lever is an error.
- The simulator's adapter lives with the simulator (perftune.sim.adapter); both register here through
  perftune.serving.registry, so engines and the simulator never import each other.
"""

from __future__ import annotations

import shutil

from perftune.errors import ConfigError
from perftune.serving.levers import translate
from perftune.serving.registry import EngineInfo, KernelProfiler, register
from perftune.serving.registry import plan as engine_plan
from perftune.serving.spec import (
    CacheReset,
    LaunchPlan,
    ServeSpec,
    levers_with_parallelism,
    python,
    served_name,
)
from perftune.telemetry.prom import METRICS

# Each engine's prefix-cache reset, one object shared by its launch plans and its registry entry (the
# bench resets through the registry, a deploy target through the plan: they cannot disagree).
VLLM_RESET = CacheReset(method="POST", path="/reset_prefix_cache", note="needs VLLM_SERVER_DEV_MODE=1 (set)")
SGLANG_RESET = CacheReset(method="POST", path="/flush_cache", note="radix cache flush")
# the mock accepts vLLM's reset call (it has no cache)
MOCK_RESET = CacheReset(method="POST", path="/reset_prefix_cache", note="accepted; no cache")

MULTI_GPU_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def _openai_server_plan(
    spec: ServeSpec,
    *,
    entry: list[str],
    host: str,
    port: int,
    env: dict[str, str],
    cache_reset: CacheReset,
) -> LaunchPlan:
    """vLLM and SGLang: the same OpenAI-compatible server shape, different entry points and flags."""
    engine = spec.engine
    lever_argv = translate(levers_with_parallelism(spec), engine, spec.engine_version, tp=spec.tp)
    if spec.tp * spec.dp > 1:
        # Multi-GPU: NVLink multicast (NVLS) off in NCCL, torch symmetric memory and NVSHMEM; it has
        # hung or crashed engines on shared hosts. The user's env still wins.
        env = {**MULTI_GPU_ENV, **env}
    served = served_name(spec)
    argv = [*entry, "--served-model-name", served, "--host", host, "--port", str(port)]
    if spec.dtype:
        argv += ["--dtype", spec.dtype]
    argv += lever_argv + spec.extra_args
    return LaunchPlan(
        engine=engine,
        served_name=served,
        argv=argv,
        env=env,
        health_path="/health",
        ready_rule="GET /health == 200 and /v1/models lists the served name",
        metrics_path="/metrics",
        metric_names=METRICS[engine],
        cache_reset=cache_reset,
        lever_argv=lever_argv,
    )


def plan_vllm(spec: ServeSpec, *, host: str, port: int) -> LaunchPlan:
    return _openai_server_plan(
        spec,
        entry=[python(), "-m", "vllm.entrypoints.cli.main", "serve", spec.model],
        host=host,
        port=port,
        env={"VLLM_SERVER_DEV_MODE": "1", **spec.env},
        cache_reset=VLLM_RESET,
    )


def plan_sglang(spec: ServeSpec, *, host: str, port: int) -> LaunchPlan:
    return _openai_server_plan(
        spec,
        # SGLang serves /metrics only with --enable-metrics.
        entry=[python(), "-m", "sglang.launch_server", "--model-path", spec.model, "--enable-metrics"],
        host=host,
        port=port,
        env=dict(spec.env),
        cache_reset=SGLANG_RESET,
    )


# llama-server flag -> llama-cpp-python server flag (None: the python server has no equivalent).
PY_SERVER_FLAGS: dict[str, str | None] = {
    "--ctx-size": "--n_ctx",
    "--batch-size": "--n_batch",
    "--ubatch-size": "--n_ubatch",
    "--threads": "--n_threads",
    "--n-gpu-layers": "--n_gpu_layers",
    "--cache-type-k": "--type_k",
    "--cache-type-v": "--type_v",
    "--parallel": None,
}
GGML_TYPES = {"f16": "1", "q4_0": "2", "q8_0": "8"}


def _py_server_argv(lever_argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lever_argv):
        flag = lever_argv[i]
        if flag.startswith("--flash-attn="):
            out += ["--flash_attn", "true" if flag.endswith("=on") else "false"]
            i += 1
            continue
        mapped = PY_SERVER_FLAGS.get(flag, flag)
        if mapped is None:
            raise ConfigError(
                f"{flag} is not supported by the llama-cpp-python server (one request at a time)",
                hint="install llama.cpp's llama-server for parallel slots, or drop the lever",
            )
        value = lever_argv[i + 1]
        out += [mapped, GGML_TYPES.get(value, value) if mapped in ("--type_k", "--type_v") else value]
        i += 2
    return out


def llamacpp_launcher() -> str:
    """llama-server when it is on PATH, else llama-cpp-python's server (one request at a time)."""
    return "llama-server" if shutil.which("llama-server") else "llama-cpp-python"


def plan_llamacpp(spec: ServeSpec, *, host: str, port: int, launcher: str | None = None) -> LaunchPlan:
    """llama-server when it is on PATH (or asked for), else llama-cpp-python's server (PyPI)."""
    if spec.tp > 1 or spec.dp > 1:
        raise ConfigError(
            "llama.cpp has no tensor/data parallelism in perftune's adapter",
            hint="use tp=1, dp=1 (llama-server splits layers across GPUs itself)",
        )
    lever_argv = translate(dict(spec.levers), "llamacpp", spec.engine_version)
    served = served_name(spec)
    launcher = launcher or llamacpp_launcher()
    if launcher == "llama-cpp-python":
        # Footguns: no /health (readiness = /v1/models), token-id prompts are rejected, streams carry no
        # usage (the bench then counts one token per chunk and says so), one request at a time.
        py_argv = _py_server_argv(lever_argv)
        py = [
            python(),
            "-m",
            "llama_cpp.server",
            "--model",
            spec.model,
            "--model_alias",
            served,
            "--host",
            host,
            "--port",
            str(port),
            "--interrupt_requests",  # by default a new request kills the streaming one: queue instead
            "false",
            *py_argv,
            *spec.extra_args,
        ]
        return LaunchPlan(
            engine="llamacpp",
            served_name=served,
            argv=py,
            env=dict(spec.env),
            health_path="/v1/models",
            ready_rule="GET /v1/models == 200 and lists the alias (no /health)",
            metrics_path=None,
            metric_names=METRICS["llamacpp"],
            cache_reset=None,
            lever_argv=py_argv,
            text_prompts_only=spec.model,
        )
    argv = [
        "llama-server",
        "--model",
        spec.model,
        "--alias",
        served,
        "--host",
        host,
        "--port",
        str(port),
        "--metrics",
        *lever_argv,
        *spec.extra_args,
    ]
    return LaunchPlan(
        engine="llamacpp",
        served_name=served,
        argv=argv,
        env=dict(spec.env),
        health_path="/health",
        ready_rule="GET /health == 200 (503 while loading) and /v1/models lists the alias",
        metrics_path="/metrics",
        metric_names=METRICS["llamacpp"],
        cache_reset=None,
        lever_argv=lever_argv,
    )


def plan_mock(spec: ServeSpec, *, host: str, port: int) -> LaunchPlan:
    """perftune's ground-truth mock server as an 'engine': exercises the deploy path without a GPU."""
    if spec.levers:
        raise ConfigError("the mock engine takes no levers", hint="levers apply to vllm, sglang, llamacpp")
    served = served_name(spec)
    argv = [
        python(),
        "-m",
        "perftune",
        "mock-server",
        "--host",
        host,
        "--port",
        str(port),
        "--model-name",
        served,
        *spec.extra_args,
    ]
    return LaunchPlan(
        engine="mock",
        served_name=served,
        argv=argv,
        env=dict(spec.env),
        health_path="/health",
        ready_rule="GET /health == 200 and /v1/models",
        metrics_path=None,
        metric_names={},
        cache_reset=MOCK_RESET,
        lever_argv=[],
    )


# Everything engine-specific besides argv, in one place per engine (see perftune.serving.registry).
register(
    EngineInfo(
        "vllm",
        plan_vllm,
        owned_by="vllm",
        prefix_cache_default=True,  # vLLM V1: automatic prefix caching on by default
        cache_reset=VLLM_RESET,
        install_hint="pip install vllm (or stage the offline bundle: shared/gpu/README.md)",
        # benchmarks/auto_tune/auto_tune.sh: one server per (max-num-seqs, max-num-batched-tokens) point
        # of NUM_SEQS_LIST x NUM_BATCHED_TOKENS_LIST (defaults "128 256" x "512 1024 2048 4096"), one
        # run per point at request rate inf, no repeat trials, no other levers, one workload per run.
        autotune_grid=(("max-num-seqs", (128, 256)), ("max-num-batched-tokens", (512, 1024, 2048, 4096))),
        # vLLM >= 0.13: --profiler-config (the VLLM_TORCH_PROFILER_DIR variable before it); the engine
        # core writes one gzipped Chrome trace per worker on POST /stop_profile. Stacks off: they
        # multiply the trace size and the flush time, and L1 samples the host anyway.
        kernel_profiler=KernelProfiler(
            args=(
                "--profiler-config",
                '{"profiler": "torch", "torch_profiler_dir": "{dir}", "torch_profiler_with_stack": false}',
            ),
            trace_glob="*.pt.trace.json*",
            ncu_args=("--enforce-eager",),
        ),
    )
)
register(
    EngineInfo(
        "sglang",
        plan_sglang,
        owned_by="sglang",
        prefix_cache_default=True,  # radix cache on by default
        cache_reset=SGLANG_RESET,
        install_hint="pip install 'sglang[all]'",
        # SGLang: the trace folder comes from the environment; POST /start_profile and /stop_profile.
        kernel_profiler=KernelProfiler(
            env=(("SGLANG_TORCH_PROFILER_DIR", "{dir}"),), trace_glob="*.trace.json*"
        ),
    )
)
register(
    EngineInfo(
        "llamacpp",
        plan_llamacpp,
        owned_by="llamacpp",
        prefix_cache_default=None,  # llama-server reuses a slot's cache; the python server: none
        install_hint="install llama.cpp's llama-server and put it on PATH, or pip install "
        "'llama-cpp-python[server]'",
    )
)
register(
    EngineInfo(
        "mock",
        plan_mock,
        owned_by="perftune-mock",
        prefix_cache_default=False,
        cache_reset=MOCK_RESET,
        install_hint="part of perftune",
        simulated=True,
    )
)


def plan(spec: ServeSpec, *, host: str = "127.0.0.1", port: int = 8000) -> LaunchPlan:
    """The launch plan of any registered engine (the simulator's included)."""
    return engine_plan(spec, host=host, port=port)
